"""Pure target lists: which peer addresses to punch, prime and spray for a :class:`Plan`.

Inputs are the peer's signaling ``details`` (``srflx``, ``local``, ``nat.punch``)
and the plan both sides derived. Port prediction for a sequentially allocating,
address-and-port-dependent NAT (RFC 4787 section 4.2.1; RFC 5128 section 3.4):
the peer's k-th new mapping after its STUN binding gets port
``srflx + flows_after_stun + k``, where ``flows_after_stun`` counts the flows
(e.g. the HTTP check-in) it opened in between. Both sides aim and prime their
windows in the same order, so the k-th mappings of both meet.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ..errors import PunchError
from .auth import Role
from .decision import BIRTHDAY_HOLD, BIRTHDAY_PORTS, BIRTHDAY_SOCKETS, Plan

Address = tuple[str, int]


@dataclass
class Targets:
    targets: list[Address]
    prime: list[Address] = field(default_factory=list)
    spray: list[Address] = field(default_factory=list)
    extra_sockets: int = 0
    hold: float = 0.0


def address_of(obj: object) -> Address | None:
    """``{"ip": ..., "port": ...}`` -> (ip, port), None if malformed."""
    if not isinstance(obj, dict):
        return None
    ip, port = obj.get("ip"), obj.get("port")
    if not isinstance(ip, str) or not isinstance(port, int) or not 0 < port < 65536:
        return None
    return ip, port


def _locals(obj: object) -> list[Address]:
    return [a for a in (address_of(x) for x in obj) if a][:8] if isinstance(obj, list) else []


def peer_addresses(details: object, protocol: str = "udp"
                   ) -> tuple[Address | None, list[Address], int]:
    """(srflx, local candidates, flows_after_stun) for ``protocol`` from the peer's details.

    A receiver that prepared several protocols puts the others' addresses in
    ``nat.punch.alt[protocol]``; such an entry may carry its own ``flows_after_stun``
    (its STUN binding came later than the first protocol's), else ``nat.punch``'s counts.
    """
    if not isinstance(details, dict):
        return None, [], 0
    nat = details.get("nat") if isinstance(details.get("nat"), dict) else {}
    punch = nat.get("punch") if isinstance(nat.get("punch"), dict) else {}
    alt = punch.get("alt") if isinstance(punch.get("alt"), dict) else {}
    source = alt.get(protocol) if isinstance(alt.get(protocol), dict) else details
    srflx = address_of(source.get("srflx"))
    local = _locals(source.get("local"))
    shift = source.get("flows_after_stun", punch.get("flows_after_stun"))
    shift = shift if isinstance(shift, int) and 0 <= shift <= 64 else 0
    return srflx, local, shift


def peer_transports(details: object) -> tuple[list[str] | None, dict[str, str]]:
    """(transports the peer prepared, why the others failed) from ``nat.punch``.

    ``None`` for a peer that does not say (an older version): assume it has them all.
    """
    nat = details.get("nat") if isinstance(details, dict) else None
    punch = nat.get("punch") if isinstance(nat, dict) else None
    if not isinstance(punch, dict) or not isinstance(punch.get("transports"), list):
        return None, {}
    have = [p for p in punch["transports"] if isinstance(p, str)]
    why = punch.get("unavailable") if isinstance(punch.get("unavailable"), dict) else {}
    return have, {p: str(w) for p, w in why.items() if isinstance(p, str)}


def build_targets(plan: Plan, my_role: str, peer_details: object, *, protocol: str = "udp",
                  rng: random.Random | None = None) -> Targets:
    """Targets (in send order), prime list, spray list and extra sockets for our side."""
    srflx, local, shift = peer_addresses(peer_details, protocol)
    peer_role = Role(my_role).other.value
    if plan.strategy == "lan":
        targets = list(dict.fromkeys(local + ([srflx] if srflx else [])))
        if not targets:
            raise PunchError("the peer sent no address to punch", reason="no-peer-address")
        return Targets(targets)
    if srflx is None:
        raise PunchError("the peer sent no server-reflexive address (details.srflx)",
                         hint="the peer's STUN binding failed or it runs an old version",
                         reason="no-peer-address")
    ip, port = srflx
    window = plan.predict_for(peer_role)
    if window:
        targets = [(ip, p) for p in range(port + shift + 1, port + shift + 1 + window) if p < 65536]
        return Targets(targets, prime=list(targets))
    if plan.strategy == "birthday":
        if plan.birthday_side == peer_role:
            rng = rng or random.Random()
            ports = [p for p in rng.sample(range(1024, 65536), BIRTHDAY_PORTS + 1) if p != port]
            spray = [(ip, p) for p in ports[:BIRTHDAY_PORTS]]
            return Targets([srflx], prime=[srflx], spray=spray)
        return Targets([srflx], prime=[srflx], extra_sockets=BIRTHDAY_SOCKETS, hold=BIRTHDAY_HOLD)
    return Targets([srflx], prime=[srflx])
