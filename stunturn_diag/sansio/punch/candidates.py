"""Pure target lists: which peer addresses to punch, prime and spray for a :class:`Plan`.

Inputs are the peer's signaling ``details`` (``srflx``, ``local``, ``nat.punch``)
and the plan both sides derived. Port prediction for a sequentially allocating,
address-and-port-dependent NAT (RFC 4787 section 4.2.1; RFC 5128 section 3.4):
the peer's k-th new mapping after its STUN binding gets port
``srflx + flows_after_stun + k``, where ``flows_after_stun`` counts the flows
(e.g. the HTTP check-in) it opened in between; a peer that reads and steers its
NAT's shared counter (:mod:`.counter`) announces ``nat.punch.next_port`` instead,
and the window starts there. Both sides aim and prime their
windows in the same order, so the k-th mappings of both meet.

Peer-supplied addresses are untrusted (:func:`vet_peer_candidates`): only IP
literals (never a DNS lookup), at most :data:`MAX_LOCAL` host candidates, the
server-reflexive address only where the signaling server saw the peer come from,
and private, loopback or link-local host candidates only when the peer shares our
public IP (a LAN peer); anything else is dropped and noted, so a malicious peer
cannot aim our punch packets at our LAN or at third parties.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Protocol, Sequence

from stunturn_diag.errors import PunchError
from stunturn_diag.sansio.punch.wire import Role
from stunturn_diag.sansio.netaddr import Address
from stunturn_diag.sansio.punch.decision import BIRTHDAY_HOLD, BIRTHDAY_PORTS, BIRTHDAY_SOCKETS, Plan


class Sampler(Protocol):
    """The randomness :func:`build_targets` needs (``random.Random`` fits): passed in."""

    def sample(self, population: Sequence[int], k: int) -> list[int]: ...

MAX_LOCAL = 8


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
    return [a for a in (address_of(x) for x in obj) if a][:MAX_LOCAL] \
        if isinstance(obj, list) else []


def _ip(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An IP literal (IPv4-mapped IPv6 folded to IPv4), None for hostnames and junk."""
    try:
        addr = ipaddress.ip_address(text)
    except (TypeError, ValueError):
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _internal(addr) -> bool:
    return addr.is_private or addr.is_loopback or addr.is_link_local


@dataclass
class PeerCandidates:
    """The peer's addresses we agree to send to, and what was dropped (``notes``)."""

    srflx: Address | None
    local: list[Address]
    shift: int = 0
    notes: list[str] = field(default_factory=list)


def vet_peer_candidates(details: object, protocol: str = "udp", *,
                        peer_observed_ip: str | None, my_public_ip: str | None) -> PeerCandidates:
    """Keep only the peer candidates it is safe to punch toward (see the module doc).

    ``peer_observed_ip``: where the signaling server saw the peer (``peer.observed``);
    ``my_public_ip``: our own server-reflexive IP.
    """
    srflx, local, shift = peer_addresses(details, protocol)
    notes: list[str] = []
    observed = _ip(peer_observed_ip)
    if srflx is not None:
        addr = _ip(srflx[0])
        if addr is None:
            notes.append(f"peer srflx {srflx[0]!r} refused: not an IP address (no DNS lookups)")
            srflx = None
        elif observed is not None and addr != observed:
            notes.append(f"peer srflx {srflx[0]} refused: the server saw the peer at {observed}")
            srflx = None
        elif addr.is_multicast or addr.is_unspecified:
            notes.append(f"peer srflx {srflx[0]} refused: not a unicast address")
            srflx = None
        else:
            srflx = (str(addr), srflx[1])
    public = observed or (_ip(srflx[0]) if srflx else None)
    mine = _ip(my_public_ip)
    same_public = public is not None and public == mine
    kept: list[Address] = []
    for ip, port in local:
        addr = _ip(ip)
        if addr is None:
            notes.append(f"peer host candidate {ip!r} refused: not an IP address")
        elif not same_public:
            notes.append(f"peer host candidate {ip} dropped: the peer is not behind our "
                         "public IP")
        elif not (_internal(addr) or addr == public) or addr.is_multicast or addr.is_unspecified:
            notes.append(f"peer host candidate {ip} refused: neither a LAN address nor the "
                         "peer's public IP")
        else:
            kept.append((str(addr), port))
    return PeerCandidates(srflx, kept, shift, notes)


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


def peer_relay_only(details: object) -> dict[str, str]:
    """``nat.punch.relay_only``: the transports the peer could not prepare but uses
    through the TURN relay reached over TCP (RFC 8656 section 3.1), protocol -> why."""
    nat = details.get("nat") if isinstance(details, dict) else None
    punch = nat.get("punch") if isinstance(nat, dict) else None
    relays = punch.get("relay_only") if isinstance(punch, dict) else None
    if not isinstance(relays, dict):
        return {}
    return {p: str(w) for p, w in relays.items() if isinstance(p, str)}


