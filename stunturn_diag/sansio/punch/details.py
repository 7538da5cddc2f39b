"""What the two sides tell each other through signaling (``details``), pure.

:func:`signaling_details` builds our details from what the runners learnt (mappings,
local candidates, the NAT profile as :func:`stunturn_diag.sansio.probe.profile.punch_profile`
shares it, a port promise); :func:`peer_details` takes the
peer's out of a match; :func:`transport_problem` is the verdict both sides reach on
whether the initiator's protocol can be punched. The peer's addresses are read by
:mod:`stunturn_diag.sansio.punch.candidates`.
"""

from __future__ import annotations

from stunturn_diag.errors import PunchError
from stunturn_diag.sansio.netaddr import Address
from stunturn_diag.sansio.probe.profile import punch_profile
from stunturn_diag.sansio.punch.candidates import peer_relay_only, peer_transports
from stunturn_diag.sansio.punch.wire import Role

#: longest text of one transport's failure sent to the peer (details.nat is <= 2 KiB)
WHY_MAX = 160


def peer_details(match: dict) -> dict:
    peer = match.get("peer") if isinstance(match.get("peer"), dict) else {}
    return peer.get("details") if isinstance(peer.get("details"), dict) else {}


def transport_problem(role: Role | str, protocol: str, prepared: list[str], unavailable: dict[str, str],
                      peer_details: object, *, relay_only: dict[str, str] | None = None,
                      relay: bool = False) -> PunchError | None:
    """After the match: can ``protocol`` (the initiator's choice) be used? Pure.

    Both sides reach the same verdict from the receiver's ``transports``: the receiver from
    what it prepared, the initiator from what the receiver's details say. ``reason`` is
    ``protocol-unavailable`` when the receiver tried and failed (e.g. UDP blocked), and
    ``protocol-mismatch`` when it was told to prepare only another one (``--protocol``).
    A receiver that failed but reaches the relay over TCP for it (``relay_only``: ours
    as the receiver, else ``nat.punch.relay_only`` of its details) is no problem when
    ``relay``: the match offers a relay and this side uses it (RFC 8656 section 3.1).
    """
    role = Role(role)
    if role is Role.RECEIVER:
        have, why, relays = prepared, unavailable, relay_only or {}
    else:
        have, why = peer_transports(peer_details)
        if have is None:           # an older receiver: it does not say, so try
            return None
        relays = peer_relay_only(peer_details)
    if protocol in have or (relay and protocol in relays):
        return None
    others = [p for p in have if p != protocol]
    if others:
        use = f"run the initiator with --protocol {others[0]}"
    elif len(set(have) | set(why)) > 1:
        use = ("neither transport reaches the signaling server's STUN responder from the "
               "receiver's network: check its firewall, or use a relay (TURN)")
    else:                          # the receiver tried this one alone (its --protocol)
        use = (f"the receiver tried {protocol.upper()} only (its --protocol): check that "
               f"{protocol.upper()} reaches the signaling server's STUN responder from its "
               "network and try again, or use a relay (TURN)")
    if protocol in relays:         # it could have gone through the relay, but a side refused
        use += (" or let both sides use the TURN relay (without --no-relay): the receiver "
                f"reaches it over TCP for {protocol.upper()}")
    if protocol in why:
        who = "this side" if role is Role.RECEIVER else "the receiver"
        return PunchError(f"the initiator asked for {protocol.upper()}, which {who} could not "
                          f"prepare: {why[protocol]}", hint=use, reason="protocol-unavailable")
    if role is Role.RECEIVER:
        return PunchError(f"the initiator asked for {protocol} but this side prepared "
                          f"{', '.join(have) or 'nothing'}",
                          hint=f"run the receiver with --protocol {protocol} or without --protocol",
                          reason="protocol-mismatch")
    return PunchError(f"the receiver prepared only {', '.join(have) or 'nothing'} (its --protocol), "
                      f"not {protocol}", hint=f"{use}, or the receiver without --protocol",
                      reason="protocol-mismatch")


def flows_after_stun(order: list[str], protocol: str, pair_flows: int) -> int:
    """Flows our NAT saw after ``protocol``'s STUN binding: the later bindings (``order``:
    the protocols in the order their bindings were made) + ``pair_flows`` (pairing)."""
    later = len(order) - 1 - order.index(protocol) if protocol in order else 0
    return later + pair_flows


def signaling_details(profile: dict | None, prepared: dict[str, tuple[Address, list[Address]]],
                      *, pair_flows: int, birthday: bool, unavailable: dict[str, str],
                      portmap: Address | None, next_port: int | None,
                      counter_rate: float | None, software: str,
                      relay_only: dict[str, str] | None = None, relay: bool = True) -> dict:
    """Our signaling details: the first prepared protocol's addresses (``prepared``:
    protocol -> (mapped, local candidates), in binding order), others in nat.punch.alt;
    ``relay_only``: the unavailable protocols we use through the relay reached over TCP
    (``nat.punch.relay_only``, protocol -> why); ``relay`` False (``--no-relay``):
    ``nat.punch.relay: false``, so a peer without UDP knows it cannot relay to us."""
    nat = punch_profile(profile)
    order = list(prepared)
    first_proto = next(iter(prepared), None)
    punch: dict = {"birthday": bool(birthday),
                   "flows_after_stun": flows_after_stun(order, first_proto, pair_flows)
                   if first_proto else pair_flows,
                   "transports": order}
    if unavailable:
        punch["unavailable"] = {p: why[:WHY_MAX] for p, why in unavailable.items()}
    if not relay:
        punch["relay"] = False
    if relay_only:
        punch["relay_only"] = {p: why[:WHY_MAX] for p, why in relay_only.items()}
    if portmap is not None:
        punch["portmap"] = {"ip": portmap[0], "port": portmap[1]}
    if next_port is not None:
        punch["next_port"] = next_port
        if counter_rate is not None:
            punch["counter_rate"] = round(counter_rate, 2)
    nat["punch"] = punch
    out: dict = {"nat": nat, "software": software}
    for proto, (mapped, local) in prepared.items():
        entry = {"srflx": {"ip": mapped[0], "port": mapped[1]},
                 "local": [{"ip": ip, "port": port} for ip, port in local[:8]]}
        if proto == first_proto:
            out.update(entry)
        else:
            entry["flows_after_stun"] = flows_after_stun(order, proto, pair_flows)
            punch.setdefault("alt", {})[proto] = entry
    return out
