"""Which IP families a UDP punch tries, and which path wins (Happy Eyeballs, pure).

A dual-stack pair has two independent paths: IPv4, usually through NAT44s, and IPv6,
usually through stateful firewalls that filter like a NAT but map nothing (RFC 6092).
Each side learns its IPv6 mapping from the server's IPv6 STUN endpoint and shares it
in the signaling details (``nat.punch.ipv6``: the UDP mapping as ``{"srflx", "local"}``
or ``{"unavailable": why}``, the TCP one likewise under ``"tcp"``). :func:`plan_families` decides, from both sides' blocks and
the IPv4 plan, which families are punched: IPv6 first, IPv4 after
:data:`HAPPY_EYEBALLS_DELAY` (RFC 8305 section 5: the preferred family gets a short
head start, the other starts when it runs out or the first attempt failed).

The first authenticated path wins. The initiator nominates it (RFC 8445 section 8's
controlling agent, reduced to one step): it keeps the first path that authenticated,
drops the other, and sends an authenticated frame over the kept one at once; the
receiver keeps the path on which the initiator's first authenticated frame arrived
(:func:`receiver_pick`), so both sides keep the same path.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field

from stunturn_diag.sansio.netaddr import Address

#: the IPv6 attempt's head start over IPv4 (seconds; RFC 8305 section 5's Connection
#: Attempt Delay, at the low end of its 10 ms .. 2 s range: a punch is short)
HAPPY_EYEBALLS_DELAY = 0.050
#: IPv6 local candidates shared (details.nat is at most 2 KiB)
MAX_LOCAL6 = 3
FAMILIES = (6, 4)
#: the server's limit on details.nat (server/sansio/validation.py NAT_MAX_BYTES)
NAT_LIMIT = 2048


def family_of(ip: str) -> int:
    return ipaddress.ip_address(ip).version


def _entry(mapped: Address | None, local: list[Address], why: str | None) -> dict:
    if mapped is None:
        return {"unavailable": (why or "no IPv6 mapping")[:160]}
    return {"srflx": {"ip": mapped[0], "port": mapped[1]},
            "local": [{"ip": ip, "port": port} for ip, port in local
                      if family_of(ip) == 6][:MAX_LOCAL6]}


def ipv6_block(mapped: Address | None, local: list[Address], why: str | None = None, *,
               tcp: tuple[Address | None, list[Address], str | None] | None = None) -> dict:
    """Our ``nat.punch.ipv6`` block: the UDP IPv6 mapping and host candidates, or why
    none; ``tcp``: (mapped, local, why) of the TCP one, under ``"tcp"``."""
    out = _entry(mapped, local, why)
    if tcp is not None:
        out["tcp"] = _entry(*tcp)
    return out


def attach_ipv6(nat: dict, block: dict, limit: int = NAT_LIMIT) -> dict:
    """``nat`` (our details' profile, with its ``punch`` part) with ``block`` as
    ``punch.ipv6``, trimmed to keep the JSON within the server's ``limit``: the host
    candidates go first, then the block becomes "unavailable", then it is left out."""
    bare = {k: ({"srflx": v["srflx"], "local": []} if isinstance(v, dict) and "srflx" in v
                else v) for k, v in block.items()}
    candidates = [block]
    if "srflx" in block or "tcp" in block:
        candidates.append({**bare, **({"local": []} if "srflx" in block else {})})
    candidates.append({"unavailable": "too large to share"})
    for cand in candidates:
        out = {**nat, "punch": {**nat.get("punch", {}), "ipv6": cand}}
        if len(json.dumps(out, separators=(",", ":")).encode()) <= limit:
            return out
    return nat


def _v6_endpoint(value: object) -> Address | None:
    if not isinstance(value, dict):
        return None
    ip, port = value.get("ip"), value.get("port")
    if not isinstance(ip, str) or not isinstance(port, int) or isinstance(port, bool) \
            or not 1 <= port <= 65535:
        return None
    try:
        addr = ipaddress.IPv6Address(ip)
    except ValueError:
        return None
    if addr.is_multicast or addr.is_unspecified or addr.ipv4_mapped is not None:
        return None
    return (addr.compressed, port)


def peer_ipv6(details: dict, protocol: str = "udp") -> tuple[list[Address], str | None]:
    """The peer's IPv6 targets for ``protocol`` (server-reflexive first, then its host
    candidates) out of its signaling details, or ([], why there are none). Malformed
    entries are dropped."""
    nat = details.get("nat") if isinstance(details, dict) else None
    punch = nat.get("punch") if isinstance(nat, dict) else None
    block = punch.get("ipv6") if isinstance(punch, dict) else None
    if isinstance(block, dict) and protocol == "tcp":
        block = block.get("tcp") if "tcp" in block or "unavailable" not in block else block
    if not isinstance(block, dict):
        return [], (f"the peer shared no IPv6 {protocol.upper()} candidates (an older "
                    "version, or an IPv4-only server)")
    if "unavailable" in block:
        why = block["unavailable"]
        return [], f"the peer has no IPv6 path: {why if isinstance(why, str) else 'unknown'}"
    out: list[Address] = []
    for item in [block.get("srflx")] + list(block.get("local") or [])[:MAX_LOCAL6]:
        addr = _v6_endpoint(item)
        if addr is not None and addr not in out:
            out.append(addr)
    if not out:
        return [], "the peer's IPv6 candidates were malformed"
    return out, None


@dataclass
class FamilyPlan:
    """The families to punch: start offsets (seconds after the match) and, for a family
    not punched, why."""

    start: dict[int, float] = field(default_factory=dict)
    targets6: list[Address] = field(default_factory=list)
    reasons: dict[int, str] = field(default_factory=dict)

    @property
    def raced(self) -> bool:
        return len(self.start) == 2

    def report(self, winner: int | None, failures: dict[int, str] | None = None, *,
               first: str = "authenticated") -> dict:
        """The result's ``families`` block: per family tried/won and why it was not used
        (``first``: what the winner did first, "authenticated" (UDP) or "connected" (TCP:
        the connections race, the kept one is authenticated after))."""
        failures = failures or {}
        out: dict = {}
        for fam in FAMILIES:
            entry: dict = {"tried": fam in self.start}
            if fam == winner:
                entry["result"] = "won"
            elif fam in failures:
                entry["result"], entry["reason"] = "failed", failures[fam]
            elif fam in self.start:
                entry["result"] = "lost"
                entry["reason"] = (f"IPv{winner} {first} first" if winner else "not used")
            else:
                entry["result"] = "not-tried"
                entry["reason"] = self.reasons.get(fam, "not planned")
            out[str(fam)] = entry
        return out


def plan_families(my_ipv6: str | None, peer_details: dict, *, v4_feasible: bool,
                  v4_explanation: str, delay: float = HAPPY_EYEBALLS_DELAY,
                  protocol: str = "udp") -> FamilyPlan:
    """Which families to punch (pure).

    ``my_ipv6``: None when we hold an IPv6 mapping, else why not. IPv6 is tried when
    both sides have a mapping; IPv4 when its plan is feasible, or when it is the only
    family left (the caller then falls back to the relay as before). With both, IPv6
    starts at once and IPv4 ``delay`` later (RFC 8305 section 5)."""
    plan = FamilyPlan()
    targets, peer_why = peer_ipv6(peer_details, protocol)
    if my_ipv6 is not None:
        plan.reasons[6] = f"this side has no IPv6 path: {my_ipv6}"
    elif peer_why is not None:
        plan.reasons[6] = peer_why
    else:
        plan.start[6] = 0.0
        plan.targets6 = targets
    if not v4_feasible and 6 in plan.start:
        plan.reasons[4] = f"IPv4 cannot be punched: {v4_explanation}"
    else:
        plan.start[4] = delay if 6 in plan.start else 0.0
    return plan


def receiver_pick(complete: dict[int, bool], *, running: int, at_deadline: bool) -> int | None:
    """The receiver's choice among its authenticated paths (pure): ``complete`` maps a
    family to whether the initiator's nominating frame arrived on it; ``running``
    attempts are still punching. The nominated path; the only one when no other can
    still complete; at the deadline, the preferred complete one (IPv6 first); else
    None (keep waiting: two authenticated paths need the initiator's word)."""
    for fam in FAMILIES:
        if complete.get(fam):
            return fam
    if (running == 0 and len(complete) == 1) or at_deadline:
        for fam in FAMILIES:
            if fam in complete:
                return fam
    return None


def initiator_pick(complete: list[int]) -> int | None:
    """The initiator keeps the first path that authenticated (``complete`` in order)."""
    return complete[0] if complete else None

