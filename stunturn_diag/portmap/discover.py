"""Does the gateway offer port mapping? PCP, NAT-PMP and UPnP IGD asked at once.

:func:`discover` (I/O, bounded) asks the default gateway all three questions in
parallel threads; :func:`assess` (pure) turns the answers and the STUN-mapped address
into the probe's ``port_mapping`` block:

``{"pcp", "nat_pmp", "upnp": bool, "external_ip": str|null, "usable": bool|null,
"gateway": str|null, "evidence": {...}}``

- PCP (RFC 6887 section 11): a MAP request for UDP on the asking socket's own port with
  a short lifetime, deleted again at once (lifetime 0, section 15); the assigned
  external address is PCP's answer. A version-0 "unsupported version" answer means a
  NAT-PMP-only gateway: ``pcp`` false.
- NAT-PMP (RFC 6886 section 3.2): the external address request.
- UPnP IGD: SSDP M-SEARCH, the device description, ``GetExternalIPAddress``.

``usable``: some protocol gave an external address and it equals the STUN-mapped
address (false when none gave one). A different one means another NAT beyond the gateway (a CGNAT, RFC 6888):
mappings on this gateway would not make the host reachable (RFC 6887 section 8.3 lets a
client see this; PCP's THIRD_PARTY proxying to the upstream NAT is not tried). ``null``
when the mapped address is unknown.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Callable

from . import client_runner as runner
from stunturn_diag.sansio.portmap import natpmp_codec as natpmp
from stunturn_diag.sansio.portmap import pcp_codec as pcp

#: how long the three questions may take when nobody answers (the probe's budget)
DEFAULT_BUDGET = 0.25
#: once a gateway has answered SSDP, how long its HTTP description + SOAP may take
UPNP_FOLLOW_UP = 1.0
PCP_PROBE_LIFETIME = 120


def _pcp_job(gateway: str, deadline: float, clock: Callable[[], float], out: dict,
             stop: threading.Event | None) -> None:
    try:
        sock, _ = runner._udp_socket(gateway)
    except OSError as exc:
        out["error"] = str(exc)
        return
    with sock:
        port = sock.getsockname()[1]
        req, resp = runner.pcp_map(gateway, pcp.PROTOCOL_UDP, port, lifetime=PCP_PROBE_LIFETIME,
                                   deadline=deadline, clock=clock, sock=sock, stop=stop)
        if resp is None:
            return
        out["answered"] = resp.version == pcp.VERSION
        out["result"] = resp.result_name if resp.version == pcp.VERSION else "NAT-PMP only"
        out["epoch"] = resp.epoch
        if resp.ok and resp.map is not None:
            out["external_ip"] = resp.map.external_ip
            out["external_port"] = resp.map.external_port
            out["lifetime"] = resp.lifetime
            # delete the probe's mapping again (RFC 6887 section 15), one short exchange
            runner.pcp_map(gateway, pcp.PROTOCOL_UDP, port, lifetime=0, nonce=req.map.nonce,
                           deadline=clock() + DEFAULT_BUDGET, clock=clock, sock=sock, tries=1)


def _natpmp_job(gateway: str, deadline: float, clock: Callable[[], float], out: dict,
                stop: threading.Event | None) -> None:
    resp = runner.natpmp_request(gateway, natpmp.ExternalAddressRequest(), deadline=deadline,
                                 clock=clock, stop=stop)
    if resp is None:
        return
    out["answered"] = True
    out["result"] = natpmp.ResultCode(resp.result).name if resp.result in \
        natpmp.ResultCode._value2member_map_ else f"RESULT_{int(resp.result)}"
    out["epoch"] = resp.epoch
    if isinstance(resp, natpmp.ExternalAddressResponse) and resp.ok:
        out["external_ip"] = resp.external_ip


def _upnp_job(source_ip: str, deadline: float, clock: Callable[[], float], out: dict,
              stop: threading.Event | None) -> None:
    answer = runner.ssdp_search(deadline=deadline, clock=clock, source_ip=source_ip, stop=stop)
    if answer is None:
        return
    out["ssdp"] = {"location": answer.location, "st": answer.search_target,
                   "server": answer.server}
    follow = clock() + UPNP_FOLLOW_UP
    igd = runner.igd_describe(answer, deadline=follow, clock=clock)
    if igd is None:
        out["result"] = "no WAN connection service in the device description"
        return
    out["answered"] = True
    out["service"] = igd.service.service_type
    got = runner.soap_call(igd, "GetExternalIPAddress", deadline=follow, clock=clock)
    if got is None:
        out["result"] = "no answer to GetExternalIPAddress"
    elif got.ok:
        out["result"] = "SUCCESS"
        # miniupnpd answers "" when it has no usable external address (e.g. behind a CGNAT)
        ext = got.values.get("NewExternalIPAddress") or ""
        out["external_ip"] = None if ext in ("", "0.0.0.0") else ext
    else:
        out["result"] = f"UPnPError {got.error_code}: {got.error_description}"


def discover(budget: float = DEFAULT_BUDGET, *, gateway: str | None = None,
             clock: Callable[[], float] = time.monotonic,
             stop: threading.Event | None = None) -> dict:
    """Ask the gateway (default: the default route's) over PCP, NAT-PMP and UPnP at once.
    Returns the raw evidence ``{"gateway", "pcp": {...}, "nat_pmp": {...}, "upnp": {...},
    "elapsed_ms"}``; each protocol entry has ``answered`` and what was learnt.
    ``stop`` ends the waiting for first answers early (the probe sets it when its own
    tests are done, so a silent gateway never makes it slower); what a gateway that has
    answered still owes (UPnP's HTTP, PCP's delete) is finished."""
    start = clock()
    gateway = gateway or runner.default_gateway()
    found: dict = {"gateway": gateway, "pcp": {"answered": False},
                   "nat_pmp": {"answered": False}, "upnp": {"answered": False}}
    if gateway is None:
        found["elapsed_ms"] = 0.0
        return found
    try:
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with probe:
            probe.connect((gateway, pcp.SERVER_PORT))
            source_ip = probe.getsockname()[0]
    except OSError:
        source_ip = ""
    deadline = start + budget
    jobs = [threading.Thread(target=_pcp_job, args=(gateway, deadline, clock, found["pcp"], stop),
                             name="portmap-pcp", daemon=True),
            threading.Thread(target=_natpmp_job,
                             args=(gateway, deadline, clock, found["nat_pmp"], stop),
                             name="portmap-natpmp", daemon=True),
            threading.Thread(target=_upnp_job,
                             args=(source_ip, deadline, clock, found["upnp"], stop),
                             name="portmap-upnp", daemon=True)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(budget + UPNP_FOLLOW_UP + 2 * DEFAULT_BUDGET + 1.0)
    found["elapsed_ms"] = round((clock() - start) * 1000, 1)
    found["cut_short"] = stop is not None and stop.is_set() and clock() < deadline
    return found


def assess(found: dict | None, mapped_ip: str | None) -> dict:
    """The probe's ``port_mapping`` block from :func:`discover`'s evidence (pure)."""
    found = found or {}
    entries = {name: found.get(name) or {} for name in ("pcp", "nat_pmp", "upnp")}
    addresses = [e["external_ip"] for e in entries.values() if e.get("external_ip")]
    external_ip = addresses[0] if addresses else None
    if external_ip is None:
        usable = False                       # no protocol offers a mapping at all
    elif mapped_ip is None:
        usable = None
    else:
        usable = external_ip == mapped_ip
    notes = []
    if len(set(addresses)) > 1:
        notes.append("the protocols name different external addresses: " + ", ".join(addresses))
    if external_ip is not None and mapped_ip is not None and external_ip != mapped_ip:
        notes.append(f"the gateway's external address {external_ip} is not the STUN-mapped "
                     f"{mapped_ip}: another NAT layer beyond the gateway, its mappings do "
                     "not reach this host from the internet")
    return {"pcp": bool(entries["pcp"].get("answered")),
            "nat_pmp": bool(entries["nat_pmp"].get("answered")),
            "upnp": bool(entries["upnp"].get("answered")),
            "external_ip": external_ip, "usable": usable, "gateway": found.get("gateway"),
            "notes": notes,
            "evidence": {**entries, "elapsed_ms": found.get("elapsed_ms"),
                         "cut_short": bool(found.get("cut_short"))}}
