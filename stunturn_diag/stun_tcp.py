"""One STUN transaction over a connected TCP socket (RFC 8489 section 6.2.2; I/O helper).

Over TCP a STUN message is framed by its own header: 20 bytes, whose length field
gives the rest (RFC 8489 sections 5 and 6.2.2). There are no retransmissions: one
request, one response, bounded by the caller's deadline. The one STUN-over-TCP module,
shared by the probe (:mod:`stunturn_diag.probe.tcp_sockets`) and hole punching
(:mod:`stunturn_diag.punch.tcp_stun`).

Stable API::

    binding_transaction(sock, dest, timeout, *, connect=True, software=None,
                        fingerprint=False, clock=time.monotonic) -> StunMessage
    stun_tcp_transaction(sock, request_bytes, deadline, *, clock=time.monotonic) -> StunMessage
    recv_stun_message(sock, deadline, *, clock=time.monotonic) -> bytes

``deadline`` is an absolute time on ``clock`` (``time.monotonic`` by default). The
socket must already be connected; it is left connected, in blocking mode with a timeout
(callers that need non-blocking mode set it back). Errors are the plain ones, for each
caller to word in its own terms:

- ``TimeoutError`` (``socket.timeout``): no complete answer before the deadline;
- ``ConnectionError``: the server closed the connection (or reset it);
- ``OSError``: any other socket error;
- :class:`~stunturn_diag.errors.StunDecodeError`: the bytes are not a STUN message,
  or they answer another transaction (the caller's request is the only one in flight).

The response may be a success or an error response; the caller inspects
``mapped_address`` / ``error``.
"""

from __future__ import annotations

import socket
import time
from typing import Callable

from .errors import StunDecodeError
from .netio import recv_exact
from stunturn_diag.sansio.stun import HEADER_LENGTH, StunMessage, decode, encode, message_length
from stunturn_diag.stun_requests import fresh_binding_request

__all__ = ["binding_transaction", "stun_tcp_transaction", "recv_stun_message"]


def recv_stun_message(sock: socket.socket, deadline: float, *,
                      clock: Callable[[], float] = time.monotonic) -> bytes:
    """Read exactly one framed STUN message (header, then the length it announces)."""
    header = recv_exact(sock, HEADER_LENGTH, deadline, what="STUN over TCP", clock=clock)
    total = message_length(header)  # StunDecodeError when these bytes cannot start STUN
    return header + recv_exact(sock, total - HEADER_LENGTH, deadline, what="STUN over TCP",
                               clock=clock)


def stun_tcp_transaction(sock: socket.socket, request_bytes: bytes, deadline: float, *,
                         clock: Callable[[], float] = time.monotonic) -> StunMessage:
    """Send ``request_bytes`` (an encoded STUN request) on the connected ``sock`` and return
    the decoded response to that transaction (matched by transaction ID, RFC 8489 6.3)."""
    if len(request_bytes) < HEADER_LENGTH:
        raise ValueError("request_bytes is not an encoded STUN message")
    left = deadline - clock()
    if left <= 0:
        raise TimeoutError("STUN over TCP: no time left to send the request")
    sock.settimeout(left)
    sock.sendall(request_bytes)
    response = decode(recv_stun_message(sock, deadline, clock=clock))
    # 12-byte ID after the magic cookie (RFC 8489 5); 16 bytes for classic RFC 3489
    tid = request_bytes[8:20] if not response.classic else request_bytes[4:20]
    if response.transaction_id != tid:
        raise StunDecodeError("STUN over TCP: the answer is for another transaction")
    return response


def binding_transaction(sock: socket.socket, dest: tuple[str, int], timeout: float, *,
                        connect: bool = True, software: str | None = None, fingerprint: bool = False,
                        clock: Callable[[], float] = time.monotonic) -> StunMessage:
    """Connect ``sock`` to ``dest`` (``connect=False``: it already is) and run one Binding
    transaction (RFC 8489 section 7.3), connect included, within ``timeout`` seconds. Returns
    the response, success or error; raises the errors listed in the module docstring."""
    deadline = clock() + timeout
    sock.settimeout(timeout)
    if connect:
        sock.connect(dest)
    request = encode(fresh_binding_request(software=software), fingerprint=fingerprint)
    return stun_tcp_transaction(sock, request, deadline, clock=clock)
