"""Small blocking-socket helpers shared by the TCP runners (STUN over TCP, the punch
handshake, the probe's connects, the signaling client's connections)."""

from __future__ import annotations

import errno
import os
import select
import socket
import time
from typing import Callable

from stunturn_diag.sansio.synwait import syn_waits


class PeerClosed(ConnectionError):
    """The peer closed the stream before the expected bytes arrived."""


def recv_exact(sock: socket.socket, n: int, deadline: float, *, what: str,
               clock: Callable[[], float] = time.monotonic) -> bytes:
    """Read exactly ``n`` bytes from ``sock`` before ``deadline`` (a ``clock`` time).

    Raises ``TimeoutError`` when the deadline passes, :class:`PeerClosed` when the peer
    closes the stream first; any other socket error (a reset...) propagates as the
    ``OSError`` it is. ``what`` starts the messages (e.g. ``"STUN over TCP"``).
    """
    buf = b""
    while len(buf) < n:
        left = deadline - clock()
        if left <= 0:
            raise TimeoutError(f"{what}: no complete answer in time")
        sock.settimeout(left)
        try:
            chunk = sock.recv(n - len(buf))
        except socket.timeout:
            continue  # the loop re-checks the deadline and raises the worded TimeoutError
        if not chunk:
            raise PeerClosed(f"{what}: the peer closed the connection")
        buf += chunk
    return buf


SO_REUSEPORT = getattr(socket, "SO_REUSEPORT", 15)
#: Linux >= 6.15: the connection's minimum retransmission timeout, in microseconds
#: (the kernel's default is 200 ms; RFC 6298 section 2.4 leaves the floor to the stack)
TCP_RTO_MIN_US = 45


def lower_rto_min(s: socket.socket, rto: float) -> None:
    """Let the kernel resend data on ``s`` after ``rto`` (or the RTT-based RTO when longer)
    rather than its 200 ms floor, where the kernel has ``TCP_RTO_MIN_US``; elsewhere nothing
    changes. For short exchanges (one STUN message each way) on a lossy path."""
    try:
        s.setsockopt(socket.IPPROTO_TCP, TCP_RTO_MIN_US, int(rto * 1e6))
    except OSError:
        pass


def _connect_error(err: int, dest: tuple[str, int]) -> OSError:
    return OSError(err, f"connect to {dest[0]}:{dest[1]}: {os.strerror(err)}")


