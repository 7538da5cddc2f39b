"""Socket driver for TCP: the PAKE handshake over a connected stream, then a private stream.

:func:`authenticate_stream` runs :class:`.auth.Handshake` over the socket the TCP
runner connected (after the punch, without touching its mechanics) and returns a
:class:`SecureStream`: a socket-like object whose every byte travels in
encrypted, authenticated records (:mod:`.seal`). The relay (``--forward``,
``--listen``, stdin/stdout) uses it like a socket: ``recv``, ``send``,
``sendall``, ``shutdown``, ``close``, ``fileno``.
"""

from __future__ import annotations

import io
import socket
import threading
import time

from ..errors import AuthenticationError, PunchError
from ..netio import PeerClosed, recv_exact
from stunturn_diag.sansio.punch.handshake import HELLO_LEN, PROOF_LEN, Handshake
from stunturn_diag.sansio.punch.seal import RecordReader, RecordSealer
from stunturn_diag.sansio.punch.wire import HEADER, VERSION, Kind, Role, has_magic, version_mismatch_message

RECV_CHUNK = 65536


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
                        handshake: Handshake | None = None) -> "SecureStream":
    """Run the handshake over a connected stream socket; return the private stream.

    Each side sends HELLO, reads the peer's HELLO, sends PROOF, reads the peer's
    PROOF (no deadlock: both write before they read). ``deadline`` is on ``clock``.
    Raises :class:`AuthenticationError` (reason ``auth-failed`` or
    ``version-mismatch``) if the peer does not prove the key, :class:`PunchError`
    (``auth-timeout`` / ``auth-connection-lost``) on I/O trouble. The socket's
    timeout is restored.
    """
    hs = handshake or Handshake(key, match_id, role)
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


class SecureStream:
    """A connected TCP socket whose bytes travel in AEAD records (socket-like).

    ``recv`` returns ``b""`` at the peer's authenticated end of data (FIN record);
    a connection that ends without one sets :attr:`truncated` (also ``b""``). A
    record that does not authenticate raises :class:`AuthenticationError` (reason
    ``record-failed``) and closes the connection. One reader and one writer thread
    may use it at the same time.
    """

    def __init__(self, sock: socket.socket, send_key: bytes, recv_key: bytes) -> None:
        self.sock = sock
        self._sealer = RecordSealer(send_key)
        self._reader = RecordReader(recv_key)
        self._send_lock = threading.Lock()
        self._plain = bytearray()
        self._eof = False
        self._fin_sent = False
        self.truncated = False
        self.bytes_sent = 0
        self.bytes_received = 0

    # -- sending -------------------------------------------------------------------
    def sendall(self, data: bytes) -> None:
        if not data:
            return
        with self._send_lock:
            if self._fin_sent:
                raise BrokenPipeError("send after shutdown(SHUT_WR)")
            self.sock.sendall(self._sealer.seal_data(bytes(data)))
            self.bytes_sent += len(data)

    def send(self, data: bytes) -> int:
        self.sendall(data)
        return len(data)

    def shutdown(self, how: int) -> None:
        if how in (socket.SHUT_WR, socket.SHUT_RDWR):
            with self._send_lock:
                if not self._fin_sent:
                    self._fin_sent = True
                    self.sock.sendall(self._sealer.seal(Kind.FIN))
        self.sock.shutdown(how)

    # -- receiving -----------------------------------------------------------------
    def recv(self, bufsize: int = RECV_CHUNK) -> bytes:
        while not self._plain and not self._eof:
            data = self.sock.recv(RECV_CHUNK)
            if not data:
                self._eof = True
                self.truncated = True
                break
            try:
                records = self._reader.feed(data)
            except AuthenticationError:
                self.close()
                raise
            for kind, payload in records:
                if kind is Kind.FIN:
                    self._eof = True
                    break
                self._plain += payload
        out = bytes(self._plain[:bufsize])
        del self._plain[:bufsize]
        self.bytes_received += len(out)
        return out

    def makefile(self, mode: str = "rb", buffering: int = io.DEFAULT_BUFFER_SIZE):
        """A buffered binary reader over the decrypted stream (``mode`` ``"rb"`` only)."""
        if mode != "rb":
            raise ValueError(f"SecureStream.makefile supports mode 'rb' only, not {mode!r}")
        return io.BufferedReader(_RawReader(self), buffering)

    # -- socket-like rest ----------------------------------------------------------
    def close(self) -> None:
        self.sock.close()

    def fileno(self) -> int:
        return self.sock.fileno()

    def getsockname(self):
        return self.sock.getsockname()

    def getpeername(self):
        return self.sock.getpeername()

    def settimeout(self, value: float | None) -> None:
        self.sock.settimeout(value)

    def gettimeout(self) -> float | None:
        return self.sock.gettimeout()

    def stats(self) -> dict:
        return {"records_sent": self._sealer.seq, "records_received": self._reader.seq,
                "truncated": self.truncated, **self._reader.counters.as_dict()}

    def __enter__(self) -> "SecureStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _RawReader(io.RawIOBase):
    """``readinto`` over :meth:`SecureStream.recv` (for :meth:`SecureStream.makefile`)."""

    def __init__(self, stream: SecureStream) -> None:
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._stream.recv(len(buffer))
        buffer[:len(data)] = data
        return len(data)
