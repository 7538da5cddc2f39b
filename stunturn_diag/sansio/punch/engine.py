"""Pure UDP punching schedule: what to send when, and what a received datagram means.

No sockets, no clocks: the runner (:mod:`stunturn_diag.punch.udp`) passes ``now``
in and sends the returned :class:`DatagramSend` items. Phases:

1. **prime** (at ``start``): one HELLO per public target with a low TTL, so our own
   NAT creates the mapping toward the peer while the packet expires before the
   peer's NAT. Otherwise the first packet that reaches the peer's NAT before the
   peer's own packet leaves makes that NAT keep a conntrack entry for it, and the
   peer's later packet gets another port (the Linux port collision; RFC 4787 section
   4.1 notes mappings created by inbound packets hurt punching).
2. **punch** (from ``start + gap``): HELLO to every target each round, 10 ms apart
   at first, then slower; a bounded, rate-limited spray for the birthday attempt.
3. **confirm**: a valid PROOF (key confirmation over our fresh share) completes the
   handshake; its source
   address (wherever it actually came from) becomes the peer. Until the peer says
   it verified us too, our HELLO is repeated to it (it answers with its PROOF).

Every loop is bounded: by ``deadline`` and by ``max_packets``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stunturn_diag.sansio.punch.handshake import Handshake
from stunturn_diag.sansio.punch.wire import VERSION, Kind, has_magic, is_handshake
from stunturn_diag.sansio.netaddr import Address


#: (rounds, interval seconds): 20 fast rounds, then a steady pace
SCHEDULE = ((20, 0.010), (40, 0.050), (10**6, 0.200))
#: from our prime to our first full-TTL packet. The peer's prime must leave its NAT
#: before that packet reaches it, or (a NAT without an input firewall) the packet's
#: conntrack entry takes the port the peer's mapping toward us would have, the
#: mapping moves and the peer's port-dependent filter never admits us (phase 1).
#: Network asymmetry needs no margin here: the peer hears of the match at most
#: about our packet's one-way delay later than we do (the triangle inequality
#: through the server). What it needs is the two sides' processing skew from the
#: match to the prime: 1-3 ms on a quiet host in the lab, up to 17 ms with two
#: busy loops per core, above 20 ms once in CI (the pair then took the relay).
#: The punch picks the gap per peer (:func:`.decision.priming_gap`).
PRIME_GAP = 0.050
#: the gap toward a peer that our early HELLO cannot harm (:func:`.decision.priming_gap`)
OPEN_PEER_GAP = 0.020
#: TTL of priming packets (UDP and TCP): expires past our NAT, before the peer's
#: (host -> own NAT -> core router -> peer NAT); one more per extra NAT level
DEFAULT_PRIME_TTL = 2
MAX_PACKETS = 5000
SPRAY_PER_ROUND = 16
EXTRA_SOCKET_ROUNDS = 3


@dataclass(frozen=True)
class DatagramSend:
    """One datagram to send: from socket ``sock`` (0 = the main one) with ``ttl`` (None = default)."""

    data: bytes
    dst: Address
    ttl: int | None = None
    sock: int = 0


@dataclass
class TargetStats:
    sent: int = 0
    hellos: int = 0
    proofs: int = 0


@dataclass
class UdpPunchEngine:
    """One side's punch: targets in priority order (LAN first, then public/predicted)."""

    handshake: Handshake
    targets: list[Address]
    start: float
    deadline: float
    prime_ttl: int | None = DEFAULT_PRIME_TTL   # 0/None: no priming
    prime_targets: list[Address] = field(default_factory=list)
    spray: list[Address] = field(default_factory=list)
    extra_sockets: int = 0
    gap: float = PRIME_GAP
    #: birthday: keep the extra sockets quiet (after priming) until the peer's spray is done
    hold: float = 0.0
    max_packets: int = MAX_PACKETS

    peer: Address | None = None
    peer_sock: int = 0
    packets_sent: int = 0
    ignored: int = 0
    stats: dict = field(default_factory=dict)
    _round: int = 0
    _next: float = 0.0
    _primed: bool = False
    _spray_pos: int = 0
    _valid_from: set = field(default_factory=set)

    def __post_init__(self) -> None:
        self._next = self.start
        for t in self.targets + self.spray:
            self.stats.setdefault(t, TargetStats())

    # -- state ------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        return self.handshake.complete

    @property
    def confirmed(self) -> bool:
        return self.handshake.confirmed

    def expired(self, now: float) -> bool:
        return now >= self.deadline or self.packets_sent >= self.max_packets

    def next_wakeup(self) -> float:
        return min(self._next, self.deadline)

    # -- output -----------------------------------------------------------------
    def _emit(self, out: list[DatagramSend], item: DatagramSend) -> None:
        if self.packets_sent >= self.max_packets:
            return
        out.append(item)
        self.packets_sent += 1
        st = self.stats.get(item.dst)
        if st is not None:
            st.sent += 1

    def _interval(self) -> float:
        left = self._round
        for rounds, interval in SCHEDULE:
            if left < rounds:
                return interval
            left -= rounds
        return SCHEDULE[-1][1]

    def poll(self, now: float) -> list[DatagramSend]:
        """Datagrams due at ``now`` (call again at :meth:`next_wakeup`)."""
        out: list[DatagramSend] = []
        if now < self._next or self.expired(now):
            return out
        if self.complete:
            if not self.confirmed and self.peer is not None:
                # a HELLO asks the (complete) peer for its verified PROOF; PROOFs are only
                # ever answers, so this cannot ping-pong
                self._emit(out, DatagramSend(self.handshake.hello(), self.peer, sock=self.peer_sock))
            self._round += 1
            self._next = now + self._interval()
            return out
        hello = self.handshake.hello()
        if not self._primed:
            self._primed = True
            if self.prime_ttl:
                for t in self.prime_targets:
                    for s in range(self.extra_sockets + 1):
                        self._emit(out, DatagramSend(hello, t, ttl=self.prime_ttl, sock=s))
            if out:
                self._next = now + max(self.gap, self.hold)
                return out
        for t in self.targets:
            # extra (birthday) sockets: a few rounds only, each is one more mapping
            socks = self.extra_sockets + 1 if self._round < EXTRA_SOCKET_ROUNDS else 1
            for s in range(socks):
                self._emit(out, DatagramSend(hello, t, sock=s))
        if self.spray:
            for _ in range(min(SPRAY_PER_ROUND, len(self.spray))):
                if self._spray_pos >= len(self.spray):
                    break
                self._emit(out, DatagramSend(hello, self.spray[self._spray_pos]))
                self._spray_pos += 1
        self._round += 1
        self._next = now + self._interval()
        return out

    # -- input ------------------------------------------------------------------
    def receive(self, data: bytes, src: Address, now: float, sock: int = 0) -> list[DatagramSend]:
        """Feed one received datagram; returns replies to send at once."""
        if has_magic(data) and data[4] != VERSION:
            self.handshake.handle(data)      # counted: failure() names the peer's version
            return []
        if not is_handshake(data) or data[5] not in (Kind.HELLO, Kind.PROOF):
            self.ignored += 1
            return []
        outcome = self.handshake.handle(data)
        if not outcome.accepted:
            return []
        self._valid_from.add(src)
        st = self.stats.setdefault(src, TargetStats())
        if data[5] == Kind.HELLO:
            st.hellos += 1
        else:
            st.proofs += 1
        if outcome.completed_now:
            self.peer, self.peer_sock = src, sock
        out: list[DatagramSend] = []
        if outcome.reply is not None and not self.expired(now):
            self._emit(out, DatagramSend(outcome.reply, src, sock=sock))
        return out

    # -- diagnosis ----------------------------------------------------------------
    def failure(self) -> tuple[str, str, list[dict]]:
        """(reason, message, attempts) after the deadline passed without completion."""
        heard_hello = any(st.hellos for st in self.stats.values())
        attempts = [{"target": f"{ip}:{port}", "sent": st.sent, "hellos_received": st.hellos,
                     "proofs_received": st.proofs,
                     "result": ("peer's packets arrived here but ours never reached it"
                                if st.hellos else "no authentic packet from this address")}
                    for (ip, port), st in self.stats.items() if st.sent or st.hellos or st.proofs]
        explained = self.handshake.failure_reason()
        if explained:
            return (*explained, attempts)
        if heard_hello:
            return ("one-way", "the peer's packets reached us but ours never reached the peer "
                    "(its NAT filtered them)", attempts)
        if self.packets_sent >= self.max_packets:
            return ("packet-budget", f"gave up after {self.packets_sent} packets without an "
                    "answer from the peer", attempts)
        return ("timeout", "no packet from the peer reached us before the punch timeout "
                "(a NAT or firewall on the path filtered the punch)", attempts)
