"""Pure punching strategy choice: both peers compute the same plan from the same facts.

Inputs are the two NAT profiles exchanged in ``details.nat`` (the probe's JSON
vocabulary, :mod:`stunturn_diag.behaviour`), whether both peers share a public IP,
and whether both allow the "birthday" attempt. The function is keyed by *role*,
never by "mine"/"theirs", so initiator and receiver derive the identical plan.

Reasoning (RFC 4787 sections 4.1, 4.2.1 and 5; RFC 5128 section 3):

* A side whose mapping is endpoint-independent (or no NAT) faces the peer from its
  server-reflexive port, so the peer can aim at it exactly.
* A side with an address-and-port-dependent mapping and *sequential* (or preserving)
  allocation gets the next port(s) for the peer: the other side aims at a predicted
  window. When both are such, both prime/punch their windows in the same order so the
  n-th mapping of one meets the n-th mapping of the other.
* A dependent side with *random* allocation can only be reached if the other side's
  filter admits any port of its address (endpoint-independent or address-dependent
  filtering); facing a port-dependent filter it needs the bounded many-ports attempt
  ("birthday", opt-in on both sides), otherwise a relay (TURN, RFC 8656).
* Two random dependent mappings cannot be punched at all.
* A side whose gateway mapped its punch port (PCP RFC 6887, NAT-PMP RFC 6886 or UPnP
  IGD; ``details.nat.punch.portmap``) is reachable at that address from anywhere: where
  the plan would otherwise need a relay or the birthday attempt, the other side sends
  to the mapped address and the mapped side only answers (``portmap``). Answering keeps
  its replies on the mapping (the NAT's connection tracking reverses the inbound
  flow); sending first would open a new, random mapping toward the peer instead.
* A side that cannot use UDP at all (its STUN binding got no answer: a firewall drops
  UDP) but reaches the offered TURN relay over TCP (``details.nat.punch.relay_only``)
  has no UDP mapping to punch: its UDP goes through a UDP allocation made over TCP
  (RFC 8656 section 3.1), so both sides go straight to the relay (``relay-needed``,
  ``Plan.blocked``; the explanation starts ``udp-blocked:``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stunturn_diag.behaviour import Filtering, Mapping, PortAllocation
from stunturn_diag.sansio.punch.engine import OPEN_PEER_GAP, PRIME_GAP
from stunturn_diag.sansio.punch.wire import Role

#: predicted-port window aimed at a sequentially allocating NAT
PREDICT_WINDOW = 8
#: hard caps of the birthday attempt (ports sprayed / extra sockets opened)
BIRTHDAY_PORTS = 1024
BIRTHDAY_SOCKETS = 256
#: the random side waits this long after priming, so the spray lands first
BIRTHDAY_HOLD = 0.4

DEPENDENT = (Mapping.ADDRESS_DEPENDENT, Mapping.ADDRESS_AND_PORT_DEPENDENT)
OPEN_FILTERS = (Filtering.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_DEPENDENT)


@dataclass(frozen=True)
class NatProfile:
    """What punching needs to know about one side's NAT for one transport."""

    mapping: Mapping | None = None
    filtering: Filtering | None = None
    allocation: PortAllocation | None = None
    birthday_ok: bool = False
    #: its gateway mapped the punch port (the address is in details.nat.punch.portmap)
    portmap: bool = False
    #: it cannot use this transport but through the TURN relay reached over TCP
    #: (details.nat.punch.relay_only: {protocol: why})
    relay_only: bool = False
    #: the probe saw an unsolicited inbound packet move its mapping toward that sender
    #: (UDP ``mapping_moves_on_unsolicited``; None: not decided)
    moves_on_unsolicited: bool | None = None

    @property
    def known(self) -> bool:
        return self.mapping is not None

    @property
    def dependent(self) -> bool:
        return self.mapping in DEPENDENT

    @property
    def random(self) -> bool:
        return self.dependent and self.allocation is PortAllocation.RANDOM

    @property
    def predictable(self) -> bool:
        return self.dependent and not self.random

    @property
    def open_filter(self) -> bool:
        """Admits any port of an address it sent to (or anything at all)."""
        return self.mapping is Mapping.NO_NAT or self.filtering in OPEN_FILTERS

    def describe(self) -> str:
        if not self.known:
            return "unknown NAT"
        if self.mapping is Mapping.NO_NAT:
            return "no NAT"
        alloc = f", {self.allocation.value} ports" if self.allocation else ""
        filt = self.filtering.value if self.filtering else "unknown"
        return f"{self.mapping.value} mapping{alloc}, {filt} filtering"


