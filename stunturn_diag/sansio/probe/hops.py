"""How many NAT layers a TTL walk saw (carrier-grade NAT: RFC 6598 100.64.0.0/10). Pure:
the walk itself (UDP with ``IP_RECVERR``) is :mod:`stunturn_diag.probe.layers`."""

from __future__ import annotations

import ipaddress

_SHARED = ipaddress.ip_network("100.64.0.0/10")
_REALMS = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                                             "100.64.0.0/10")]


def realm(ip: str | None) -> str | None:
    """The private/shared block an address belongs to (None for public or unknown)."""
    if ip is None:
        return None
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return None
    for net in _REALMS:
        if a.version == net.version and a in net:
            return str(net)
    return None


def analyse_hops(hops: list[dict], server_hop: int | None, nat: bool | None, public_ip: str | None,
                 local_ip: str | None) -> dict:
    """Pure: hops [{ttl, from}] -> {"count", "cgnat", "reason"}.

    Each change of private/shared address block along the path before the server marks
    another translation realm; a shared-space (100.64/10) hop or public address means
    carrier-grade NAT. Only a lower bound: NATs that do not answer ICMP stay invisible.
    """
    if not nat:
        return {"count": 0 if nat is False else None, "cgnat": False if nat is False else None,
                "hops": hops, "server_hop": server_hop, "reason": "no NAT" if nat is False else "unknown"}
    realms = [realm(local_ip)]
    for h in sorted(hops, key=lambda h: h["ttl"]):
        r = realm(h.get("from"))
        if r is not None and r != realms[-1]:
            realms.append(r)
    count = max(1, len([r for r in realms if r is not None]))
    cgnat = any(r == str(_SHARED) for r in realms) or realm(public_ip) == str(_SHARED)
    why = (f"private address blocks along the path: {[r for r in realms if r]}"
           + ("; shared address space (RFC 6598) seen" if cgnat else ""))
    return {"count": count, "cgnat": cgnat, "hops": hops, "server_hop": server_hop, "reason": why}
