"""The relayed path: a TURN allocation (RFC 8656) made right after the match, used when
the plan is ``relay-needed`` or the direct attempt fails by its deadline.

No new pairing round: the match answer already holds this peer's TURN REST credential
and its exchange token (``turn.exchange``, server/relay_api.py). :class:`RelayPath`
allocates in a background thread as soon as it is started (beside the direct attempt),
posts the relayed address to the exchange, reads the peer's, and binds a channel to it
(ChannelBind also installs the permission, RFC 8656 section 12.1). :meth:`connect` then
runs the SAME authenticated handshake and :class:`~.channel.UdpChannel` as a direct
punch, over :class:`TurnTransport` (ChannelData, section 12.4), so a fallback costs the
handshake's round trips through the relay once the allocation is ready.

A relay that disappears mid-session is silence to the channel: its keepalives go
unanswered and the peer is reported lost (``peer-lost``) after ``peer_timeout``.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Callable

from ..errors import PunchError, SignalingError, TurnError
from stunturn_diag.sansio.turn import client as turn
from ..turn.runner import DatagramRelay, TurnSession
from ..turn.stream_runner import UdpOverTcpSession
from stunturn_diag.sansio.punch.handshake import StartedPake, start_pake
from stunturn_diag.sansio.punch.wire import Role
from .channel import UdpChannel
from .udp import UdpRendezvous
from stunturn_diag.sansio.netaddr import Address

#: exchange polling: first gap, growth, largest gap, most requests (bounded loop)
POLL_FIRST, POLL_GROWTH, POLL_MAX, POLL_COUNT = 0.01, 1.5, 0.25, 200
#: allocation lifetime asked for (RFC 8656 section 7.2; coturn gives at least 600 s)
LIFETIME = 600


def _addr(d: object) -> Address | None:
    if isinstance(d, dict) and isinstance(d.get("ip"), str) and isinstance(d.get("port"), int):
        return d["ip"], d["port"]
    return None


class TurnTransport:
    """A socket-like datagram endpoint through one UDP allocation (what
    :class:`~.udp.UdpRendezvous` and :class:`~.channel.UdpChannel` need of a socket),
    whether the relay is reached over UDP (:class:`TurnSession`) or over TCP
    (:class:`UdpOverTcpSession`, RFC 8656 section 3.1).

    ``sendto`` wraps data for a peer in ChannelData (a Send indication before a channel
    is bound); ``recvfrom`` returns the peers' data, answering the server's own messages
    (refresh answers, 438 stale nonce) on the way; ``getsockname`` is the relayed
    address. While in use it refreshes the allocation and the channel before they expire
    (sections 8 and 12, :meth:`TurnClient.keep_alive`); ``close`` deletes the allocation
    (Refresh with lifetime 0).
    """

    def __init__(self, session: DatagramRelay, peer: Address, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.session, self.peer, self.clock = session, tuple(peer), clock
        self.closed = False
        self._lock = threading.Lock()      # the channel's thread and the user's both send

    def fileno(self) -> int:
        return self.session.fileno()

    def setblocking(self, flag: bool) -> None:
        """Reads never block (``read_nowait``); writes are the session's."""

    def getsockname(self) -> Address:
        return self.session.client.relayed or self.session.sock.getsockname()[:2]

    def setsockopt(self, *args) -> None:
        """TTL options do not apply: the relay sends with its own."""

    def sendto(self, data: bytes, address: Address) -> int:
        """Through the relay, after a keep-alive request when one is due (an unreachable
        relay shows as silence: the channel's ``peer-lost``)."""
        with self._lock:
            self.session.send(address, data, now=self.clock())
        return len(data)

    def recvfrom(self, bufsize: int = 65535) -> tuple[bytes, Address]:
        inbox = self.session.inbox
        for _ in range(64):
            if inbox:
                event = inbox.popleft()
                return event.data[:bufsize], event.peer
            self.session.poll(self.clock())          # BlockingIOError: nothing queued
        raise BlockingIOError("no peer data queued")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            if self.session.client.relayed is not None:
                self.session.write(self.session.client.refresh(os.urandom(12), self.clock(),
                                                               lifetime=0))
        except (OSError, TurnError):     # best effort: the allocation expires anyway
            pass
        self.session.close()


