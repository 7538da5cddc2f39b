"""The private stream after the TCP handshake: a socket whose bytes travel in AEAD records.

:class:`SecureStream` is what :func:`stunturn_diag.punch.handshake_runner.authenticate_stream`
returns: a socket-like object whose every byte travels in encrypted, authenticated
records (:mod:`stunturn_diag.sansio.punch.seal`). The relay (``--forward``,
``--listen``, stdin/stdout) uses it like a socket: ``recv``, ``send``, ``sendall``,
``shutdown``, ``close``, ``fileno``.
"""

from __future__ import annotations

import io
import socket
import threading

from ..errors import AuthenticationError
from stunturn_diag.sansio.punch.seal import RecordReader, RecordSealer
from stunturn_diag.sansio.punch.wire import Kind

RECV_CHUNK = 65536


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
