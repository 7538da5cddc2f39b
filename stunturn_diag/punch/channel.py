"""The authenticated UDP endpoint handed to the user after a successful punch.

Every datagram is an encrypted, authenticated frame (:class:`stunturn_diag.sansio.punch.seal.Session`,
ChaCha20-Poly1305 under per-direction keys from the PAKE); forged, replayed or
foreign datagrams are dropped and counted, never delivered. The peer's address is
pinned when the handshake completes: datagrams from any other source are
counted (``foreign``) and ignored.
A service thread reads the socket, answers late handshake retransmissions, sends
keepalives (holding the NAT mappings open, RFC 4787 section 4.3) and declares the
peer lost when nothing authentic arrived for ``peer_timeout`` seconds.
"""

from __future__ import annotations

import queue
import select
import socket
import threading
import time

from ..errors import PunchError
from stunturn_diag.sansio.punch.handshake import Handshake
from stunturn_diag.sansio.punch.seal import FRAME_OVERHEAD, Session
from stunturn_diag.sansio.punch.wire import Kind, is_handshake
from stunturn_diag.sansio.netaddr import Address

#: largest payload of one datagram: a frame must fit one UDP datagram over IPv4
#: (65507 bytes); frames above the path MTU travel as IP fragments
MAX_PAYLOAD = 65507 - FRAME_OVERHEAD
#: payload size that keeps frames under the 1280-byte IPv6 minimum MTU (RFC 8200
#: section 5): the chunk size for byte streams (stdin, TCP) carried over UDP
STREAM_CHUNK = 1200
_EOF = object()


