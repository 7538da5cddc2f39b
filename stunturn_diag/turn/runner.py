"""A TURN session over UDP: :class:`~stunturn_diag.sansio.turn.client.TurnClient` plus one
socket, an injected clock and bounded retransmissions.

Each request is retransmitted on RFC 8489 section 6.2.1's doubling schedule (here from
``rto`` = 250 ms, at most ``tries`` sends), cut at the caller's deadline; a missing
answer returns None. Transaction ids come from ``os.urandom`` (the sans-IO client takes
them as arguments). Data arriving from peers meanwhile is queued for :meth:`recv`.

:class:`DatagramRelay` is what every session of a UDP allocation offers, whether the
server is reached over UDP (:class:`TurnSession`) or over TCP
(:class:`.stream_runner.UdpOverTcpSession`, RFC 8656 section 3.1): channels, datagrams
to and from peers, and the non-blocking ``write``/``read_nowait``/``fileno`` that
:class:`stunturn_diag.punch.relay_path.TurnTransport` drives.
"""

from __future__ import annotations

import os
import select
import socket
import time
from collections import deque
from typing import Callable

from stunturn_diag.sansio.stun.values import Address
from stunturn_diag.sansio.turn import client as turn


class TurnRequests:
    """The requests both transports' sessions make the same way, through their own
    ``_transact(make, timeout)`` (UDP: retransmitted; TCP: sent once)."""

    client: turn.TurnClient

    def _transact(self, make: Callable[[bytes, float], bytes], timeout: float):
        raise NotImplementedError

    def allocate(self, *, lifetime: int = turn.DEFAULT_LIFETIME, timeout: float = 5.0):
        return self._transact(lambda tid, now: self.client.allocate(tid, now, lifetime=lifetime),
                              timeout)

    def refresh(self, lifetime: int = turn.DEFAULT_LIFETIME, timeout: float = 5.0):
        return self._transact(lambda tid, now: self.client.refresh(tid, now, lifetime=lifetime),
                              timeout)

    def create_permission(self, *ips: str, timeout: float = 5.0):
        return self._transact(lambda tid, now: self.client.create_permission(tid, list(ips), now),
                              timeout)


class DatagramRelay(TurnRequests):
    """A UDP allocation's session, whatever carries it to the server: channels and
    datagrams to and from peers, over ``write`` (one message to the server) and
    ``read_nowait`` (the events of what the server sent; BlockingIOError when nothing
    is there)."""

    inbox: deque
    _next_channel: int = turn.CHANNEL_MIN

    @staticmethod
    def _tid() -> bytes:
        return os.urandom(12)

    def fileno(self) -> int:
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def read_nowait(self, now: float | None = None) -> list[turn.Event]:
        """The events of what the server sent, at ``now`` (default: the session's clock)."""
        raise NotImplementedError

    def channel_bind(self, peer: Address, timeout: float = 5.0):
        number = self.client.channels.get(tuple(peer))
        if number is None:
            number, self._next_channel = self._next_channel, self._next_channel + 1
        return self._transact(lambda tid, now: self.client.channel_bind(tid, peer, number, now),
                              timeout)

    def send(self, peer: Address, data: bytes, now: float | None = None) -> None:
        """Data to ``peer`` through the relay (ChannelData once bound, else Send), after
        the keep-alive request due at ``now``, if any (:meth:`TurnClient.keep_alive`:
        Refresh, RFC 8656 section 8, or a ChannelBind again, section 12.1)."""
        now = self.clock() if now is None else now
        request = self.client.keep_alive(self._tid(), peer, now)
        if request is not None:
            self.write(request)
        self.write(self.client.send(self._tid(), peer, data))

    def poll(self, now: float | None = None) -> None:
        """Take what the server sent (BlockingIOError: nothing there): peers' data into
        :attr:`inbox`, a request challenged by 438 (a stale nonce, RFC 8489 section
        9.2.5) sent again with the new nonce; answers to keep-alive requests update the
        client (expiry, permissions)."""
        now = self.clock() if now is None else now
        for event in self.read_nowait(now):
            if isinstance(event, turn.PeerData):
                self.inbox.append(event)
            elif isinstance(event, turn.Challenged):
                self.write(self.client.retry(event.transaction_id, self._tid(), now))

    def recv(self, timeout: float) -> turn.PeerData | None:
        """The next datagram from a peer, or None after ``timeout``."""
        deadline = self.clock() + timeout
        while not self.inbox:
            left = deadline - self.clock()
            if left <= 0:
                return None
            readable, _, _ = select.select([self], [], [], left)
            if readable:
                try:
                    self.poll()
                except OSError:
                    continue
        return self.inbox.popleft()


class TurnSession(DatagramRelay):
    def __init__(self, server: Address, username: str, password: str, *,
                 clock: Callable[[], float] = time.monotonic, rto: float = 0.25,
                 tries: int = 5, software: str | None = "stunturn-diag") -> None:
        self.server = (server[0], int(server[1]))
        self.client = turn.TurnClient(username, password, software=software)
        self.clock, self.rto, self.tries = clock, rto, tries
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect(self.server)
        self.inbox: deque[turn.PeerData] = deque()
        self._next_channel = turn.CHANNEL_MIN

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "TurnSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def fileno(self) -> int:
        return self.sock.fileno()

    def write(self, data: bytes) -> None:
        self.sock.send(data)

    def read_nowait(self, now: float | None = None) -> list[turn.Event]:
        """The events of one datagram from the server (BlockingIOError: none queued)."""
        data = self.sock.recv(65535, socket.MSG_DONTWAIT)
        return self.client.receive(data, self.clock() if now is None else now)

    def _transact(self, make: Callable[[bytes, float], bytes], timeout: float
                  ) -> turn.Event | None:
        """Send one request (retrying after a challenge) until a final event or timeout."""
        deadline = self.clock() + timeout
        tid = self._tid()
        payload = make(tid, self.clock())
        challenges = 0
        while True:
            sends, gap, next_send = 0, self.rto, self.clock()
            while True:
                now = self.clock()
                if now >= deadline:
                    return None
                if sends < self.tries and now >= next_send:
                    try:
                        self.sock.send(payload)
                    except OSError:
                        return None
                    sends += 1
                    next_send, gap = now + gap, gap * 2
                    continue
                wait = (min(deadline, next_send) if sends < self.tries else deadline) - now
                readable, _, _ = select.select([self.sock], [], [], max(0.0, wait))
                if not readable:
                    if sends >= self.tries and self.clock() >= next_send:
                        return None
                    continue
                try:
                    data = self.sock.recv(65535)
                except OSError:
                    continue
                final = None
                for event in self.client.receive(data, self.clock()):
                    if isinstance(event, turn.PeerData):
                        self.inbox.append(event)
                    elif isinstance(event, turn.Challenged):
                        final = event
                    else:               # one request at a time: this is its answer
                        return event
                if final is not None:
                    challenges += 1
                    if challenges > 2:       # a server that keeps challenging
                        return turn.TurnFailure(tid, final.method, final.code,
                                                "challenged again after credentials")
                    new = self._tid()
                    payload = self.client.retry(tid, new, self.clock())
                    tid = new
                    break
