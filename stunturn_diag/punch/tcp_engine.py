"""The TCP punch loop: per-candidate prime/connect attempts, listener, nomination.

One ``select`` loop drives every socket; the sequence and its reasons are in the
docstring of :mod:`stunturn_diag.punch.tcp`. Every retry is bounded by
:data:`MAX_CONNECTS` per candidate and by the caller's deadline.
"""

from __future__ import annotations

import errno
import secrets
import select
import socket
import struct
import time
from dataclasses import dataclass, field

from ..errors import PunchError
from .tcp_sockets import (TCP_SYN_SENT, attach_blackhole, can_pin_isn, get_ttl, set_ttl,
                          shared_port_socket, tcp_state)

Address = tuple[str, int]

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
#: kernel ISNs: the receiver's zig-zag step between rounds (see PunchLoop._retry_wait)
KERNEL_STEP = 0.0025
#: full-TTL connect attempts per candidate (each after a fresh priming SYN)
MAX_CONNECTS = 40
#: the initiator nominates one connection (RFC 8445 section 8 style: the controlling
#: side picks), the receiver confirms; both return exactly that connection. The
#: receiver also sends READY as soon as a connection is up: after a simultaneous
#: open whose final ACK was lost past the peer's NAT, that NAT's conntrack is
#: ESTABLISHED and marks the peer's retransmitted SYN-ACK INVALID (untranslated);
#: a data segment is what moves the stuck SYN-RECEIVED end to ESTABLISHED.
NOMINATE = b"STDTCPN1"
READY = b"STDTCPR1"
NOMINATE_ACK = b"STDTCPA1"
#: most connections waiting for the nomination exchange (accepted strangers beyond
#: this are closed at once)
MAX_PENDING = 32
#: an accepted connection whose nomination exchange has not completed after this long
#: is aborted and its candidate punched anew: seen unprivileged (kernel ISNs, no listener
#: filter) in the lab, the listener's connection from a candidate came up while nothing
#: crossed it, and holding it blocked that candidate until the deadline
NOMINATION_WAIT = 2.0
#: a candidate's 4-tuple still taken after this many EADDRNOTAVAIL (and nothing to
#: accept): the listener's half-open connection whose SYN-ACK never gets through (a new
#: ISN, INVALID at our NAT; unprivileged the listener cannot be filtered) holds it for
#: the kernel's SYN-ACK retries (a minute). A new listener on the port replaces the old
#: one; the kernel drops a request whose listener is gone at its next timer or segment.
RENEW_AFTER = 3
MAX_RENEWALS = 3
#: the longest single select() wait (the loop also wakes on every event)
_TICK = 0.05

STRATEGY_SIMULTANEOUS = "simultaneous-open"
STRATEGY_LISTEN = "listen-connect"

_REFUSED = {errno.ECONNREFUSED, errno.ECONNRESET}
_UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EACCES, errno.EPERM}