def _enum(kind, value):
    try:
        return kind(value) if value is not None else None
    except ValueError:
        return None


def profile_from_details(nat: object, protocol: str) -> NatProfile:
    """Read ``details.nat`` leniently; anything unreadable is an unknown profile.

    Accepts the probe's report shape ``{"udp": {...}, "tcp": {...}}`` (or a flat
    ``{"mapping", "filtering", "port_allocation"}``) plus ``{"punch": {"birthday": true}}``.
    """
    if not isinstance(nat, dict):
        return NatProfile()
    punch = nat.get("punch") if isinstance(nat.get("punch"), dict) else {}
    section = nat.get(protocol) if isinstance(nat.get(protocol), dict) else nat
    return NatProfile(
        mapping=_enum(Mapping, section.get("mapping")),
        filtering=_enum(Filtering, section.get("filtering")),
        allocation=_enum(PortAllocation, section.get("port_allocation")),
        birthday_ok=punch.get("birthday") is True,
        portmap=_is_address(punch.get("portmap")),
        relay_only=isinstance(punch.get("relay_only"), dict) and protocol in punch["relay_only"],
        moves_on_unsolicited=section.get("mapping_moves_on_unsolicited")
        if isinstance(section.get("mapping_moves_on_unsolicited"), bool) else None,
    )


def _is_address(value: object) -> bool:
    return (isinstance(value, dict) and isinstance(value.get("ip"), str)
            and isinstance(value.get("port"), int) and 0 < value["port"] < 65536)


def priming_gap(peer: NatProfile) -> float:
    """Our UDP priming gap (:data:`.engine.PRIME_GAP`), from the peer's NAT profile.

    The long gap is there for the peer that starts late: our first full-TTL HELLO
    must not reach its NAT before its prime left, or the HELLO's conntrack entry moves
    the peer's mapping toward us. A peer without a NAT (RFC 4787 section 4.1 ``NO_NAT``)
    has no mapping to move; behind an endpoint-independent mapping with
    endpoint-independent filtering (section 5) our HELLO goes through the mapping the
    peer already has toward the server, and the peer's prime later leaves by the same
    one; and a NAT whose probe saw an unsolicited packet leave its mapping where it was
    (``mapping_moves_on_unsolicited`` false: a firewall drops such packets before
    conntrack keeps them) does not move it either. Toward those
    :data:`.engine.OPEN_PEER_GAP` is enough. Anything else, an unknown profile or one
    the quick punch probe made (it leaves the move test out), gets the long gap.
    """
    if peer.mapping is Mapping.NO_NAT or peer.moves_on_unsolicited is False or (
            peer.mapping is Mapping.ENDPOINT_INDEPENDENT and
            peer.filtering is Filtering.ENDPOINT_INDEPENDENT):
        return OPEN_PEER_GAP
    return PRIME_GAP


@dataclass(frozen=True)
class Plan:
    """The strategy both sides follow.

    ``predict_*``: how many ports after the side's server-reflexive port the *other*
    side aims at (0 = the reflexive port only). ``birthday_side``: the role whose NAT
    allocates randomly (it opens many sockets; the other sprays random ports).
    """

    strategy: str    # "lan" | "simultaneous" | "predict" | "birthday" | "portmap" | "relay-needed"
    feasible: bool
    explanation: str
    predict_initiator: int = 0
    predict_receiver: int = 0
    birthday_side: Role | None = None
    notes: list[str] = field(default_factory=list)
    #: portmap: the role reached at its mapped address (it only answers)
    portmap_side: Role | None = None
    #: udp-blocked: the roles whose UDP goes only through the relay reached over TCP
    blocked: tuple[Role, ...] = ()

    def predict_for(self, role: Role | str) -> int:
        return self.predict_initiator if Role(role) is Role.INITIATOR else self.predict_receiver


