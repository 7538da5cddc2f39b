"""A UDP allocation over a TCP control connection (RFC 8656 section 3.1): the relay for a
network that blocks UDP but lets TCP out.

The client reaches the TURN server over TCP and asks for a UDP relayed transport
(REQUESTED-TRANSPORT 17, section 7.1), so its peers see an ordinary UDP relayed
address. STUN messages and ChannelData share the stream back to back; ChannelData is
padded to a multiple of 4 (section 12.5): :class:`~stunturn_diag.sansio.turn.client.TurnClient`
with ``stream=True`` writes them, :class:`~stunturn_diag.sansio.turn.tcp.StreamFramer`
cuts the server's bytes into frames.

:class:`UdpOverTcpSession` makes the same requests as the UDP session
(:class:`~.runner.TurnRequests`: Allocate, Refresh, CreatePermission; ChannelBind,
``send``/``recv`` of :class:`~.runner.DatagramRelay`), each sent once (TCP is
reliable, RFC 8489 section 6.2.2) and bounded by the caller's timeout. Its keep-alive is
the UDP allocation's (:meth:`TurnClient.keep_alive`, driven by
:class:`stunturn_diag.punch.relay_path.TurnTransport`).

When the control connection ends (the relay closed it, a reset, a stream out of step)
the allocation is gone with it; :attr:`lost` says why, reads find nothing, and
:meth:`fileno` becomes a descriptor that never turns readable, so a channel on top
sees silence and reports the peer lost after its timeout instead of spinning or hanging.
"""

from __future__ import annotations

import socket
import struct
import time
from collections import deque
from typing import Callable

from stunturn_diag.sansio.stun.values import Address
from stunturn_diag.sansio.turn import client as turn

from .runner import DatagramRelay
from .tcp_runner import TcpControl

#: a write the relay does not take within this long counts as the connection lost
SEND_TIMEOUT = 5.0


class UdpOverTcpSession(DatagramRelay, TcpControl):
    """One UDP allocation whose requests and data go over TCP to the server."""

    def __init__(self, server: Address, username: str, password: str, *,
                 clock: Callable[[], float] = time.monotonic, connect_timeout: float = 5.0,
                 software: str | None = "stunturn-diag") -> None:
        TcpControl.__init__(self, server, turn.TurnClient(username, password, software=software,
                                                          stream=True),
                            clock=clock, connect_timeout=connect_timeout)
        # the kernel bounds a blocked write (SO_SNDTIMEO); reads never block (MSG_DONTWAIT)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                             struct.pack("ll", int(SEND_TIMEOUT), 0))
        self.inbox: deque[turn.PeerData] = deque()
        self._next_channel = turn.CHANNEL_MIN
        self._idle: tuple[socket.socket, socket.socket] | None = None

    def _queue(self, event: turn.Event) -> bool:
        """A peer's datagram arriving while a request waits goes to :meth:`recv`."""
        if isinstance(event, turn.PeerData):
            self.inbox.append(event)
            return True
        return False

    # -- what TurnTransport drives ----------------------------------------------------------
    def fileno(self) -> int:
        """The control connection's descriptor; once it ended, one that never turns
        readable (a select on it waits out its timeout instead of spinning on EOF)."""
        if self.lost is None:
            return self.sock.fileno()
        if self._idle is None:
            self._idle = socket.socketpair()
        return self._idle[0].fileno()

    def write(self, data: bytes) -> None:
        """One message to the server; OSError once the connection ended."""
        if self.lost is not None or not self._send(data):
            raise ConnectionError(self.lost or "the relay's control connection ended")

    def read_nowait(self, now: float | None = None) -> list[turn.Event]:
        """The events of the frames completed by what the server sent (possibly none: a
        frame still partial); BlockingIOError when nothing was there (or the connection
        ended: :attr:`lost`)."""
        with self._lock:
            if self.lost is not None:
                raise BlockingIOError("the relay's control connection ended")
            before = len(self.framer.buffered)
            frames = self._read_frames(None)
            if frames is None:
                raise BlockingIOError(self.lost or "the relay's control connection ended")
            if not frames and len(self.framer.buffered) == before:
                raise BlockingIOError("nothing from the relay")
            now = self.clock() if now is None else now
            return [event for frame in frames for event in self.client.receive(frame, now)]

    def close(self) -> None:
        """Close the control connection: the allocation ends with it (coturn frees it;
        :class:`~stunturn_diag.punch.relay_path.TurnTransport` sends Refresh 0 first)."""
        self._close_socket()
        if self._idle is not None:
            for s in self._idle:
                s.close()

    def __enter__(self) -> "UdpOverTcpSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