def peer_uses_relay(details: object) -> bool:
    """Whether the peer falls back to a relay: ``nat.punch.relay`` is not false (it ran
    with ``--no-relay``); an older peer that does not say does."""
    nat = details.get("nat") if isinstance(details, dict) else None
    punch = nat.get("punch") if isinstance(nat, dict) else None
    return not (isinstance(punch, dict) and punch.get("relay") is False)


def promised_port(details: object) -> int | None:
    """``details.nat.punch.next_port``: where a sequential peer steers its first punch
    flow (see :mod:`.counter`), None if absent or malformed."""
    nat = details.get("nat") if isinstance(details, dict) else None
    punch = nat.get("punch") if isinstance(nat, dict) else None
    port = punch.get("next_port") if isinstance(punch, dict) else None
    return port if isinstance(port, int) and not isinstance(port, bool) \
        and 0 < port < 65536 else None


#: when both NATs are sequential, the receiver's k-th flow aims ``k % SHIFT_SPAN`` ports
#: past the initiator's k-th: a total unforeseen shift of 0..SHIFT_SPAN-1 is still met.
#: 3 keeps the targets distinct (``k + k % 3`` is ``3q + 2r``); with 4 they repeat
SHIFT_SPAN = 3


def window_ports(start: int, window: int, my_role: Role | str, both_predicted: bool) -> list[int]:
    """The peer ports our k-th punch flows aim at (k = 0 .. ``window`` - 1).

    Facing one sequential NAT: ``start + k``. When both NATs are sequential, each
    side's k-th flow must land exactly where the other's k-th flow aims (RFC 4787
    section 4.1: each new destination is a new mapping; section 5: the port-dependent
    filter admits only the exact peer). A flow of another host between the confirming
    counter reading and the punch moves every later port of that side by one, and
    ``start + k`` on both sides then never meet. So the receiver aims its k-th flow at
    ``start + k + (k % SHIFT_SPAN)`` while the initiator keeps ``start + k``: with the
    initiator's flows moved by ``d_i`` and the receiver's by ``d_r`` (unforeseen, each
    side's own), the receiver's flow k with ``k % SHIFT_SPAN == d_i + d_r`` meets the
    initiator's flow ``k + d_r``, for any total shift below :data:`SHIFT_SPAN`.
    """
    if both_predicted and Role(my_role) is Role.RECEIVER:
        return [start + k + k % SHIFT_SPAN for k in range(window)]
    return [start + k for k in range(window)]


def build_targets(plan: Plan, my_role: Role | str, peer_details: object, *, protocol: str = "udp",
                  rng: Sampler | None = None,
                  vetted: PeerCandidates | None = None) -> Targets:
    """Targets (in send order), prime list, spray list and extra sockets for our side.

    ``rng``: the spray's port source (the birthday sprayer side needs it; the runner
    passes ``random.Random()``).
    ``vetted``: the peer's candidates after :func:`vet_peer_candidates` (used instead of
    the raw ``peer_details`` addresses).
    """
    if vetted is not None:
        srflx, local, shift = vetted.srflx, vetted.local, vetted.shift
    else:
        srflx, local, shift = peer_addresses(peer_details, protocol)
    my_role = Role(my_role)
    peer_role = my_role.other
    if plan.strategy == "lan":
        targets = list(dict.fromkeys(local + ([srflx] if srflx else [])))
        if not targets:
            raise PunchError("the peer sent no address to punch", reason="no-peer-address")
        return Targets(targets)
    if srflx is None:
        raise PunchError("the peer sent no server-reflexive address (details.srflx)",
                         hint="the peer's STUN binding failed or it runs an old version",
                         reason="no-peer-address")
    if plan.strategy == "portmap":
        if plan.portmap_side == my_role:
            return Targets([])           # reached at our mapped address: only answer
        nat = peer_details.get("nat") if isinstance(peer_details, dict) else None
        punch = nat.get("punch") if isinstance(nat, dict) else None
        mapped = address_of(punch.get("portmap")) if isinstance(punch, dict) else None
        if mapped is None:
            raise PunchError("the plan is portmap but the peer sent no mapped address",
                             reason="no-peer-address")
        return Targets([mapped])
    ip, port = srflx
    window = plan.predict_for(peer_role)
    if window:
        start = promised_port(peer_details) or port + shift + 1
        both = bool(plan.predict_for(my_role))
        targets = [(ip, p) for p in window_ports(start, window, my_role, both) if p < 65536]
        return Targets(targets, prime=list(targets))
    if plan.strategy == "birthday":
        if plan.birthday_side == peer_role:
            if rng is None:
                raise ValueError("the birthday sprayer needs rng (random ports)")
            ports = [p for p in rng.sample(range(1024, 65536), BIRTHDAY_PORTS + 1) if p != port]
            spray = [(ip, p) for p in ports[:BIRTHDAY_PORTS]]
            return Targets([srflx], prime=[srflx], spray=spray)
        return Targets([srflx], prime=[srflx], extra_sockets=BIRTHDAY_SOCKETS, hold=BIRTHDAY_HOLD)
    return Targets([srflx], prime=[srflx])