@dataclass
class _Candidate:
    """Punching state toward one peer address."""

    address: Address
    sock: socket.socket | None = None
    priming: bool = False          # ``sock`` sent the low-TTL SYN
    isn: int | None = None         # pinned ISN of this round (prime and connect share it)
    settle_at: float = 0.0         # when the full-TTL SYN follows the prime
    next_connect: float = 0.0      # when to open the next full-TTL socket
    connects: int = 0
    failures: int = 0              # refused/unreachable full-TTL rounds (retry back-off)
    busy: int = 0                  # connects refused locally: the 4-tuple was in use
    passive: bool = False          # listen-connect receiver: never connects
    up: bool = False               # its connection is established (4-tuple in use)
    errors: dict[str, int] = field(default_factory=dict)

    def note(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


@dataclass
class _Conn:
    """An established connection waiting for the nomination exchange."""

    sock: socket.socket
    peer: Address
    via: str                        # "connect" | "accept"
    cand: _Candidate | None = None  # the candidate it was connected to
    buf: bytes = b""
    since: float = 0.0              # when it came up (monotonic)


def retry_delay(failures: int) -> float:
    """Seconds before the next round after ``failures`` refused/unreachable rounds:
    RETRY_FIRST for three rounds, then doubling every three, at most RETRY_INTERVAL."""
    return min(RETRY_INTERVAL, RETRY_FIRST * 2 ** (max(0, failures - 1) // 3))


def _zigzag(n: int) -> int:
    """0, +1, -1, +2, -2, ... for n = 0, 1, 2, 3, 4, ..."""
    return (n + 1) // 2 * (1 if n % 2 else -1)


def _abort(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: no FIN and no orphan holding the 4-tuple (a socket in
    SYN-SENT goes silently, one that just turned SYN-RECEIVED with a RST)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def _err_name(code: int) -> str:
    return errno.errorcode.get(code, str(code))


class PunchLoop:
    """One punch run; ``run()`` returns the nominated socket or raises PunchError."""

    def __init__(self, local: Address, listener: socket.socket, candidates: list[Address], *,
                 role: str, deadline: float, prime_ttl: int | None, strategy: str,
                 label: str | None = None, max_connects: int = MAX_CONNECTS) -> None:
        self.local = local
        self.listener = listener
        self.candidates = [_Candidate(c) for c in candidates]
        self.role = role
        self.deadline = deadline
        self.prime_ttl = prime_ttl
        self.strategy = strategy
        #: the caller's strategy name, reported in ``attempts``
        self.label = label or strategy
        #: full-TTL connects per candidate (1: one round each, no retry; the lab's control)
        self.max_connects = max(1, min(int(max_connects), MAX_CONNECTS))
        self.conns: list[_Conn] = []
        self.conn_errors: list[str] = []
        self.accepted = 0
        #: listeners this loop opened to replace the caller's (closed at the end)
        self.renewed = 0
        self.full_ttl = 64
        self.filtered = False
        #: pin ISNs with TCP_REPAIR (needs CAP_NET_ADMIN); else kernel ISNs
        self.pin = bool(prime_ttl) and strategy == STRATEGY_SIMULTANEOUS and can_pin_isn()

    # -- socket actions ------------------------------------------------------

    def _open(self, cand: _Candidate, ttl: int | None) -> None:
        try:
            sock = shared_port_socket(*self.local, isn=cand.isn)
        except OSError as exc:
            cand.note(f"socket {_err_name(exc.errno or 0)}")
            cand.next_connect = time.monotonic() + RETRY_INTERVAL
            return
        self.full_ttl = get_ttl(sock)
        if ttl is not None:
            set_ttl(sock, ttl)
        rc = sock.connect_ex(cand.address)
        if rc == errno.EADDRNOTAVAIL:
            # the 4-tuple is taken by another socket on our port: the listener's
            # connection from this very candidate (its SYN found no connecting socket
            # of ours), established or about to be. Take it if it is queued; else
            # look again soon (no SYN left: not a connect attempt)
            sock.close()
            cand.note(f"connect {_err_name(rc)}")
            if ttl is None:
                cand.connects -= 1
            cand.busy += 1
            self._accept()
            if not cand.up and cand.busy % RENEW_AFTER == 0 and \
                    self.renewed < MAX_RENEWALS:
                self._renew_listener()
            cand.next_connect = time.monotonic() + retry_delay(cand.busy)
            return
        if rc not in (0, errno.EINPROGRESS):
            sock.close()
            cand.note(f"connect {_err_name(rc)}")
            cand.next_connect = time.monotonic() + RETRY_INTERVAL
            return
        cand.sock, cand.priming = sock, ttl is not None

    def _prime(self, cand: _Candidate, now: float, settle: float) -> None:
        """Low-TTL SYN: opens our mapping, dies before the peer's NAT (no RST there)."""
        cand.isn = secrets.randbits(32) | 1 if self.pin else None
        cand.settle_at = cand.next_connect = now + settle
        self._open(cand, self.prime_ttl)

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
        if self.role == "receiver":
            step = SETTLE if self.pin else KERNEL_STEP
            wait += step * (_zigzag(failures) - _zigzag(failures - 1))
        return max(0.001, wait)

    def _connect(self, cand: _Candidate) -> None:
        cand.connects += 1
        self._open(cand, None)

    def _start(self, now: float) -> None:
        if self.strategy == STRATEGY_LISTEN:
            self.listener.listen(16)
            for cand in self.candidates:
                cand.next_connect = now
                cand.passive = self.role == "receiver"  # the receiver only listens
            return
        # a SYN from a candidate that finds none of our connecting sockets is dropped
        # silently instead of answered (see attach_blackhole); filter before listen()
        #: False where the kernel refuses socket filters (some need CAP_NET_ADMIN):
        #: the listener then answers candidates too (see module docstring of tcp)
        self.filtered = attach_blackhole(self.listener, [c.address for c in self.candidates])
        self.listener.listen(16)
        for cand in self.candidates:
            if self.prime_ttl:
                self._prime(cand, now, SETTLE)
            else:
                cand.next_connect = now

    def _settle(self, cand: _Candidate) -> None:
        """The prime's socket is still alive at settle time (no ICMP came back)."""
        assert cand.sock is not None
        if self.pin and tcp_state(cand.sock) == TCP_SYN_SENT:
            # a fresh socket with the same ISN sends the full-TTL SYN at once (only
            # from SYN-SENT: a socket the peer's SYN already reached is SYN-RECEIVED
            # and closing it would send a FIN and hold the 4-tuple). Aborted, not
            # closed: should the peer's SYN land between the check and the close, a
            # FIN (at the prime's TTL, never answered) would hold the 4-tuple for
            # minutes and every later connect fail with EADDRNOTAVAIL
            _abort(cand.sock)
            cand.sock = None
            self._connect(cand)
        else:
            # the same socket goes on at full TTL; the kernel retransmits its SYN
            # (or its SYN-ACK, after a simultaneous open already began)
            set_ttl(cand.sock, self.full_ttl)
            cand.priming = False

    def _on_connect_result(self, cand: _Candidate, now: float) -> None:
        sock = cand.sock
        assert sock is not None
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err == 0:
            if cand.priming:
                set_ttl(sock, self.full_ttl)
            cand.sock = None
            self._established(sock, cand.address, "connect", cand)
            return
        sock.close()
        cand.sock = None
        if cand.priming:
            # expected: ICMP Time Exceeded for the low TTL (EHOSTUNREACH) kills it;
            # pinned ISNs: the full-TTL SYN follows at settle_at (the next connect time)
            cand.note(f"prime {_err_name(err)}")
            if not self.pin and err not in _REFUSED:
                # kernel ISNs: the next one must follow at once to stay in the
                # window conntrack recorded for the prime (see module docstring);
                # a refused prime (RST) waits for the round's settle time instead
                cand.next_connect = now
            return
        cand.note(_err_name(err))
        cand.failures += 1
        wait = self._retry_wait(cand.failures)
        if cand.connects >= self.max_connects:
            return          # no round left: no new prime either
        if self.prime_ttl and self.strategy == STRATEGY_SIMULTANEOUS:
            # our NAT saw the RST/ICMP: re-open the mapping at once, full SYN later
            self._prime(cand, now, wait)
        else:
            cand.next_connect = now + wait

    def _established(self, sock: socket.socket, peer: Address, via: str,
                     cand: _Candidate | None = None) -> None:
        conn = _Conn(sock, peer, via, cand, since=time.monotonic())
        if cand is not None:
            cand.up = True
        try:
            sock.send(NOMINATE if self.role == "initiator" else READY)
        except OSError as exc:
            self._drop(conn, exc.strerror or str(exc), listed=False)
            return
        self.conns.append(conn)

    def _on_readable(self, conn: _Conn) -> socket.socket | None:
        expect = READY + NOMINATE_ACK if self.role == "initiator" else NOMINATE
        try:
            data = conn.sock.recv(len(expect) - len(conn.buf))
        except BlockingIOError:
            return None
        except OSError as exc:
            data, why = b"", exc.strerror or str(exc)
        else:
            why = "closed by the peer"
        if not data:
            self._drop(conn, why)
            return None
        conn.buf += data
        if not expect.startswith(conn.buf):
            self._drop(conn, "unexpected bytes (not a stunturn-diag peer)")
            return None
        if conn.buf != expect:
            return None
        if self.role == "receiver":
            try:
                conn.sock.send(NOMINATE_ACK)
            except OSError as exc:
                self._drop(conn, exc.strerror or str(exc))
                return None
        return conn.sock

    def _drop(self, conn: _Conn, why: str, listed: bool = True, abort: bool = False) -> None:
        self.conn_errors.append(f"{conn.peer[0]}:{conn.peer[1]} ({conn.via}) {why}")
        if abort:
            _abort(conn.sock)      # no FIN_WAIT orphan on the candidate's 4-tuple
        else:
            conn.sock.close()
        if listed:
            self.conns.remove(conn)
        if conn.cand is not None:
            # that 4-tuple is free again: punch it anew
            conn.cand.up = False
            conn.cand.next_connect = time.monotonic() + RETRY_INTERVAL

    # -- the loop ------------------------------------------------------------

    def run(self) -> socket.socket:
        winner: socket.socket | None = None
        try:
            self._start(time.monotonic())
            while winner is None:
                now = time.monotonic()
                if now >= self.deadline:
                    raise self._failure()
                wake = self.deadline
                for cand in self.candidates:
                    if cand.sock is None and not cand.passive and not cand.up and \
                            cand.connects < self.max_connects:
                        if cand.next_connect <= now:
                            self._connect(cand)
                        else:
                            wake = min(wake, cand.next_connect)
                    elif cand.sock is not None and cand.priming:
                        if cand.settle_at <= now:
                            self._settle(cand)
                        else:
                            wake = min(wake, cand.settle_at)
                for conn in list(self.conns):
                    if conn.via == "accept" and conn.cand is not None and \
                            now - conn.since >= NOMINATION_WAIT:
                        self._drop(conn, f"no nomination within {NOMINATION_WAIT:g}s",
                                   abort=True)
                    elif conn.via == "accept" and conn.cand is not None:
                        wake = min(wake, conn.since + NOMINATION_WAIT)
                writers = [c.sock for c in self.candidates if c.sock is not None]
                readers = [self.listener] + [c.sock for c in self.conns]
                timeout = max(0.0, min(wake - now, _TICK))
                readable, writable, _ = select.select(readers, writers, [], timeout)
                now = time.monotonic()
                for cand in self.candidates:
                    if cand.sock is not None and cand.sock in writable:
                        self._on_connect_result(cand, now)
                if self.listener in readable:
                    self._accept()
                for conn in list(self.conns):
                    if conn.sock in readable:
                        winner = self._on_readable(conn)
                        if winner is not None:
                            break
        finally:
            self._cleanup(keep=winner)
        winner.setblocking(True)
        return winner

    def _accept(self) -> None:
        for _ in range(16):  # bounded drain of the accept queue
            try:
                sock, peer = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.conn_errors.append(f"accept failed: {exc.strerror}")
                return
            self.accepted += 1
            if len(self.conns) >= MAX_PENDING:
                sock.close()
                continue
            sock.setblocking(False)
            peer = (peer[0], peer[1])
            cand = next((c for c in self.candidates if c.address == peer and not c.up), None)
            if cand is not None and cand.sock is not None:
                cand = None     # a connecting socket of ours holds another 4-tuple? keep both
            # a candidate's own 4-tuple is now in use: no more connects toward it
            self._established(sock, peer, "accept", cand)

    def _renew_listener(self) -> None:
        """Replace the listener by a new one on the same port (see :data:`RENEW_AFTER`)."""
        try:
            new = shared_port_socket(*self.local)
        except OSError as exc:
            self.conn_errors.append(f"listener renewal failed: {exc.strerror}")
            return
        if self.strategy != STRATEGY_LISTEN:
            self.filtered = attach_blackhole(new, [c.address for c in self.candidates])
        new.listen(16)
        self._accept()                     # what the old one has queued, first
        old, self.listener = self.listener, new
        old.close()                        # (the caller closing its own again is harmless)
        self.renewed += 1

    def _cleanup(self, keep: socket.socket | None) -> None:
        if self.renewed:
            self.listener.close()
        for cand in self.candidates:
            if cand.sock is not None:
                cand.sock.close()
                cand.sock = None
        for conn in self.conns:
            if conn.sock is not keep:
                conn.sock.close()
        self.conns = []

    # -- failure report ------------------------------------------------------

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
            elif cand.sock is not None or not seen & {_err_name(e) for e in _UNREACHABLE}:
                causes.add("timeout")  # a SYN still waiting, or nothing came back
            else:
                causes.add("unreachable")
        return causes

    def _failure(self) -> PunchError:
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