class UdpChannel:
    """A datagram endpoint bound to the punched peer.

    ``send(data)`` sends one authenticated datagram (up to :data:`MAX_PAYLOAD` bytes,
    datagram boundaries are kept); ``recv(timeout)`` returns the
    next payload, ``b""`` once the peer signalled end of data (FIN) or closed, and
    raises :class:`PunchError` (reason ``peer-lost``) when the peer went silent.
    """

    def __init__(self, sock: socket.socket, peer: Address, handshake: Handshake, *,
                 keepalive_interval: float = 2.0, peer_timeout: float = 10.0,
                 clock=time.monotonic, extra_sockets: list[socket.socket] | None = None,
                 pending: list[tuple[bytes, Address]] | None = None) -> None:
        self.sock = sock
        self.peer_address = peer
        self.local_address: Address = sock.getsockname()[:2]
        self.handshake = handshake
        self.session: Session = handshake.session()
        self.keepalive_interval = keepalive_interval
        self.peer_timeout = peer_timeout
        self._clock = clock
        self._extra = extra_sockets or []
        self._lock = threading.Lock()
        self._inbox: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self.last_rx = clock()
        self._last_tx = clock()
        self.peer_eof = False
        self.lost = False
        self.closed = False
        self.foreign = 0
        #: set by the peer's first authenticated frame (data, keepalive, FIN or BYE):
        #: the dual-stack race's nomination (:mod:`stunturn_diag.sansio.punch.families`)
        self.heard = threading.Event()
        #: called once by close(), after the sockets closed (e.g. delete a port mapping)
        self.on_close: list = []
        # frames that arrived while the punch loop was still confirming
        for data, src in pending or []:
            self._handle(data, src)
        self._thread = threading.Thread(target=self._service, name="stunturn-udp-channel",
                                        daemon=True)
        self._thread.start()

    # -- user API -------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        """Send one datagram (empty ones are skipped: ``recv`` uses ``b""`` for end of data)."""
        if not data:
            return
        if len(data) > MAX_PAYLOAD:
            raise ValueError(f"datagram payload of {len(data)} bytes exceeds {MAX_PAYLOAD}")
        if self.lost:
            raise PunchError("the peer is gone (no keepalive answered)", reason="peer-lost")
        self._send(Kind.DATA, data)

    def recv(self, timeout: float | None = None) -> bytes:
        try:
            item = self._inbox.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError("no datagram from the peer within the timeout") from None
        if item is _EOF:
            self._inbox.put(_EOF)  # stay at EOF for later calls
            if self.lost:
                raise PunchError(f"the peer went silent for {self.peer_timeout:g}s "
                                 "(keepalives unanswered): the path or the peer is gone",
                                 hint="the NAT mapping may have expired or the peer quit",
                                 reason="peer-lost")
            return b""
        return item

    def shutdown_write(self) -> None:
        """Tell the peer no more data follows (repeated: datagrams may be lost)."""
        for _ in range(3):
            self._send(Kind.FIN)

    def nominate(self, repeats: tuple[float, ...] = (0.0, 0.01, 0.03, 0.1, 0.3)) -> None:
        """Tell the peer this path is the one kept: an authenticated keepalive now and at
        the ``repeats`` offsets (seconds; the peer's handshake may finish a little later
        than ours, and a frame before that is not read as one)"""
        self._send(Kind.KEEPALIVE)

        def again() -> None:
            start = self._clock()
            for at in repeats[1:]:
                if self._stop.wait(max(0.0, start + at - self._clock())):
                    return
                self._send(Kind.KEEPALIVE)

        threading.Thread(target=again, name="stunturn-udp-nominate", daemon=True).start()

    def abandon(self) -> None:
        """Close a path that lost the race, without the BYE (an authenticated frame would
        read as this path's nomination on the peer's side)."""
        self.lost = True
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if not self.lost:
            for _ in range(2):
                try:
                    self._send(Kind.BYE)
                except OSError:
                    break
        self._stop.set()
        self._thread.join(2.0)
        for s in [self.sock, *self._extra]:
            s.close()
        for hook in self.on_close:
            hook()

    def stats(self) -> dict:
        """Dropped-and-counted input: frames by cause, foreign sources, handshake drops."""
        c = self.session.counters.as_dict()
        c["foreign"] = self.foreign
        c["handshake"] = self.handshake.counters.as_dict()
        return c

    def __enter__(self) -> "UdpChannel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------
    def _send(self, kind: Kind, payload: bytes = b"") -> None:
        with self._lock:
            frame = self.session.seal(kind, payload)
            self._last_tx = self._clock()
            try:
                self.sock.sendto(frame, self.peer_address)
            except OSError:
                pass  # ICMP errors surface later as silence -> peer-lost

    def _service(self) -> None:
        """Reader + keepalive loop; ends on close() or when the peer is lost."""
        self.sock.setblocking(False)
        while not self._stop.is_set():
            now = self._clock()
            if now - self.last_rx > self.peer_timeout:
                self.lost = True
                self._inbox.put(_EOF)
                return
            if now - self._last_tx >= self.keepalive_interval:
                self._send(Kind.KEEPALIVE)
            try:
                ready, _, _ = select.select([self.sock], [], [], min(0.1, self.keepalive_interval))
            except (OSError, ValueError):
                return
            if ready:
                self._drain()

    def _drain(self) -> None:
        for _ in range(256):
            try:
                data, src = self.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # ICMP error queued on the socket
            self._handle(data, src[:2])

    def _handle(self, data: bytes, src: Address) -> None:
        if src != self.peer_address or not is_handshake(data):
            self.foreign += 1
            return
        if data[5] in (Kind.HELLO, Kind.PROOF):
            out = self.handshake.handle(data)   # the peer still finishing its handshake
            if out.accepted and out.reply is not None:
                try:
                    self.sock.sendto(out.reply, src)
                except OSError:
                    pass
            return
        frame = self.session.open(data)
        if frame is None:
            return
        kind, payload = frame
        self.last_rx = self._clock()
        self.heard.set()
        if kind is Kind.DATA:
            self._inbox.put(payload)
        elif kind in (Kind.FIN, Kind.BYE) and not self.peer_eof:
            self.peer_eof = True
            self._inbox.put(_EOF)