class RelayPath:
    """One side's relay: allocate, exchange relayed addresses, bind, then connect."""

    #: what it relays (the exchange's transport; :class:`.tcp_relay_path.TcpRelayPath`: tcp)
    protocol = "udp"
    #: how this side reaches the relay (:class:`StreamRelayPath`: over TCP)
    control = "udp"

    def __init__(self, signaling, turn_offer: dict, match_id: str, role: Role | str, *,
                 key: str | bytes = b"", say: Callable[[str], None] | None = None) -> None:
        self.signaling, self.offer = signaling, turn_offer
        self.match_id, self.role = match_id, Role(role)
        self.server = _addr(turn_offer.get("server"))
        self.token = str((turn_offer.get("exchange") or {}).get("token", ""))
        self.path = str((turn_offer.get("exchange") or {}).get("path", "/v1/relay"))
        self._say = say or (lambda text: None)
        self.session: TurnSession | None = None
        self.relayed: Address | None = None
        self.peer: Address | None = None
        self.error: PunchError | None = None
        self.ready_ms: float | None = None
        #: the CPace scalar and PRS for the relayed handshake (single use: the direct
        #: attempt took the one prepared before the match), prepared in the background
        self._key = key
        self.pake: StartedPake | None = None
        self._done = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._handed_over = False
        self._released = False
        self._thread: threading.Thread | None = None

    @classmethod
    def offered(cls, signaling, match: dict, role: Role | str, **kw) -> "RelayPath | None":
        """The relay of this match's answer, None when the server offers none."""
        offer = match.get("turn")
        if not isinstance(offer, dict) or _addr(offer.get("server")) is None or \
                not isinstance(offer.get("exchange"), dict) or \
                not isinstance(offer.get("username"), str) or \
                not isinstance(offer.get("password"), str):
            return None
        return cls(signaling, offer, str(match.get("match_id", "")), role, **kw)

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self, until: float) -> None:
        """Allocate and exchange in the background, giving up at ``until`` (monotonic)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._prepare, args=(until,),
                                            name="punch-relay", daemon=True)
            self._thread.start()

    def _fail(self, message: str, hint: str | None = None) -> None:
        self.error = PunchError(message, hint=hint, reason="relay-failed")

    def _prepare(self, until: float) -> None:
        started = time.monotonic()
        try:
            if not self._allocate(until):
                return
            self.peer = self._exchange(until)
            if self.peer is None:
                if not self._stop.is_set():
                    self._fail("the peer posted no relayed address in time",
                               hint="its relay allocation failed, or it runs an older version")
                return
            if not self._bind_peer(until):
                return
            if self._key:
                self.pake = start_pake(self._key, self.role, entropy=os.urandom)
            self.ready_ms = (time.monotonic() - started) * 1000.0
        except SignalingError as exc:
            self._fail(f"relayed address exchange failed: {exc.message}", hint=exc.hint)
        except OSError as exc:
            self._fail(f"TURN relay socket error: {exc}")
        finally:
            self._done.set()
            if self._stop.is_set():
                self._release()

    def _refused(self, got) -> None:
        why = f"{got.code} {got.reason}" if isinstance(got, turn.TurnFailure) else "no answer"
        self._fail(f"the TURN relay {self.server[0]}:{self.server[1]} refused or did not answer "
                   f"the allocation ({why})",
                   hint=f"is the relay reachable over {self.control.upper()} and does it share "
                        "serve's --turn-secret?")

    def _session(self, until: float) -> DatagramRelay:
        """The session the UDP allocation is made on: to the relay over UDP."""
        return TurnSession(self.server, self.offer["username"], self.offer["password"])

    def _allocate(self, until: float) -> bool:
        """The allocation (``self.session``, ``self.relayed``); False after ``_fail``."""
        self.session = self._session(until)
        got = self.session.allocate(lifetime=LIFETIME, timeout=max(0.1, until - time.monotonic()))
        if not isinstance(got, turn.Allocated):
            self._refused(got)
            return False
        self.relayed = got.relayed
        return True

    def _bind_peer(self, until: float) -> bool:
        """A channel to the peer's relayed address (also its permission); False after ``_fail``."""
        bound = self.session.channel_bind(self.peer, timeout=max(0.1, until - time.monotonic()))
        if not isinstance(bound, turn.ChannelBound):
            self._fail(f"the relay did not bind a channel to the peer's relayed "
                       f"address {self.peer[0]}:{self.peer[1]} ({bound})")
            return False
        return True

    def _exchange(self, until: float) -> Address | None:
        """Post our relayed address; poll (bounded, growing gaps) for the peer's."""
        body = {"match_id": self.match_id, "token": self.token,
                "relayed": {"ip": self.relayed[0], "port": self.relayed[1]}}
        if self.protocol != "udp":
            body["transport"] = self.protocol
        gap = POLL_FIRST
        for i in range(POLL_COUNT):
            answer = self.signaling.post(self.path, body if i == 0 else
                                         {k: v for k, v in body.items() if k != "relayed"})
            peer = _addr(answer.get("peer"))
            if peer is not None:
                return peer
            if self._stop.wait(min(gap, max(0.0, until - time.monotonic()))) or \
                    time.monotonic() >= until:
                return None
            gap = min(gap * POLL_GROWTH, POLL_MAX)
        return None

    def _take(self, deadline: float) -> None:
        """Wait (by ``deadline``) for the allocation and the peer's address and take
        them over for the channel; PunchError (``relay-failed``) when they are not there."""
        self.start(deadline)
        if not self._done.wait(max(0.0, deadline - time.monotonic())):
            stage = (f"the TURN relay {self.server[0]}:{self.server[1]} did not answer the "
                     "allocation" if self.relayed is None else
                     "the peer posted no relayed address" if self.peer is None else
                     "the relay did not bind a channel to the peer")
            raise PunchError(f"{stage} in time", reason="relay-failed")
        if self.error is not None:
            raise self.error
        with self._lock:
            if self._released:
                raise PunchError("the relay was released", reason="relay-failed")
            self._handed_over = True

    def connect(self, key: str, deadline: float, *, keepalive_interval: float = 2.0,
                peer_timeout: float = 10.0) -> UdpChannel:
        """The authenticated channel through the relay, or PunchError by ``deadline``."""
        self._take(deadline)
        transport = TurnTransport(self.session, self.peer)
        rv = UdpRendezvous(transport=transport)
        try:
            return rv.punch([self.peer], role=self.role, deadline=deadline, prime_ttl=0,
                            strategy="relay", key=key, match_id=self.match_id,
                            keepalive_interval=keepalive_interval, peer_timeout=peer_timeout,
                            pake=self.pake or start_pake(key, self.role, entropy=os.urandom))
        except BaseException:
            transport.close()
            raise

    def _release(self) -> None:
        with self._lock:
            if self._handed_over or self._released:
                return
            self._released = True
            session = self.session
        if session is not None:
            self._free(session)

    def _free(self, session) -> None:
        TurnTransport(session, self.peer or ("0.0.0.0", 0)).close()

    def close(self) -> None:
        """Not used (the direct path won, or the run failed): delete the allocation."""
        self._stop.set()
        if self._thread is None or self._done.is_set():
            self._release()