def connect_resending(local: tuple[str, int], dest: tuple[str, int], timeout: float, rto: float | None, *,
                      reuse_port: bool = False, fresh_port_after: int | None = None) -> tuple[socket.socket, int]:
    """A TCP connection from ``local`` (SO_REUSEADDR, and SO_REUSEPORT with ``reuse_port``;
    port 0: the kernel picks one, kept for the resends) to ``dest`` within ``timeout``, and
    how many SYNs were resent.

    The kernel resends a lost SYN only after 1 s, then 3 s (RFC 6298 section 2.1's initial
    RTO, which no socket option lowers); on a lossy path that second dominated the
    probe's TCP tests. Here a SYN that got no answer within ``rto`` (then twice that, ...;
    :func:`syn_waits`) is abandoned (closing a socket in SYN-SENT sends nothing) and a new
    socket on the same local endpoint sends a fresh SYN on the same 5-tuple: the NAT's
    conntrack entry, hence its mapping, is the one the first SYN made, and the kernel's
    ISN for the same 4-tuple only grows, so the NAT takes it as a SYN retransmission
    (RFC 793 section 3.3's "larger than those recently used"). ``rto`` None: the kernel's
    schedule only.

    That covers a lost SYN; a lost SYN-ACK leaves the server a half-open connection for
    the first SYN, whose answer to our next SYN (its SYN-ACK again, or an ACK for the
    other ISN) our fresh socket refuses with a RST, and a stateful NAT on the way may
    drop that ACK. (No quick resend here as in
    :func:`stunturn_diag.sansio.synwait.same_tuple_waits`: the server's simultaneous-open
    connect uses this too, and a socket the caller's SYN reached, SYN-RECEIVED, would be
    closed by the next resend; with 25 ms waits the probe's lossy simultaneous-open
    verdict came out false once in CI.) A caller that may change its local port
    says so with ``fresh_port_after``: from that many SYNs on, the resends come from a new
    port (a new 4-tuple the server holds nothing for). Errors as ``socket.connect`` raises
    them; ``TimeoutError`` by the deadline. The socket is returned blocking, with
    ``timeout`` as its timeout."""
    waits = syn_waits(rto, timeout) if rto else [timeout]
    resends = 0
    for i, wait in enumerate(waits):
        if fresh_port_after is not None and i >= fresh_port_after:
            local = (local[0], 0)
        s = socket.socket(socket.AF_INET6 if ":" in dest[0] else socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                s.setsockopt(socket.SOL_SOCKET, SO_REUSEPORT, 1)
            s.bind(local)
        except OSError:
            s.close()
            raise
        local = s.getsockname()[:2]
        if rto:
            lower_rto_min(s, rto)
        s.setblocking(False)
        err = s.connect_ex(dest)
        if err not in (0, errno.EINPROGRESS):
            s.close()
            raise _connect_error(err, dest)
        _, ready, _ = select.select([], [s], [], wait) if err else ([], [s], [])
        if not ready:  # one last look: never abandon a SYN that was answered meanwhile
            _, ready, _ = select.select([], [s], [], 0)
        if ready:
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                s.close()
                raise _connect_error(err, dest)
            s.setblocking(True)
            s.settimeout(timeout)
            return s, resends
        s.close()
        resends += i < len(waits) - 1
    raise TimeoutError(f"connect to {dest[0]}:{dest[1]}: no answer to {len(waits)} SYNs in {timeout:.1f} s")


def connect_racing(dest: tuple[str, int], timeout: float, rto: float, *,
                   local_ip: str | None = None) -> tuple[socket.socket, int]:
    """A TCP connection to ``dest`` within ``timeout`` for a caller whose local port does not
    matter (the signaling client), and how many extra SYNs it took.

    Where :func:`connect_resending` abandons an unanswered SYN, this keeps it: after
    ``rto`` (then twice that, ...: :func:`syn_waits`) another connect starts from a
    fresh port beside it, and the first to connect wins (the others are closed). So a
    ``rto`` below the path's round trip costs one spare SYN, never the connection, and
    a lost SYN or SYN-ACK costs ``rto`` instead of the kernel's 1 s. A refusal (RST) is
    an answer: ``ConnectionRefusedError`` at once. ``TimeoutError`` by the deadline."""
    family = socket.AF_INET6 if ":" in dest[0] else socket.AF_INET
    local = (local_ip or ("::" if family == socket.AF_INET6 else "0.0.0.0"), 0)
    pending: list[socket.socket] = []
    last: OSError | None = None
    try:
        for i, wait in enumerate(syn_waits(rto, timeout)):
            s = socket.socket(family, socket.SOCK_STREAM)
            pending.append(s)
            s.bind(local)
            lower_rto_min(s, rto)
            s.setblocking(False)
            err = s.connect_ex(dest)
            if err not in (0, errno.EINPROGRESS):
                raise _connect_error(err, dest)
            end = time.monotonic() + wait
            while pending:
                _, ready, _ = select.select([], pending, [], max(0.0, end - time.monotonic()))
                for r in ready:
                    err = r.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if not err:
                        pending.remove(r)
                        r.setblocking(True)
                        r.settimeout(timeout)
                        return r, i
                    pending.remove(r)
                    r.close()
                    last = _connect_error(err, dest)
                    if err == errno.ECONNREFUSED:
                        raise last
                if not ready:
                    break  # this SYN's wait is over: the next one starts beside it
            if not pending and last is not None:
                raise last
        raise TimeoutError(f"connect to {dest[0]}:{dest[1]}: no answer in {timeout:.1f} s")
    finally:
        for s in pending:
            s.close()
