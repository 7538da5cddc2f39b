"""A TURN TCP allocation (RFC 6062) over real sockets: the I/O side of
:mod:`stunturn_diag.sansio.turn.tcp`.

:class:`TcpTurnSession` holds the control connection (TCP to the server, STUN
messages back to back): Allocate, CreatePermission, Refresh, Connect, and the
server's ConnectionAttempt indications. :meth:`TcpTurnSession.open_data` opens a data
connection to the server, sends ConnectionBind for a CONNECTION-ID and returns the
connected socket once bound: from then on it is a plain byte stream to the peer (the
answer is read exactly, never a byte past it). :meth:`TcpTurnSession.keep_alive`
starts a bounded maintenance thread that refreshes the allocation and the peer's
permission while the stream is in use, and shuts the data connection when the control
connection dies (a relay that disappears ends the stream, it never hangs it).

Every wait is bounded by the caller's timeout; there is no retransmission (TCP is
reliable, RFC 8489 section 6.2.2), a missing answer by the deadline is None.
Transaction ids come from ``os.urandom``.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from collections import deque
from typing import Callable

from stunturn_diag.errors import TurnError
from stunturn_diag.sansio.stun.values import Address
from stunturn_diag.sansio.turn import client as turn
from stunturn_diag.sansio.turn import tcp as tturn

from .runner import TurnRequests

#: the maintenance thread's longest wait for the control connection (so close() is quick)
POLL = 0.2
#: how long Refresh 0 may take when the session closes
CLOSE_TIMEOUT = 0.5


def _tid() -> bytes:
    return os.urandom(12)


def _why(what: str, event: turn.Event | None) -> str:
    if isinstance(event, turn.TurnFailure):
        return f"{what}: {event.code} {event.reason.rstrip(chr(0))}".rstrip()
    return f"{what}: no answer in time"


class TcpControl(TurnRequests):
    """A TCP connection to the TURN server carrying one allocation's requests (RFC 8656
    section 3.1; STUN messages and ChannelData back to back, :class:`~tturn.StreamFramer`):
    the plumbing of :class:`TcpTurnSession` (RFC 6062) and of
    :class:`.stream_runner.UdpOverTcpSession` (a UDP allocation over TCP)."""

    def __init__(self, server: Address, client: turn.TurnClient, *,
                 clock: Callable[[], float] = time.monotonic,
                 connect_timeout: float = 5.0) -> None:
        self.server = (server[0], int(server[1]))
        self.client = client
        self.clock = clock
        self.sock = socket.create_connection(self.server, timeout=connect_timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(None)
        self.framer = tturn.StreamFramer()
        self.lost: str | None = None            # why the control connection ended
        self._lock = threading.Lock()           # one reader of the control connection
        self._wlock = threading.Lock()          # one writer: frames never interleave

    # -- plumbing -----------------------------------------------------------------------
    def _send(self, data: bytes) -> bool:
        try:
            with self._wlock:
                self.sock.sendall(data)
            return True
        except OSError as exc:
            self.lost = self.lost or f"control connection: {exc}"
            return False

    def _read_frames(self, wait: float | None) -> list[bytes] | None:
        """Frames that arrive within ``wait`` seconds ([] for none; ``wait`` None: only
        what is already there), None once the control connection ended."""
        if self.lost:
            return None
        try:
            if wait is not None:
                readable, _, _ = select.select([self.sock], [], [], max(0.0, wait))
                if not readable:
                    return []
            data = self.sock.recv(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return []
        except (OSError, ValueError) as exc:
            self.lost = self.lost or f"control connection: {exc}"
            return None
        if not data:
            self.lost = self.lost or "the relay closed the control connection"
            return None
        try:
            return self.framer.feed(data)
        except TurnError as exc:      # out of step: nothing more can be read
            self.lost = f"control connection out of step: {exc}"
            return None

    def _queue(self, event: turn.Event) -> bool:
        """Keep an event that answers no request (True), e.g. a peer's data."""
        return False

    def _handle(self, frames: list[bytes]) -> list[turn.Event]:
        """Events of these frames, less the ones :meth:`_queue` keeps."""
        final: list[turn.Event] = []
        for frame in frames:
            for event in self.client.receive(frame, self.clock()):
                if not self._queue(event):
                    final.append(event)
        return final

    def _transact(self, make: Callable[[bytes, float], bytes], timeout: float
                  ) -> turn.Event | None:
        """One request (retried after a challenge, at most twice) until its answer."""
        with self._lock:
            deadline = self.clock() + timeout
            tid = _tid()
            if not self._send(make(tid, self.clock())):
                return None
            challenges = 0
            while True:
                frames = self._read_frames(deadline - self.clock())
                if frames is None:
                    return None
                for event in self._handle(frames):
                    if isinstance(event, turn.Challenged) and event.transaction_id == tid:
                        challenges += 1
                        if challenges > 2:
                            return turn.TurnFailure(tid, event.method, event.code,
                                                    "challenged again after credentials")
                        new = _tid()
                        if not self._send(self.client.retry(tid, new, self.clock())):
                            return None
                        tid = new
                    elif isinstance(event, turn.Challenged):
                        self._send(self.client.retry(event.transaction_id, _tid(), self.clock()))
                    else:
                        return event       # one request at a time: this is its answer
                if self.clock() >= deadline:
                    return None

    def _close_socket(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class TcpTurnSession(TcpControl):
    """One TCP allocation's control connection."""

    def __init__(self, server: Address, username: str, password: str, *,
                 clock: Callable[[], float] = time.monotonic, connect_timeout: float = 5.0,
                 software: str | None = "stunturn-diag") -> None:
        super().__init__(server, tturn.TcpTurnClient(username, password, software=software),
                         clock=clock, connect_timeout=connect_timeout)
        self.attempts: deque[tturn.ConnectionAttempt] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watched: list[socket.socket] = []
        self._peer_ip: str | None = None

    def _queue(self, event: turn.Event) -> bool:
        """ConnectionAttempts wait for :meth:`wait_attempt`."""
        if isinstance(event, tturn.ConnectionAttempt):
            self.attempts.append(event)
            return True
        return False

    # -- requests -----------------------------------------------------------------------
    def connect(self, peer: Address, timeout: float = 5.0):
        """Connect to ``peer`` through the relay: :class:`~tturn.Connected` (bind it with
        :meth:`open_data`), a TurnFailure (447, 446, 403...) or None."""
        return self._transact(lambda tid, now: self.client.connect(tid, peer, now), timeout)

    def wait_attempt(self, timeout: float, peer: Address | str | None = None
                     ) -> tturn.ConnectionAttempt | None:
        """The next ConnectionAttempt, None by ``timeout``. With ``peer`` only one from
        that address (an IP: any port of it); others are dropped (the relay closes a
        peer connection nobody binds within 30 s, RFC 6062 section 5.3)."""
        deadline = self.clock() + timeout
        with self._lock:
            while True:
                while self.attempts:
                    attempt = self.attempts.popleft()
                    if peer is None or attempt.peer == (tuple(peer) if not isinstance(
                            peer, str) else (peer, attempt.peer[1])):
                        return attempt
                left = deadline - self.clock()
                if left <= 0:
                    return None
                frames = self._read_frames(left)
                if frames is None:
                    return None
                for event in self._handle(frames):
                    if isinstance(event, turn.Challenged):
                        self._send(self.client.retry(event.transaction_id, _tid(), self.clock()))

    def open_data(self, connection_id: int, timeout: float = 5.0
                  ) -> tuple[socket.socket | None, turn.Event | None]:
        """A new connection to the server bound to ``connection_id`` (ConnectionBind):
        ``(socket, ConnectionBound)``, or ``(None, TurnFailure | None)``."""
        deadline = self.clock() + timeout
        binder = self.client.binder(connection_id)
        try:
            data = socket.create_connection(self.server, timeout=max(0.05, timeout))
        except OSError as exc:
            return None, turn.TurnFailure(b"", turn.Method.CONNECTION_BIND, 0,
                                          f"data connection to the relay: {exc}")
        data.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        framer = tturn.StreamFramer()
        tid = _tid()
        try:
            data.sendall(binder.bind(tid, self.clock()))
            for _ in range(3):          # the answer, after at most two challenges
                frame = None
                while frame is None:
                    left = deadline - self.clock()
                    if left <= 0:
                        raise TimeoutError
                    data.settimeout(left)
                    chunk = data.recv(framer.needed())   # exact: no byte past the answer
                    if not chunk:
                        raise ConnectionError("the relay closed the data connection")
                    frames = framer.feed(chunk)
                    frame = frames[0] if frames else None
                events = binder.receive(frame, self.clock())
                if not events:
                    continue
                event = events[0]
                if isinstance(event, tturn.ConnectionBound):
                    data.settimeout(None)
                    return data, event
                if isinstance(event, turn.Challenged):
                    new = _tid()
                    data.sendall(binder.retry(tid, new, self.clock()))
                    tid = new
                    continue
                data.close()
                return None, event
        except (OSError, TimeoutError, ValueError) as exc:
            data.close()
            return None, (None if isinstance(exc, TimeoutError) else
                          turn.TurnFailure(b"", turn.Method.CONNECTION_BIND, 0, str(exc)))
        data.close()
        return None, turn.TurnFailure(b"", turn.Method.CONNECTION_BIND, 0, "no usable answer")

    # -- a stream to a peer ---------------------------------------------------------------
    def connect_stream(self, peer: Address, timeout: float, *, retry_gap: float = 0.05
                       ) -> tuple[socket.socket | None, str]:
        """Connect + ConnectionBind: ``(data socket, "")`` or ``(None, why)`` by ``timeout``.

        A 447 (the relay could not reach the peer: its permission for us may not be
        installed yet) or 403 is tried again after a growing gap, while time is left.
        """
        deadline = self.clock() + timeout
        gap, why = retry_gap, "no answer to Connect"
        for _ in range(64):
            left = deadline - self.clock()
            if left <= 0:
                break
            got = self.connect(peer, timeout=left)
            if isinstance(got, tturn.Connected):
                data, bound = self.open_data(got.connection_id,
                                             timeout=max(0.05, deadline - self.clock()))
                return (data, "") if data is not None else (None, _why("ConnectionBind", bound))
            why = _why("Connect", got)
            if not isinstance(got, turn.TurnFailure) or got.code not in (
                    tturn.CONNECTION_TIMEOUT_OR_FAILURE, 403):
                break
            time.sleep(max(0.0, min(gap, deadline - self.clock())))
            gap = min(gap * 2, 0.5)
        return None, why

    def accept_stream(self, peer: Address | str | None, timeout: float
                      ) -> tuple[socket.socket | None, str]:
        """Wait for the ConnectionAttempt from ``peer`` (an address: the peer's relayed
        address when it is on the same relay, which connects from there; an IP: any port
        of it), then ConnectionBind: ``(data socket, "")`` or ``(None, why)`` by ``timeout``."""
        deadline = self.clock() + timeout
        attempt = self.wait_attempt(timeout, peer)
        if attempt is None:
            return None, (self.lost or "the peer did not connect to our relayed address in time")
        data, bound = self.open_data(attempt.connection_id,
                                     timeout=max(0.05, deadline - self.clock()))
        return (data, "") if data is not None else (None, _why("ConnectionBind", bound))

    # -- while in use -------------------------------------------------------------------
    def keep_alive(self, data: socket.socket, peer_ip: str) -> None:
        """Refresh the allocation and ``peer_ip``'s permission while ``data`` is in use;
        shut ``data`` down when the control connection ends (the relay is gone)."""
        self._watched.append(data)
        self._peer_ip = peer_ip
        if self._thread is None:
            self._thread = threading.Thread(target=self._maintain, name="turn-tcp-control",
                                            daemon=True)
            self._thread.start()

    def _maintain(self) -> None:
        while not self._stop.wait(0):
            with self._lock:
                frames = self._read_frames(POLL)
                if frames is None:
                    break
                for event in self._handle(frames):
                    if isinstance(event, turn.Challenged):      # 438: a new nonce
                        self._send(self.client.retry(event.transaction_id, _tid(), self.clock()))
                if self._peer_ip:
                    request = self.client.keep_alive(_tid(), (self._peer_ip, 0), self.clock(),
                                                     by_channel=False)
                    if request is not None and not self._send(request):
                        break                # the control connection is gone
        if not self._stop.is_set():
            for data in self._watched:      # the relay is gone: the stream ends, not hangs
                try:
                    data.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        """Delete the allocation (Refresh 0, best effort) and close the control connection
        (coturn also frees the allocation when it closes, RFC 6062 section 4)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        if self.client.relayed is not None and not self.lost:
            try:
                self.refresh(0, timeout=CLOSE_TIMEOUT)
            except Exception:
                pass
        self._close_socket()

    def __enter__(self) -> "TcpTurnSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
