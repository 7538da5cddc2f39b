"""Small blocking-socket helpers shared by the TCP runners (STUN over TCP, the punch handshake)."""

from __future__ import annotations

import socket
import time
from typing import Callable


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
