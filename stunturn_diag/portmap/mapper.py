"""Create and delete one mapping on the gateway with PCP, NAT-PMP or UPnP IGD.

:func:`create` returns a :class:`Mapping` whatever happened (``ok`` False with the
protocol's result when the gateway refused, ``result`` "no answer" when it was silent);
:func:`delete` removes it (PCP: lifetime 0 with the same nonce, RFC 6887 section 15;
NAT-PMP: lifetime 0, RFC 6886 section 3.4; UPnP: DeletePortMapping).

``python3 -m stunturn_diag.portmap map pcp|nat-pmp|upnp udp|tcp PORT`` (in
``__main__``) maps a port, prints the mapping as a JSON line and, for UDP, prints each
datagram that arrives on it (bounded), for lab tests and by hand.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from . import client_runner as runner
from stunturn_diag.sansio.portmap import natpmp_codec as natpmp
from stunturn_diag.sansio.portmap import pcp_codec as pcp
from stunturn_diag.sansio.portmap import upnp_codec as upnp

METHODS = ("pcp", "nat-pmp", "upnp")


@dataclass
class Mapping:
    method: str
    protocol: str                 # "udp" | "tcp"
    internal_port: int
    ok: bool = False
    result: str = "no answer"
    external_ip: str | None = None
    external_port: int | None = None
    lifetime: int | None = None
    nonce: bytes | None = None    # PCP: needed to renew or delete
    gateway: str | None = None

    def as_dict(self) -> dict:
        out = asdict(self)
        out["nonce"] = self.nonce.hex() if self.nonce else None
        return out


def _pcp_protocol(protocol: str) -> int:
    return pcp.PROTOCOL_UDP if protocol == "udp" else pcp.PROTOCOL_TCP


def create(method: str, protocol: str, internal_port: int, *, lifetime: int = 600,
           gateway: str | None = None, timeout: float = 2.0, internal_ip: str | None = None,
           nonce: bytes | None = None, external_port: int | None = None) -> Mapping:
    """Ask the gateway (default: the default route's) for ``protocol``/``internal_port``;
    the external port suggested is ``external_port`` or the internal one. ``nonce``
    (PCP) renews a mapping made with it (RFC 6887 section 11.2.1): see :func:`renew`."""
    gateway = gateway or runner.default_gateway()
    m = Mapping(method, protocol, internal_port, gateway=gateway)
    if gateway is None:
        m.result = "no default gateway"
        return m
    deadline = time.monotonic() + timeout
    if method == "pcp":
        req, resp = runner.pcp_map(gateway, _pcp_protocol(protocol), internal_port,
                                   lifetime=lifetime, suggested_port=external_port or internal_port,
                                   deadline=deadline, nonce=nonce)
        m.nonce = req.map.nonce if req.map else None
        if resp is not None:
            m.ok, m.result = resp.ok, resp.result_name
            if resp.ok and resp.map is not None:
                m.external_ip, m.external_port = resp.map.external_ip, resp.map.external_port
                m.lifetime = resp.lifetime
    elif method == "nat-pmp":
        resp = runner.natpmp_request(gateway, natpmp.MappingRequest(
            natpmp.protocol_opcode(protocol), internal_port, external_port or internal_port,
            lifetime),
            deadline=deadline)
        addr = runner.natpmp_request(gateway, natpmp.ExternalAddressRequest(), deadline=deadline)
        if resp is not None:
            m.ok = resp.ok
            m.result = _natpmp_result(resp.result)
            if isinstance(resp, natpmp.MappingResponse) and resp.ok:
                m.external_port, m.lifetime = resp.external_port, resp.lifetime
        if isinstance(addr, natpmp.ExternalAddressResponse) and addr.ok:
            m.external_ip = addr.external_ip
    elif method == "upnp":
        _upnp_create(m, lifetime, deadline, internal_ip)
    else:
        raise ValueError(f"unknown mapping method {method!r} (one of {', '.join(METHODS)})")
    return m


def _natpmp_result(code: int) -> str:
    try:
        return natpmp.ResultCode(code).name
    except ValueError:
        return f"RESULT_{int(code)}"


def _igd(deadline: float) -> runner.Igd | None:
    answer = runner.ssdp_search(deadline=deadline)
    return None if answer is None else runner.igd_describe(answer, deadline=deadline)


def _upnp_create(m: Mapping, lifetime: int, deadline: float, internal_ip: str | None) -> None:
    igd = _igd(deadline)
    if igd is None:
        return
    if internal_ip is None:
        import socket
        from urllib.parse import urlsplit

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((urlsplit(igd.answer.location).hostname, 1900))
            internal_ip = probe.getsockname()[0]
    args = upnp.add_port_mapping_args(m.protocol, m.internal_port, internal_ip, m.internal_port,
                                      lifetime)
    got = runner.soap_call(igd, "AddPortMapping", args, deadline=deadline)
    if got is None:
        return
    m.ok = got.ok
    m.result = "SUCCESS" if got.ok else f"UPnPError {got.error_code}: {got.error_description}"
    if got.ok:
        m.external_port, m.lifetime = m.internal_port, lifetime
        ext = runner.soap_call(igd, "GetExternalIPAddress", deadline=deadline)
        if ext is not None and ext.ok:
            m.external_ip = ext.values.get("NewExternalIPAddress") or None


def renew(m: Mapping, *, lifetime: int, timeout: float = 2.0) -> Mapping:
    """The same mapping again before it expires (PCP with its nonce, RFC 6887 section 15;
    NAT-PMP and UPnP by repeating the request, RFC 6886 section 3.3)."""
    return create(m.method, m.protocol, m.internal_port, lifetime=lifetime, gateway=m.gateway,
                  timeout=timeout, nonce=m.nonce, external_port=m.external_port)


def delete(m: Mapping, *, timeout: float = 2.0) -> bool:
    """Remove a mapping made by :func:`create`; True when the gateway confirmed."""
    if not m.ok or m.gateway is None:
        return False
    deadline = time.monotonic() + timeout
    if m.method == "pcp":
        _, resp = runner.pcp_map(m.gateway, _pcp_protocol(m.protocol), m.internal_port,
                                 lifetime=0, nonce=m.nonce, deadline=deadline)
        return resp is not None and resp.ok
    if m.method == "nat-pmp":
        resp = runner.natpmp_request(m.gateway, natpmp.MappingRequest(
            natpmp.protocol_opcode(m.protocol), m.internal_port, 0, 0), deadline=deadline)
        return resp is not None and resp.ok
    igd = _igd(deadline)
    if igd is None:
        return False
    got = runner.soap_call(igd, "DeletePortMapping",
                           upnp.delete_port_mapping_args(m.protocol, m.external_port or 0),
                           deadline=deadline)
    return got is not None and got.ok
