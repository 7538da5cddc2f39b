"""Socket driver of the TCP handshake: the pure
:class:`stunturn_diag.sansio.punch.handshake.Handshake` over a connected stream.

:func:`authenticate_stream` runs the handshake over the socket the TCP runner
connected (after the punch, without touching its mechanics) and returns a
:class:`stunturn_diag.punch.secure_stream.SecureStream`. This module holds the
socket, the clock and the random source (``os.urandom``) the handshake needs.
"""

from __future__ import annotations

import os
import socket
import time

from ..errors import AuthenticationError, PunchError
from ..netio import PeerClosed, recv_exact
from stunturn_diag.sansio.punch.handshake import HELLO_LEN, PROOF_LEN, Handshake
from stunturn_diag.sansio.punch.wire import (HEADER, VERSION, Role, has_magic,
                                             version_mismatch_message)
from .secure_stream import SecureStream


def _connection_lost(exc: OSError) -> PunchError:
    return PunchError(f"connection failed during authentication: {exc}",
                      reason="auth-connection-lost")


def _recv_exact(sock: socket.socket, n: int, deadline: float, clock) -> bytes:
    try:
        return recv_exact(sock, n, deadline, what="authentication", clock=clock)
    except TimeoutError:
        raise PunchError("authentication timed out: the peer did not answer the handshake",
                         hint="check that both sides use the same access key and server",
                         reason="auth-timeout") from None
    except PeerClosed:
        raise PunchError("the peer closed the connection during authentication",
                         hint="the peer may use a different access key or an older version",
                         reason="auth-connection-lost") from None
    except OSError as exc:
        raise _connection_lost(exc) from None


def _send_all(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError as exc:
        raise _connection_lost(exc) from None


def _read_message(sock, hs: Handshake, length: int, deadline: float, clock) -> bytes:
    """Header first: a peer of another version is named before its message is read."""
    head = _recv_exact(sock, HEADER.size, deadline, clock)
    if has_magic(head) and head[4] != VERSION:
        hs.handle(head)     # counted as old_version
        raise AuthenticationError(version_mismatch_message(head[4]),
                                  hint="the handshake changed in version 2 (PAKE, encryption) and 3 (CPace)",
                                  reason="version-mismatch")
    return head + _recv_exact(sock, length - HEADER.size, deadline, clock)


def authenticate_stream(sock: socket.socket, key: str | bytes, match_id: str,
                        role: Role | str, deadline: float, *, clock=time.monotonic,
                        handshake: Handshake | None = None) -> SecureStream:
    """Run the handshake over a connected stream socket; return the private stream.

    Each side sends HELLO, reads the peer's HELLO, sends PROOF, reads the peer's
    PROOF (no deadlock: both write before they read). ``deadline`` is on ``clock``.
    Raises :class:`AuthenticationError` (reason ``auth-failed`` or
    ``version-mismatch``) if the peer does not prove the key, :class:`PunchError`
    (``auth-timeout`` / ``auth-connection-lost``) on I/O trouble. The socket's
    timeout is restored.
    """
    hs = handshake or Handshake(key, match_id, role, entropy=os.urandom)
    old_timeout = sock.gettimeout()
    try:
        _send_all(sock, hs.hello())
        out = hs.handle(_read_message(sock, hs, HELLO_LEN, deadline, clock))
        if not out.accepted or out.reply is None:
            raise AuthenticationError(f"the peer's hello was not usable ({out.why})",
                                      hint="both sides must run this version",
                                      reason="auth-failed")
        _send_all(sock, out.reply)
        out = hs.handle(_read_message(sock, hs, PROOF_LEN, deadline, clock))
        if not out.accepted or not hs.complete:
            raise AuthenticationError(
                f"the peer's key confirmation did not verify ({out.why})",
                hint="both sides must use the same access key", reason="auth-failed")
    finally:
        try:
            sock.settimeout(old_timeout)
        except OSError:
            pass
    send_key, recv_key = hs.traffic_keys()
    return SecureStream(sock, send_key, recv_key)
