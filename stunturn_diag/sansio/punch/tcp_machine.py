"""The TCP punch as a pure state machine: per-candidate prime/connect rounds, the
listener, the nomination exchange.

No sockets, no clock, no random source: :mod:`stunturn_diag.punch.tcp_runner` owns
them. Sockets are named by integer handles (:data:`LISTENER` is the caller's
listener; the machine allocates the others). Every method takes the event and
``now`` (monotonic seconds) and returns the actions to carry out, in order. An
action whose result the machine needs at once (:class:`OpenConnect`, :class:`StreamSend`,
:class:`StreamRecv`, :class:`DrainAccepts`, :class:`CheckSynSent`, :class:`CheckSynReceived`,
:class:`CheckUnacked`, :class:`OpenListener`, :class:`FilterListener`) is answered by the runner with the matching ``on_*`` event
before it carries out the next action (the actions that event returns go first), so
the sequence is the one a direct socket loop would run. The sequence and its reasons
are in the docstring of :mod:`stunturn_diag.punch.tcp`. Every retry is bounded by
:data:`MAX_CONNECTS` per candidate and by the caller's deadline.

One loop round of the runner: ``on_timers(now)`` (connect and settle rounds that are
due), ``expire(now)`` (accepted connections not nominated in time), then
``wait(now)`` names the sockets to watch and the longest wait; each writable
connecting socket is ``on_connect_result(handle, so_error, now)``, a readable
listener ``DrainAccepts``, a readable connection ``on_readable(handle, now)``. The
run ends when :attr:`TcpPunchMachine.winner` is set, or at the deadline with
:meth:`TcpPunchMachine.failure`.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import Callable, Union

from stunturn_diag.errors import PunchError
from stunturn_diag.sansio.punch.wire import Role
from stunturn_diag.sansio.netaddr import Address
from stunturn_diag.sansio.synwait import KERNEL_SYN_RTO


#: pinned ISNs: the full-TTL SYN leaves when the prime's ICMP Time Exceeded came back
#: (it passed our NAT) and at least this long after the prime: the skew between the
#: two peers' starts (the server releases both in the same instant; what differs is
#: the one-way delay of the answer and the wake-up), so the peer's prime has opened
#: its NAT before our full SYN gets there
SETTLE = 0.012
#: seconds before the n-th re-try after a refused/unreachable full-TTL SYN:
#: RETRY_FIRST, doubling up to RETRY_INTERVAL (a late peer is met within a few
#: milliseconds, a peer that never comes costs one round per RETRY_INTERVAL)
RETRY_FIRST = 0.02
RETRY_INTERVAL = 0.25
#: kernel ISNs: the receiver's zig-zag step between rounds (see
#: TcpPunchMachine._retry_wait)
KERNEL_STEP = 0.0025
#: kernel ISNs (no CAP_NET_ADMIN; RFC 6528 ISNs, a new one per socket): only a SYN-ACK
#: from the very socket whose SYN our NAT's conntrack saw last gets a working connection.
#: Seen in the lab: the listener's SYN-ACK (another ISN, though inside the ~4 ms window)
#: passes our NAT, the handshake completes, then our NAT marks our data INVALID and it
#: leaves untranslated (one-way connection, "no nomination within 2s"); a prime that
#: died at its ICMP Time Exceeded and was followed by a new socket only after the
#: peer's SYN had arrived failed the same way or by RST. So the priming socket is kept:
#: its SYN leaves at the prime's TTL, then its TTL is raised at once and it waits in
#: SYN-SENT for the peer's SYN (the core router rate-limits ICMP: after a few, a prime
#: gets none and lives). One the ICMP kills is replaced at once; one refused by RST
#: (a peer on the same LAN) after PRIME_EVERY. The full-TTL SYN follows at the round's
#: settle time from a fresh socket (the prime, still in SYN-SENT, aborted first).
PRIME_EVERY = 0.001
#: kernel ISNs: only the initiator sends a fresh full-TTL SYN at the settle time; the
#: receiver keeps its prime (TTL raised, the kernel resends its SYN at full TTL) and
#: waits for the initiator's SYN. A fresh socket draws another ISN: once the peer's SYN
#: has passed our NAT (conntrack SYN_SENT2), that NAT keeps the window of the SYN it saw
#: last from us, and the fresh socket's SYN and SYN-ACK fall outside it (INVALID, they
#: leave untranslated; seen in the lab as both sides stuck in SYN-RECEIVED until the
#: deadline, about 1 attempt in 7). With one side keeping its one ISN, its NAT never
#: sees two, and the initiator's NAT sees no reply-direction SYN before its fresh one
KERNEL_RECEIVER_KEEPS = True
#: most priming SYNs per candidate and run (kernel ISNs; a bound, the lab needs ~10)
MAX_PRIMES = 600
#: full-TTL connect attempts per candidate (each after a fresh priming SYN)
MAX_CONNECTS = 40
#: pinned ISNs: a full-TTL SYN still unanswered (the socket still SYN-SENT) after this
#: long, then twice that, ... while below the kernel's own first SYN retransmission
#: (1 s, RFC 6298 section 2.1), is resent from a fresh socket with the same ISN (a
#: retransmission to both NATs' conntrack). On a lossy path the kernel's 1 s, 2 s...
#: schedule used most of the deadline, and a handshake with retransmitted SYNs gets no
#: RTT sample: the first data (NOMINATE) then waits the 3 s fallback RTO (RFC 6298
#: section 5.7) to be resent; seen in the lab (``lossy--restricted-cone``: NOMINATE
#: unacknowledged with a 6 s retransmission timer at the deadline)
SYN_RESEND_FIRST = 0.2
#: the initiator nominates one connection (RFC 8445 section 8 style: the controlling
#: side picks), the receiver confirms; both return exactly that connection. The
#: receiver also sends READY as soon as a connection is up: after a simultaneous
#: open whose final ACK was lost past the peer's NAT, that NAT's conntrack is
#: ESTABLISHED and marks the peer's retransmitted SYN-ACK INVALID (untranslated);
#: a data segment is what moves the stuck SYN-RECEIVED end to ESTABLISHED.
NOMINATE = b"STDTCPN1"
READY = b"STDTCPR1"
NOMINATE_ACK = b"STDTCPA1"
#: the receiver returns the nominated connection only once the peer has acknowledged
#: every byte it sent (READY, NOMINATE_ACK): receiving NOMINATE proves only the way in.
#: Seen unprivileged (kernel ISNs): a listener's SYN-ACK came through, then our NAT
#: left our data untranslated, and the receiver went on to a handshake nobody heard.
#: Looked at every CONFIRM_POLL seconds (bounded by NOMINATION_WAIT)
CONFIRM_POLL = 0.002
#: most connections waiting for the nomination exchange (accepted strangers beyond
#: this are closed at once)
MAX_PENDING = 32
#: a connection to or from a candidate whose nomination exchange has not completed after
#: this long is aborted and its candidate punched anew: seen unprivileged (kernel ISNs,
#: no listener filter) in the lab, the listener's connection from a candidate came up
#: while only one way worked, and holding it (on either side) blocked that candidate
#: until the deadline
NOMINATION_WAIT = 2.0
#: a candidate's 4-tuple still taken after this many EADDRNOTAVAIL (and nothing to
#: accept): the listener's half-open connection whose SYN-ACK never gets through (a new
#: ISN, INVALID at our NAT; unprivileged the listener cannot be filtered) holds it for
#: the kernel's SYN-ACK retries (a minute). A new listener on the port replaces the old
#: one; the kernel drops a request whose listener is gone at its next timer or segment.
RENEW_AFTER = 3
MAX_RENEWALS = 3
#: pinned ISNs: a full-TTL socket whose simultaneous open is stuck in SYN-RECEIVED this
#: long is aborted and its candidate punched anew (see :mod:`stunturn_diag.punch.tcp`, finding e):
#: our SYN-ACK was lost before the peer's NAT, whose entry then refuses the peer's
#: retransmitted SYN; the kernel would retry the SYN-ACK for a minute, never completing.
#: A normal open is SYN-RECEIVED one round trip; a lost final ACK is completed by the
#: peer's NOMINATE/READY within its first retransmissions (RTO >= 200 ms)
SYN_RECV_STALL = 1.5
#: how often a full-TTL socket's TCP state is looked at (for SYN_RECV_STALL)
STATE_POLL = 0.25
#: the longest single wait for socket events (the loop also wakes on every event)
TICK = 0.05
#: accepted connections taken from the listener's queue per drain (a bound)
ACCEPT_DRAIN = 16
#: the listener's backlog
BACKLOG = 16

STRATEGY_SIMULTANEOUS = "simultaneous-open"
STRATEGY_LISTEN = "listen-connect"

#: the handle of the caller's listener
LISTENER = 0

_REFUSED = {errno.ECONNREFUSED, errno.ECONNRESET}
_UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EACCES, errno.EPERM}


# -- actions -------------------------------------------------------------------

@dataclass(frozen=True)
class OpenConnect:
    """Open a non-blocking socket on the shared port (with ISN ``isn`` if not None),
    note its default TTL, set ``ttl`` if not None and start a connect to ``address``.
    Answer: ``on_socket_failed`` (the socket could not be made) or
    ``on_connect_started`` (connect's return code)."""

    handle: int
    address: Address
    ttl: int | None
    isn: int | None


@dataclass(frozen=True)
class SetTtl:
    handle: int
    ttl: int


@dataclass(frozen=True)
class CheckSynSent:
    """Answer ``on_syn_sent(handle, in_syn_sent)``: is the socket still in SYN-SENT?"""

    handle: int


@dataclass(frozen=True)
class Close:
    handle: int


@dataclass(frozen=True)
class Abort:
    """Close with SO_LINGER 0: no FIN and no orphan holding the 4-tuple (a socket in
    SYN-SENT goes silently, one that just turned SYN-RECEIVED with a RST)."""

    handle: int


@dataclass(frozen=True)
class StreamSend:
    """StreamSend ``data``; answer ``on_send_result(handle, error)`` (error None: sent)."""

    handle: int
    data: bytes


@dataclass(frozen=True)
class StreamRecv:
    """Receive up to ``size`` bytes; answer ``on_data`` (nothing if it would block)."""

    handle: int
    size: int


@dataclass(frozen=True)
class CheckSynReceived:
    """Answer ``on_syn_received(handle, in_syn_received)``: is the socket in SYN-RECEIVED
    (a simultaneous open not completed yet)?"""

    handle: int


@dataclass(frozen=True)
class CheckUnacked:
    """Answer ``on_unacked(handle, count)``: bytes sent on ``handle`` the peer has not
    acknowledged yet (SIOCOUTQ)."""

    handle: int


@dataclass(frozen=True)
class DrainAccepts:
    """Accept up to :data:`ACCEPT_DRAIN` queued connections from listener ``listener``:
    ``on_accepted`` for each (with a handle from :meth:`TcpPunchMachine.allocate`),
    ``on_accept_failed`` and stop on an error, stop when none is queued."""

    listener: int


@dataclass(frozen=True)
class OpenListener:
    """Open a socket on the shared port for a new listener; answer
    ``on_listener_opened(handle, error)`` (error None: opened)."""

    handle: int


@dataclass(frozen=True)
class FilterListener:
    """Make listener ``handle`` drop segments from ``sources`` silently; answer
    ``on_filtered(ok)``."""

    handle: int
    sources: tuple[Address, ...]


@dataclass(frozen=True)
class Listen:
    handle: int
    backlog: int = BACKLOG


@dataclass(frozen=True)
class Resume:
    """Carry on with ``step`` once the actions before it (and what their answers
    returned) are done: the runner calls :meth:`TcpPunchMachine.resume`."""

    step: str
    index: int


Action = Union[OpenConnect, SetTtl, CheckSynSent, CheckSynReceived, Close, Abort, StreamSend,
               StreamRecv, CheckUnacked, DrainAccepts,
               OpenListener, FilterListener, Listen, Resume]


# -- state -----------------------------------------------------------------------

@dataclass
class TcpCandidate:
    """Punching state toward one peer address."""

    address: Address
    handle: int | None = None      # its connecting socket
    priming: bool = False          # ``handle`` sent the low-TTL SYN
    isn: int | None = None         # pinned ISN toward it (every prime and connect share it)
    settle_at: float = 0.0         # when the full-TTL SYN follows the prime
    resend_at: float = 0.0         # when an unanswered full SYN is resent (0: never)
    resends: int = 0               # full SYNs resent this round
    next_connect: float = 0.0      # when to open the next full-TTL socket
    connects: int = 0
    failures: int = 0              # refused/unreachable full-TTL rounds (retry back-off)
    busy: int = 0                  # connects refused locally: the 4-tuple was in use
    passive: bool = False          # listen-connect receiver: never connects
    prime_at: float = 0.0          # kernel ISNs: when the next priming SYN leaves
    primes: int = 0                # kernel ISNs: priming SYNs sent
    state_at: float = 0.0          # when to look at the full-TTL socket's state next
    syn_recv_since: float | None = None   # when it was first seen in SYN-RECEIVED
    up: bool = False               # its connection is established (4-tuple in use)
    errors: dict[str, int] = field(default_factory=dict)

    def note(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


@dataclass
class TcpConn:
    """An established connection waiting for the nomination exchange."""

    handle: int
    peer: Address
    via: str                            # "connect" | "accept"
    cand: TcpCandidate | None = None    # the candidate it was connected to
    buf: bytes = b""
    since: float = 0.0                  # when it came up (monotonic)
    #: receiver: NOMINATE arrived while another connection's NOMINATE_ACK was out;
    #: acknowledged only if that one fails (see :meth:`TcpPunchMachine._ack_next`)
    held: bool = False


def retry_delay(failures: int) -> float:
    """Seconds before the next round after ``failures`` refused/unreachable rounds:
    RETRY_FIRST for three rounds, then doubling every three, at most RETRY_INTERVAL."""
    return min(RETRY_INTERVAL, RETRY_FIRST * 2 ** (max(0, failures - 1) // 3))


def _zigzag(n: int) -> int:
    """0, +1, -1, +2, -2, ... for n = 0, 1, 2, 3, 4, ..."""
    return (n + 1) // 2 * (1 if n % 2 else -1)


def _err_name(code: int) -> str:
    return errno.errorcode.get(code, str(code))


class TcpPunchMachine:
    """One punch run's decisions (see the module docstring for the event loop)."""

    def __init__(self, candidates: list[Address], *, role: Role | str, deadline: float,
                 prime_ttl: int | None, strategy: str, pin: bool,
                 isn_source: Callable[[], int], label: str | None = None,
                 max_connects: int = MAX_CONNECTS) -> None:
        """``pin``: pin ISNs (the runner checked TCP_REPAIR); only used with priming and
        simultaneous open. ``isn_source``: a random 32-bit number per pinned round."""
        self.candidates = [TcpCandidate(c) for c in candidates]
        self.role = Role(role)
        self.deadline = deadline
        self.prime_ttl = prime_ttl
        self.strategy = strategy
        #: the caller's strategy name, reported in ``attempts``
        self.label = label or strategy
        #: full-TTL connects per candidate (1: one round each, no retry; the lab's control)
        self.max_connects = max(1, min(int(max_connects), MAX_CONNECTS))
        self.conns: list[TcpConn] = []
        self.conn_errors: list[str] = []
        self.accepted = 0
        #: listeners this run opened to replace the caller's (closed at the end)
        self.renewed = 0
        self.listener = LISTENER
        self.full_ttl = 64
        self.filtered = False
        #: pin ISNs with TCP_REPAIR (needs CAP_NET_ADMIN); else kernel ISNs
        self.pin = bool(prime_ttl) and strategy == STRATEGY_SIMULTANEOUS and bool(pin)
        #: kernel ISNs with priming (see PRIME_EVERY)
        self.kernel_isn = bool(prime_ttl) and strategy == STRATEGY_SIMULTANEOUS and not self.pin
        self._isn_source = isn_source
        #: the handle that won the nomination
        self.winner: int | None = None
        self._next_handle = LISTENER + 1
        #: handle -> (candidate, ttl) of sockets whose connect has not started yet
        self._opening: dict[int, tuple[TcpCandidate, int | None]] = {}
        #: handle -> connection whose first message is being sent
        self._greeting: dict[int, TcpConn] = {}
        #: handle -> connection whose NOMINATE_ACK is being sent
        self._acking: dict[int, TcpConn] = {}
        #: receiver: handle -> nominated connection whose bytes are not all acknowledged
        self._confirming: dict[int, TcpConn] = {}
        #: the listener being opened to replace the current one
        self._new_listener: int | None = None
        self._wake = deadline
        self._round_at = 0.0

    def allocate(self) -> int:
        """A fresh socket handle."""
        handle = self._next_handle
        self._next_handle += 1
        return handle

    # -- rounds ----------------------------------------------------------------

    def _open(self, cand: TcpCandidate, ttl: int | None) -> list[Action]:
        handle = self.allocate()
        self._opening[handle] = (cand, ttl)
        return [OpenConnect(handle, cand.address, ttl, cand.isn)]

    def _prime(self, cand: TcpCandidate, now: float, settle: float) -> list[Action]:
        """Low-TTL SYN: opens our mapping, dies before the peer's NAT (no RST there).
        ``settle``: when the round's full-TTL SYN follows.

        Pinned ISNs: one per candidate, drawn for its first prime and kept for every
        later round. A full SYN refused by an ICMP port unreachable (a firewall in front
        of the peer's NAT, RFC 5382 section 7.1 / RFC 792) leaves our NAT's conntrack
        entry alive (a RST would have closed it); once the peer's SYN passed it (state
        SYN_SENT2) a SYN or SYN-ACK with another ISN is out of the window it recorded:
        INVALID, it leaves untranslated and the punch times out (seen in the lab:
        ``port-restricted-icmp`` pairs, about 1 run in 8). With the same ISN each
        round's segments are retransmissions of the ones conntrack tracked.
        """
        if self.pin and cand.isn is None:
            cand.isn = self._isn_source() | 1
        cand.resends = 0
        cand.settle_at = cand.next_connect = now + settle
        if self.kernel_isn:
            cand.prime_at = now
            return self._kernel_prime(cand, now)
        return self._open(cand, self.prime_ttl)

    def _kernel_prime(self, cand: TcpCandidate, now: float) -> list[Action]:
        """Kernel ISNs: the round's next priming socket, if its time has come and the
        budget lasts (its TTL is raised once its SYN left: see :data:`PRIME_EVERY`)."""
        if cand.prime_at > now or cand.primes >= MAX_PRIMES or cand.next_connect <= now:
            return []
        cand.primes += 1
        cand.prime_at = now + PRIME_EVERY
        return self._open(cand, self.prime_ttl)

    def _retry_wait(self, failures: int) -> float:
        """Seconds to the next round after ``failures`` refused rounds.

        Two peers whose rounds start a constant skew apart (more than the guard
        between prime and full SYN) would meet each other's RST round after round:
        each early full SYN finds the peer's NAT without an entry, and the RST puts
        ours in CLOSE, which RSTs the peer's next SYN in turn. The receiver shifts
        its rounds by a zig-zag of guard-sized steps (+1, -1, +2, -2, ... guards
        relative to the initiator), so one round lands within the guard.
        """
        wait = retry_delay(failures)
        if self.role is Role.RECEIVER:
            step = SETTLE if self.pin else KERNEL_STEP
            wait += step * (_zigzag(failures) - _zigzag(failures - 1))
        return max(0.001, wait)

    def connect(self, cand: TcpCandidate, now: float) -> list[Action]:
        """A full-TTL connect round toward ``cand`` (``now`` unused: the round's time
        comes with its answers)."""
        cand.connects += 1
        return self._open(cand, None)

    def start(self, now: float) -> list[Action]:
        if self.strategy == STRATEGY_LISTEN:
            for cand in self.candidates:
                cand.next_connect = now
                cand.passive = self.role is Role.RECEIVER  # the receiver only listens
            return [Listen(self.listener)]
        # a SYN from a candidate that finds none of our connecting sockets is dropped
        # silently instead of answered (the listener filter); filter before listen().
        # ``filtered`` is False where the kernel refuses socket filters (some need
        # CAP_NET_ADMIN): the listener then answers candidates too (see module
        # docstring of tcp)
        actions: list[Action] = [FilterListener(self.listener, self._sources()),
                                 Listen(self.listener)]
        for cand in self.candidates:
            if self.prime_ttl:
                actions += self._prime(cand, now, SETTLE)
            else:
                cand.next_connect = now
        return actions

    def _sources(self) -> tuple[Address, ...]:
        return tuple(c.address for c in self.candidates)

    def _go_full_ttl(self, cand: TcpCandidate, now: float) -> list[Action]:
        # the same socket goes on at full TTL; the kernel retransmits its SYN
        # (or its SYN-ACK, after a simultaneous open already began)
        assert cand.handle is not None
        cand.priming = False
        self._watch(cand, now)
        return [SetTtl(cand.handle, self.full_ttl)]

    @staticmethod
    def _watch(cand: TcpCandidate, now: float) -> None:
        """A full-TTL socket of ``cand`` is connecting: look at its state from time to time."""
        cand.state_at = now + STATE_POLL
        cand.syn_recv_since = None

    def _look_at_state(self, cand: TcpCandidate, now: float) -> list[Action]:
        """A full-TTL connecting socket: its state now and then (see :data:`SYN_RECV_STALL`)."""
        assert cand.handle is not None
        if cand.state_at <= now:
            cand.state_at = now + STATE_POLL
            return [CheckSynReceived(cand.handle)]
        self._wake = min(self._wake, cand.state_at)
        return []

    def on_timers(self, now: float) -> list[Action]:
        """Connect and settle rounds due at ``now``, one candidate after the other
        (each one's turn comes after the answers to the previous one's actions: an
        accepted connection may have taken a later candidate's 4-tuple); also notes
        the next wake-up."""
        self._wake = self.deadline
        self._round_at = now
        return [Resume("timer", i) for i in range(len(self.candidates))]

    def _timer(self, cand: TcpCandidate) -> list[Action]:
        now = self._round_at
        if self.kernel_isn:
            return self._kernel_timer(cand, now)
        if cand.handle is None and not cand.passive and not cand.up and \
                cand.connects < self.max_connects:
            if cand.next_connect <= now:
                return self.connect(cand, now)
            self._wake = min(self._wake, cand.next_connect)
        elif cand.handle is not None and cand.priming:
            if cand.settle_at <= now:
                # the prime's socket is still alive (no ICMP came back)
                return [CheckSynSent(cand.handle)]
            self._wake = min(self._wake, cand.settle_at)
        elif cand.handle is not None:
            # a full-TTL SYN: resent on our schedule (pinned ISNs), its state watched
            if cand.resend_at and cand.resend_at <= now:
                cand.resend_at = 0.0
                return [CheckSynSent(cand.handle)]
            if cand.resend_at:
                self._wake = min(self._wake, cand.resend_at)
            return self._look_at_state(cand, now)
        return []

    def _kernel_timer(self, cand: TcpCandidate, now: float) -> list[Action]:
        """Kernel ISNs: keep a priming socket on the 4-tuple until the round's settle
        time; then the initiator sends the full-TTL SYN from a fresh socket and the
        receiver keeps its prime (:data:`KERNEL_RECEIVER_KEEPS`; and either side keeps a
        prime the peer's SYN reached: that one is the connection then)."""
        if cand.up or cand.connects >= self.max_connects:
            return []
        if cand.handle is not None:
            # a prime still alive (no ICMP came back: the socket waits at full TTL)
            # gives way to the full-TTL SYN unless the peer's SYN reached it
            if not cand.priming:
                # no SYN_RECV_STALL rule here: with kernel ISNs a socket the peer's SYN
                # reached is the connection; aborting it (measured in the lab's TCP
                # matrix) only lost the punch
                return []
            if cand.next_connect <= now:
                return [CheckSynSent(cand.handle)]
            self._wake = min(self._wake, cand.next_connect)
            return []
        if cand.next_connect <= now:
            return self.connect(cand, now)
        actions = self._kernel_prime(cand, now)
        wake = cand.next_connect
        if cand.primes < MAX_PRIMES:
            wake = min(wake, cand.prime_at)
        self._wake = min(self._wake, wake)
        return actions

    def expire(self, now: float) -> list[Action]:
        """Abort connections to or from a candidate not nominated within
        :data:`NOMINATION_WAIT`; look again whether the peer acknowledged what the
        receiver sent on its nominated connection."""
        actions: list[Action] = []
        for conn in list(self.conns):
            if conn.cand is None or conn.handle == self.winner:  # the winner is the caller's
                continue
            if conn.held:          # it waits on our own acknowledgement, not on the peer
                continue
            if now - conn.since >= NOMINATION_WAIT:
                was_acked = self._confirming.pop(conn.handle, None) is not None
                actions += self._drop(conn, f"no nomination within {NOMINATION_WAIT:g}s",
                                      now, abort=True)
                if was_acked:
                    actions += self._ack_next(now)
            else:
                self._wake = min(self._wake, conn.since + NOMINATION_WAIT)
        return actions + [CheckUnacked(h) for h in self._confirming]

    def wait(self, now: float) -> tuple[list[int], list[int], float]:
        """(handles to watch for reading, for writing, seconds to wait at most)."""
        writers = [c.handle for c in self.candidates if c.handle is not None]
        readers = [self.listener] + [c.handle for c in self.conns
                                     if c.handle not in self._confirming
                                     and c.handle != self.winner]
        return readers, writers, max(0.0, min(self._wake - now, TICK))

    def connecting(self) -> list[int | None]:
        """Each candidate's connecting socket, in candidate order (None: none)."""
        return [c.handle for c in self.candidates]

    # -- answers ---------------------------------------------------------------

    def on_socket_failed(self, handle: int, code: int, now: float) -> list[Action]:
        cand, _ = self._opening.pop(handle)
        cand.note(f"socket {_err_name(code)}")
        cand.next_connect = now + RETRY_INTERVAL
        return []

    def on_connect_started(self, handle: int, rc: int, full_ttl: int,
                           now: float) -> list[Action]:
        cand, ttl = self._opening.pop(handle)
        self.full_ttl = full_ttl
        if rc == errno.EADDRNOTAVAIL:
            # the 4-tuple is taken by another socket on our port: the listener's
            # connection from this very candidate (its SYN found no connecting socket
            # of ours), established or about to be. Take it if it is queued; else
            # look again soon (no SYN left: not a connect attempt)
            cand.note(f"connect {_err_name(rc)}")
            if ttl is None:
                cand.connects -= 1
            cand.busy += 1
            return [Close(handle), DrainAccepts(self.listener),
                    Resume("busy", self.candidates.index(cand))]
        if rc not in (0, errno.EINPROGRESS):
            cand.note(f"connect {_err_name(rc)}")
            cand.next_connect = now + RETRY_INTERVAL
            return [Close(handle)]
        cand.handle, cand.priming = handle, ttl is not None
        if ttl is None:
            self._watch(cand, now)
        wait = SYN_RESEND_FIRST * 2 ** cand.resends
        cand.resend_at = now + wait if self.pin and ttl is None and wait < KERNEL_SYN_RTO \
            else 0.0
        if self.kernel_isn and ttl is not None:
            # the priming SYN has left: the socket goes on at full TTL, so that a
            # peer's SYN landing on it is answered by a SYN-ACK that gets through
            return [SetTtl(handle, self.full_ttl)]
        return []

    def resume(self, step: str, index: int, now: float) -> list[Action]:
        if step == "swap-listener":
            return self._swap_listener()
        cand = self.candidates[index]
        if step == "timer":
            return self._timer(cand)
        if step == "busy":
            actions: list[Action] = []
            if not cand.up and cand.busy % RENEW_AFTER == 0 and \
                    self.renewed < MAX_RENEWALS:
                actions += self._renew_listener()
            return actions + [Resume("busy-wait", index)]
        if step == "busy-wait":
            cand.next_connect = now + retry_delay(cand.busy)
            if self.kernel_isn:
                # the listener answered the peer's SYN on this 4-tuple: no primes
                # until the connection is accepted or the next look
                cand.prime_at = cand.next_connect
            return []
        raise ValueError(f"unknown step {step!r}")

    def on_syn_sent(self, handle: int, in_syn_sent: bool, now: float) -> list[Action]:
        cand = next(c for c in self.candidates if c.handle == handle)
        if self.kernel_isn and (not in_syn_sent or (KERNEL_RECEIVER_KEEPS and self.role is Role.RECEIVER)):
            # the peer's SYN reached the prime (a simultaneous open, at full TTL): no
            # full-TTL SYN of ours; its connect result comes as for any connect.
            # The receiver keeps its prime in any case (see KERNEL_RECEIVER_KEEPS)
            if in_syn_sent:
                cand.connects += 1
            cand.priming = False
            return []
        if not cand.priming:
            # the resend check of a full-TTL SYN (SYN_RESEND_FIRST): still unanswered, a
            # fresh socket with the same ISN sends it again (aborted, not closed, as
            # below); one the peer's SYN reached (SYN-RECEIVED) is left alone
            if not in_syn_sent:
                return []
            cand.handle = None
            cand.resends += 1
            actions = [Abort(handle)] + self.connect(cand, now)
            cand.connects -= 1          # the same round, not a new connect attempt
            return actions
        if not in_syn_sent:
            return self._go_full_ttl(cand, now)
        # a fresh socket with the same ISN sends the full-TTL SYN at once (only
        # from SYN-SENT: a socket the peer's SYN already reached is SYN-RECEIVED
        # and closing it would send a FIN and hold the 4-tuple). Aborted, not
        # closed: should the peer's SYN land between the check and the close, a
        # FIN (at the prime's TTL, never answered) would hold the 4-tuple for
        # minutes and every later connect fail with EADDRNOTAVAIL
        cand.handle = None
        return [Abort(handle)] + self.connect(cand, now)

    def on_syn_received(self, handle: int, in_syn_received: bool,
                        now: float) -> list[Action]:
        """The state of a full-TTL socket (see :data:`SYN_RECV_STALL`)."""
        cand = next(c for c in self.candidates if c.handle == handle)
        if not in_syn_received:
            cand.syn_recv_since = None
            return []
        if cand.syn_recv_since is None:
            cand.syn_recv_since = now
        if now - cand.syn_recv_since < SYN_RECV_STALL:
            return []
        # aborted with a RST: our NAT's entry goes to CLOSE, from which our next SYN
        # opens it afresh (and the peer's NAT lets the peer's SYNs through again)
        cand.note(f"stuck in SYN-RECEIVED for {SYN_RECV_STALL:g}s")
        cand.handle = None
        return [Abort(handle)] + self._next_round(cand, now)

    def on_connect_result(self, handle: int, err: int, now: float) -> list[Action]:
        """The connecting socket ``handle`` became writable; ``err`` is its SO_ERROR."""
        cand = next(c for c in self.candidates if c.handle == handle)
        if err == 0:
            actions: list[Action] = []
            if cand.priming:
                actions.append(SetTtl(handle, self.full_ttl))
            cand.handle = None
            return actions + self._established(handle, cand.address, "connect", now, cand)
        actions = [Close(handle)]
        cand.handle = None
        if cand.priming:
            # expected: ICMP Time Exceeded for the low TTL (EHOSTUNREACH) kills it;
            # pinned ISNs: the full-TTL SYN follows at settle_at (the next connect
            # time); kernel ISNs: a new prime at once (an RST'd one: at prime_at), so
            # that the 4-tuple is never without a connecting socket for long
            cand.note(f"prime {_err_name(err)}")
            if self.kernel_isn and err not in _REFUSED:
                cand.prime_at = now
                return actions + self._kernel_prime(cand, now)
            return actions
        cand.note(_err_name(err))
        return actions + self._next_round(cand, now)

    def _next_round(self, cand: TcpCandidate, now: float) -> list[Action]:
        """After a failed full-TTL round: prime again at once, connect after the back-off."""
        cand.failures += 1
        wait = self._retry_wait(cand.failures)
        if cand.connects >= self.max_connects:
            return []               # no round left: no new prime either
        if self.prime_ttl and self.strategy == STRATEGY_SIMULTANEOUS:
            # our NAT saw the RST/ICMP: re-open the mapping at once, full SYN later
            return self._prime(cand, now, wait)
        cand.next_connect = now + wait
        return []

    def _established(self, handle: int, peer: Address, via: str, now: float,
                     cand: TcpCandidate | None = None) -> list[Action]:
        conn = TcpConn(handle, peer, via, cand, since=now)
        if cand is not None:
            cand.up = True
        self._greeting[handle] = conn
        return [StreamSend(handle, NOMINATE if self.role is Role.INITIATOR else READY)]

    def on_send_result(self, handle: int, error: str | None, now: float) -> list[Action]:
        """``error``: None when sent, else why not (strerror)."""
        if handle in self._greeting:
            conn = self._greeting.pop(handle)
            if error is not None:
                return self._drop(conn, error, now, listed=False)
            self.conns.append(conn)
            return []
        conn = self._acking.pop(handle)
        if error is not None:
            return self._drop(conn, error, now) + self._ack_next(now)
        self._confirming[handle] = conn
        return [CheckUnacked(handle)]

    def on_unacked(self, handle: int, count: int, now: float) -> list[Action]:
        """Receiver: ``count`` bytes of the nominated connection not yet acknowledged
        (see :data:`CONFIRM_POLL`); none left: it wins."""
        if handle not in self._confirming:
            return []
        if count == 0:
            del self._confirming[handle]
            self.winner = handle
        else:
            self._wake = min(self._wake, now + CONFIRM_POLL)
        return []

    def on_readable(self, handle: int, now: float) -> list[Action]:
        conn = self._conn(handle)
        return [StreamRecv(handle, len(self._expect()) - len(conn.buf))]

    def _expect(self) -> bytes:
        return READY + NOMINATE_ACK if self.role is Role.INITIATOR else NOMINATE

    def _conn(self, handle: int) -> TcpConn:
        return next(c for c in self.conns if c.handle == handle)

    def on_data(self, handle: int, data: bytes, why: str, now: float) -> list[Action]:
        """``data`` received on ``handle``; empty: ended, ``why`` says how."""
        conn = self._conn(handle)
        expect = self._expect()
        if not data:
            return self._drop(conn, why, now)
        conn.buf += data
        if not expect.startswith(conn.buf):
            return self._drop(conn, "unexpected bytes (not a stunturn-diag peer)", now)
        if conn.buf != expect:
            return []
        if self.role is Role.RECEIVER:
            if self._acking or self._confirming:
                # one NOMINATE_ACK at a time: the initiator wins on the connection that
                # carries it, so both sides keep the same one (with two acknowledged at
                # once each side could keep another and abort the peer's: seen in the
                # lab with several predicted pairs up at once, both ending
                # auth-connection-lost)
                conn.held = True
                return []
            self._acking[handle] = conn
            return [StreamSend(handle, NOMINATE_ACK)]
        self.winner = handle
        return []

    def _ack_next(self, now: float) -> list[Action]:
        """Receiver: the connection being acknowledged failed; acknowledge a held one."""
        if self._acking or self._confirming or self.winner is not None:
            return []
        held = next((c for c in self.conns if c.held), None)
        if held is None:
            return []
        held.held, held.since = False, now     # its own NOMINATION_WAIT from now
        self._acking[held.handle] = held
        return [StreamSend(held.handle, NOMINATE_ACK)]

    def _drop(self, conn: TcpConn, why: str, now: float, listed: bool = True,
              abort: bool = False) -> list[Action]:
        self.conn_errors.append(f"{conn.peer[0]}:{conn.peer[1]} ({conn.via}) {why}")
        # aborted: no FIN_WAIT orphan on the candidate's 4-tuple
        actions: list[Action] = [Abort(conn.handle) if abort else Close(conn.handle)]
        if listed:
            self.conns.remove(conn)
        if conn.cand is not None:
            # that 4-tuple is free again: punch it anew
            conn.cand.up = False
            conn.cand.next_connect = now + RETRY_INTERVAL
        return actions

    def on_accepted(self, handle: int, peer: Address, now: float) -> list[Action]:
        """A connection taken from the listener's queue (``handle`` from allocate)."""
        self.accepted += 1
        if len(self.conns) >= MAX_PENDING:
            return [Close(handle)]
        peer = (peer[0], peer[1])
        cand = next((c for c in self.candidates if c.address == peer and not c.up), None)
        if cand is not None and cand.handle is not None:
            cand = None     # a connecting socket of ours holds another 4-tuple? keep both
        # a candidate's own 4-tuple is now in use: no more connects toward it
        return self._established(handle, peer, "accept", now, cand)

    def on_accept_failed(self, why: str) -> list[Action]:
        self.conn_errors.append(f"accept failed: {why}")
        return []

    def _renew_listener(self) -> list[Action]:
        """Replace the listener by a new one on the same port (see :data:`RENEW_AFTER`)."""
        self._new_listener = self.allocate()
        return [OpenListener(self._new_listener)]

    def on_listener_opened(self, handle: int, error: str | None) -> list[Action]:
        assert handle == self._new_listener
        if error is not None:
            self._new_listener = None
            self.conn_errors.append(f"listener renewal failed: {error}")
            return []
        actions: list[Action] = []
        if self.strategy != STRATEGY_LISTEN:
            actions.append(FilterListener(handle, self._sources()))
        # what the old one has queued, first; then the new one takes over
        return actions + [Listen(handle), DrainAccepts(self.listener),
                          Resume("swap-listener", 0)]

    def on_filtered(self, ok: bool) -> list[Action]:
        self.filtered = ok
        return []

    def _swap_listener(self) -> list[Action]:
        """The new listener takes over; the old one is closed (the caller closing its
        own again is harmless)."""
        assert self._new_listener is not None
        old, self.listener = self.listener, self._new_listener
        self._new_listener = None
        self.renewed += 1
        return [Close(old)]

    # -- the end ---------------------------------------------------------------

    def leftover(self) -> list[int]:
        """Handles to close when the run ends (all but the winner and the caller's
        listener)."""
        out = [self.listener] if self.renewed else []
        if self._new_listener is not None:      # a renewal cut short by an error
            out.append(self._new_listener)
            self._new_listener = None
        for cand in self.candidates:
            if cand.handle is not None:
                out.append(cand.handle)
                cand.handle = None
        for conn in self.conns:
            if conn.handle != self.winner:
                out.append(conn.handle)
        self.conns = []
        return out

    def attempts(self) -> list[dict]:
        out = []
        for cand in self.candidates:
            errs = ", ".join(f"{k} x{v}" for k, v in sorted(cand.errors.items())) or "no answer"
            out.append({"candidate": f"{cand.address[0]}:{cand.address[1]}",
                        "strategy": self.label, "error": errs, "connects": cand.connects})
        for text in self.conn_errors:
            out.append({"candidate": text.split(" ", 1)[0], "strategy": self.label,
                        "error": text})
        return out

    def _causes(self) -> set[str]:
        """Per-candidate cause of failure: refused, timeout (no answer) or unreachable."""
        causes = set()
        for cand in self.candidates:
            seen = {k.split(" ")[-1] for k in cand.errors if not k.startswith("prime")}
            if seen & {_err_name(e) for e in _REFUSED}:
                causes.add("refused")
            elif cand.handle is not None or not seen & {_err_name(e) for e in _UNREACHABLE}:
                causes.add("timeout")  # a SYN still waiting, or nothing came back
            else:
                causes.add("unreachable")
        return causes

    def failure(self) -> PunchError:
        causes = self._causes()
        targets = ", ".join(f"{c.address[0]}:{c.address[1]}" for c in self.candidates)
        if self.conn_errors:
            reason = "nomination-failed"
            cause = ("a connection came up but the nomination exchange did not complete "
                     "(" + "; ".join(self.conn_errors[:3]) + ")")
        elif "refused" in causes:
            reason = "refused"
            cause = ("the full-TTL SYNs were answered by RST: the peer's NAT had no mapping "
                     "toward our address (its mapping is port-dependent, its filter admits "
                     "only the port it sent to, or the peer did not punch in time)")
        elif "timeout" in causes or not causes:
            reason = "timeout"
            cause = ("no SYN or SYN-ACK got through before the deadline: unsolicited SYNs "
                     "are dropped and the two mappings never met (a symmetric NAT, or the "
                     "peer did not punch)")
        else:
            reason = "unreachable"
            cause = "every peer address is unreachable (ICMP network/host unreachable)"
        return PunchError(f"TCP punch to {targets} failed: {cause}",
                          hint="check both NATs with `stunturn-diag probe`; a relay (TURN) "
                          "is needed when a side has a port-dependent mapping",
                          reason=reason, attempts=self.attempts())