class StreamRelayPath(RelayPath):
    """The UDP relay of a side whose network blocks UDP: the same UDP allocation,
    exchange, channel and handshake as :class:`RelayPath`, but the allocation's requests
    and the datagrams go over a TCP connection to the relay (RFC 8656 section 3.1,
    REQUESTED-TRANSPORT 17; :class:`~stunturn_diag.turn.stream_runner.UdpOverTcpSession`).
    The peer sees an ordinary UDP relayed address and reaches it from its own allocation."""

    control = "tcp"

    def _session(self, until: float) -> DatagramRelay:
        return UdpOverTcpSession(self.server, self.offer["username"], self.offer["password"],
                                 connect_timeout=max(0.1, min(5.0, until - time.monotonic())))


#: plans whose port prediction would count a new flow on our NAT: the allocation
#: waits until the direct attempt failed instead of running beside it
_PREDICTED = ("predict", "birthday")


def for_plan(side, match: dict, plan, protocol: str, direct_deadline: float) -> RelayPath | None:
    """The hook of :mod:`.api`: this match's relay, already allocating where that is safe.

    None without an offered relay (for TCP: one whose offer lists tcp, RFC 6062
    allocations, :mod:`.tcp_relay_path`) or with ``PunchOptions.relay=False``. Right
    after the match the allocation and the address exchange start beside the direct
    attempt, so a fallback finds them ready; for a ``predict``/``birthday`` plan (our
    NAT's next ports are counted) only on failure. A side whose UDP is blocked
    (``plan.blocked``) reaches the relay over TCP (:class:`StreamRelayPath`).
    """
    if protocol not in ("udp", "tcp") or not side.opts.relay:
        return None
    if protocol == "tcp":
        from .tcp_relay_path import TcpRelayPath as kind
    else:
        kind = StreamRelayPath if side.role in plan.blocked else RelayPath
    relay = kind.offered(side.client, match, side.role, key=side.key, say=side._say)
    if relay is not None and plan.strategy not in _PREDICTED:
        relay.start(direct_deadline + side.opts.relay_timeout)
    return relay