def decide(initiator: NatProfile, receiver: NatProfile, *, same_public_ip: bool = False,
           protocol: str = "udp") -> Plan:
    """Choose the punching strategy; deterministic in (initiator, receiver) order.

    The birthday attempt is planned for UDP only (``protocol="udp"``); over TCP a
    random mapping facing a port-dependent filter is ``relay-needed``. A gateway port
    mapping (UDP) replaces ``relay-needed`` and ``birthday`` by ``portmap``; when both
    sides have one, the receiver is the one reached.
    """
    blocked = [role for role, p in ((Role.INITIATOR, initiator), (Role.RECEIVER, receiver))
               if p.relay_only]
    if blocked:
        who = " and the ".join(f"{role}'s" for role in blocked)
        many = len(blocked) > 1
        return Plan("relay-needed", False,
                    f"udp-blocked: the {who} network{'s block' if many else ' blocks'} "
                    f"{protocol.upper()} (no STUN answer): {'they reach' if many else 'it reaches'}"
                    " the TURN relay over TCP for a UDP relayed address (RFC 8656 section 3.1), "
                    "so both sides use the relay", blocked=tuple(blocked))
    plan = _decide_punch(initiator, receiver, same_public_ip=same_public_ip, protocol=protocol)
    if plan.strategy not in ("relay-needed", "birthday") or protocol != "udp":
        return plan
    side = Role.RECEIVER if receiver.portmap else Role.INITIATOR if initiator.portmap else None
    if side is None:
        return plan
    other = side.other
    return Plan("portmap", True, f"the {side}'s gateway mapped its punch port (PCP, NAT-PMP or "
                f"UPnP): the {other} sends to the mapped address, the {side} answers from it "
                f"(else: {plan.explanation})", notes=plan.notes, portmap_side=side)


def _decide_punch(initiator: NatProfile, receiver: NatProfile, *, same_public_ip: bool,
                  protocol: str) -> Plan:
    """The plan without port mappings."""
    if same_public_ip:
        return Plan("lan", True, "both peers share a public address: connect over the LAN "
                                 "(and the NAT's hairpin, if any)")
    sides = {Role.INITIATOR: initiator, Role.RECEIVER: receiver}
    notes = [f"{role}: {p.describe()}" for role, p in sides.items()]
    if not initiator.known or not receiver.known:
        return Plan("simultaneous", True, "a NAT profile is unknown: punch the reflexive "
                    "addresses (a side ran with --no-probe or its probe failed)", notes=notes)
    if initiator.random and receiver.random:
        return Plan("relay-needed", False,
                    "relay-needed: both NATs allocate a random port per destination "
                    "(address-and-port-dependent mapping); no punching strategy can find "
                    "the ports, use a relay (TURN)", notes=notes)
    for role, me in sides.items():
        other_role = role.other
        other = sides[other_role]
        if not me.random:
            continue
        if other.open_filter and not other.dependent:
            return Plan("simultaneous", True, f"the {role}'s random port is admitted by the "
                        f"{other_role}'s {other.filtering.value if other.filtering else 'open'} "
                        "filtering; replies go to the port packets arrive from", notes=notes)
        if (not other.dependent and initiator.birthday_ok and receiver.birthday_ok
                and protocol == "udp"):
            return Plan("birthday", True, f"the {role}'s NAT picks random ports and the "
                        f"{other_role}'s NAT filters by port: bounded many-ports attempt",
                        birthday_side=role, notes=notes)
        cause = ("the other NAT also maps per destination" if other.dependent
                 else "the other NAT filters by address and port")
        hint = ("" if other.dependent else " (or allow the bounded --birthday attempt on both "
                "sides)" if protocol == "udp" else " (the bounded many-ports attempt is UDP only)")
        return Plan("relay-needed", False,
                    f"relay-needed: the {role}'s NAT allocates a random port per destination "
                    f"(address-and-port-dependent mapping) and {cause}; use a relay (TURN){hint}",
                    notes=notes)
    # no random side left: predictable dependents get a window aimed at them
    pi = PREDICT_WINDOW if initiator.predictable else 0
    pr = PREDICT_WINDOW if receiver.predictable else 0
    if pi and pr:
        return Plan("predict", True, "both NATs map per destination with sequential ports: "
                    "both aim at predicted windows in the same order", pi, pr, notes=notes)
    if pi or pr:
        dep_role, other = (Role.INITIATOR, receiver) if pi else (Role.RECEIVER, initiator)
        if other.open_filter:
            return Plan("simultaneous", True, f"the {dep_role}'s new port is admitted by the "
                        "other NAT's filtering; replies go to the port packets arrive from",
                        notes=notes)
        return Plan("predict", True, f"the {dep_role}'s NAT allocates sequential ports per "
                    "destination: the other side aims at the predicted window", pi, pr,
                    notes=notes)
    return Plan("simultaneous", True, "both mappings are endpoint-independent: punch the "
                                      "reflexive addresses", notes=notes)
