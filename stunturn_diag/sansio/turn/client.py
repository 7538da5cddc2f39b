"""Sans-IO TURN client (RFC 8656) on the STUN codec (:mod:`stunturn_diag.sansio.stun`).

No sockets, no clocks, no randomness: every request takes its transaction id and the
current time (``now``, seconds on any monotonic clock) from the caller, and
:meth:`TurnClient.receive` turns the server's bytes into :class:`Event` s.

- Allocate (section 7): the first request goes without credentials; the server's 401
  carries REALM and NONCE (long-term credential mechanism, RFC 8489 section 9.2), the
  client keeps them and :meth:`TurnClient.retry` re-sends the request with USERNAME,
  REALM, NONCE and MESSAGE-INTEGRITY under a new transaction id. 438 (Stale Nonce,
  section 9.2.5) updates the nonce the same way. Success: XOR-RELAYED-ADDRESS,
  XOR-MAPPED-ADDRESS, LIFETIME.
- Refresh (section 8), CreatePermission (section 9), ChannelBind (section 12), Send
  and Data indications (section 11), ChannelData framing (section 12.4).
- Over a stream (``stream=True``: TCP to the server, RFC 8656 section 3.1, with a UDP
  relayed transport still, REQUESTED-TRANSPORT 17) STUN messages and ChannelData run
  back to back and ChannelData is padded to a multiple of 4 (section 12.5): :meth:`send`
  pads, and :class:`~.tcp.StreamFramer` cuts the server's bytes into the frames
  :meth:`receive` takes one at a time.
- Keep-alive (:meth:`TurnClient.keep_alive`): the request due now, a Refresh before the
  allocation expires (section 8) or a ChannelBind re-bind before the peer's channel and
  permission do (sections 9, 12.1), at most one per ``every`` seconds.
- Errors are events, not exceptions: 437 Allocation Mismatch, 486 Allocation Quota
  Reached, 403, 508... (section 19). A second 401 after credentials were sent means
  they are wrong: ``TurnFailure``.
- Responses to authenticated requests must carry a valid MESSAGE-INTEGRITY (RFC 8489
  section 9.2.4); others are dropped silently, as are answers to no pending request.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stunturn_diag.errors import StunDecodeError, TurnError
from stunturn_diag.sansio.stun import (AttrType, MessageClass, Method, StunMessage, decode, encode,
                    long_term_key)
from stunturn_diag.sansio.stun.values import Address

#: TURN attributes (RFC 8656 section 18) the codec keeps as raw bytes
CHANNEL_NUMBER = 0x000C
LIFETIME = 0x000D
DATA = 0x0013
REQUESTED_TRANSPORT = 0x0019
DONT_FRAGMENT = 0x001A
PROTOCOL_UDP = 17

#: channel numbers a client may bind (section 12)
CHANNEL_MIN, CHANNEL_MAX = 0x4000, 0x4FFF
#: permission lifetime (section 9) and channel binding lifetime (section 12)
PERMISSION_LIFETIME = 300
CHANNEL_LIFETIME = 600
DEFAULT_LIFETIME = 600
#: keep-alive: the least gap between two maintenance requests, and how long before an
#: expiry one is sent
KEEP_ALIVE_EVERY = 5.0
KEEP_ALIVE_MARGIN = 60.0


def channel_data(number: int, data: bytes, *, pad: bool = False) -> bytes:
    """A ChannelData message (section 12.4): channel number (16), length (16), data;
    ``pad`` to a multiple of 4 (required over TCP, optional over UDP)."""
    if not CHANNEL_MIN <= number <= CHANNEL_MAX:
        raise TurnError(f"channel number 0x{number:04x} is outside 0x4000-0x4FFF",
                        hint="RFC 8656 section 12")
    if len(data) > 0xFFFF:
        raise TurnError(f"ChannelData carries at most 65535 bytes, got {len(data)}")
    out = number.to_bytes(2, "big") + len(data).to_bytes(2, "big") + bytes(data)
    return out + b"\x00" * (-len(data) % 4) if pad else out


def parse_channel_data(data: bytes) -> tuple[int, bytes]:
    """``(channel number, application data)`` of a ChannelData message (padding ignored)."""
    if len(data) < 4:
        raise TurnError(f"ChannelData has a 4-byte header, got {len(data)} bytes")
    number, length = int.from_bytes(data[:2], "big"), int.from_bytes(data[2:4], "big")
    if not CHANNEL_MIN <= number <= CHANNEL_MAX:
        raise TurnError(f"channel number 0x{number:04x} is outside 0x4000-0x4FFF")
    if len(data) < 4 + length:
        raise TurnError(f"ChannelData says {length} bytes, {len(data) - 4} present")
    return number, bytes(data[4:4 + length])


def is_channel_data(data: bytes) -> bool:
    """The first two bits tell ChannelData (0b01) from STUN (0b00) (section 12)."""
    return len(data) >= 4 and data[0] >> 6 == 0b01


def _u32(value: bytes) -> int | None:
    return int.from_bytes(value, "big") if isinstance(value, bytes) and len(value) == 4 else None


# -- events -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Event:
    pass


@dataclass(frozen=True)
class Challenged(Event):
    """401 / 438: realm and nonce learnt; :meth:`TurnClient.retry` the request."""

    transaction_id: bytes
    method: int
    code: int


@dataclass(frozen=True)
class Allocated(Event):
    relayed: Address
    mapped: Address | None
    lifetime: int


@dataclass(frozen=True)
class Refreshed(Event):
    lifetime: int          # 0: the allocation is gone (deleted on request)


@dataclass(frozen=True)
class PermissionsCreated(Event):
    peers: tuple[str, ...]


@dataclass(frozen=True)
class ChannelBound(Event):
    peer: Address
    number: int


@dataclass(frozen=True)
class PeerData(Event):
    """Data from a peer through the relay (Data indication or ChannelData)."""

    peer: Address
    data: bytes
    channel: int | None = None


@dataclass(frozen=True)
class TurnFailure(Event):
    """An error response (or a 401 despite credentials). ``code``: 437 Allocation
    Mismatch, 486 Allocation Quota Reached, 403 Forbidden, 441 Wrong Credentials..."""

    transaction_id: bytes
    method: int
    code: int
    reason: str


@dataclass
class _Pending:
    method: int
    attributes: list
    authenticated: bool
    extra: dict = field(default_factory=dict)


class TurnClient:
    """One client's view of one allocation on one TURN server (UDP relayed transport;
    client-to-server over UDP, or over TCP with ``stream=True``)."""

    def __init__(self, username: str, password: str, *, software: str | None = None,
                 stream: bool = False) -> None:
        self.username, self.password, self.software = username, password, software
        #: the server is reached over a stream (TCP): ChannelData is padded (section 12.5)
        self.stream = stream
        self._keep_alive_after: float | None = None
        self.realm: str | None = None
        self.nonce: str | None = None
        self.key: bytes | None = None
        self.relayed: Address | None = None
        self.mapped: Address | None = None
        self.expires: float | None = None          # allocation expiry on the caller's clock
        self.permissions: dict[str, float] = {}    # peer IP -> expiry
        self.channels: dict[Address, int] = {}     # peer -> channel number
        self._peers_by_channel: dict[int, Address] = {}
        self._pending: dict[bytes, _Pending] = {}
        self._now = 0.0

    # -- requests ------------------------------------------------------------------------
    def _request(self, tid: bytes, method: int, attributes: list, now: float, **extra) -> bytes:
        self._now = now
        pending = _Pending(method, list(attributes), self.key is not None, extra)
        self._pending[bytes(tid)] = pending
        return self._encode(tid, pending)

    def _encode(self, tid: bytes, pending: _Pending) -> bytes:
        attrs = list(pending.attributes)
        if self.software:
            attrs.append((AttrType.SOFTWARE, self.software))
        if self.key is None:
            return encode(StunMessage(pending.method, MessageClass.REQUEST, tid, attrs))
        attrs += [(AttrType.USERNAME, self.username), (AttrType.REALM, self.realm),
                  (AttrType.NONCE, self.nonce)]
        pending.authenticated = True
        return encode(StunMessage(pending.method, MessageClass.REQUEST, tid, attrs),
                      integrity_key=self.key)

    def allocate(self, tid: bytes, now: float, *, lifetime: int = DEFAULT_LIFETIME,
                 dont_fragment: bool = False) -> bytes:
        """An Allocate request for a UDP relay (section 7.1)."""
        attrs = [(REQUESTED_TRANSPORT, bytes((PROTOCOL_UDP, 0, 0, 0))),
                 (LIFETIME, lifetime.to_bytes(4, "big"))]
        if dont_fragment:
            attrs.append((DONT_FRAGMENT, b""))
        return self._request(tid, Method.ALLOCATE, attrs, now)

    def refresh(self, tid: bytes, now: float, *, lifetime: int = DEFAULT_LIFETIME) -> bytes:
        """Refresh (section 8); ``lifetime=0`` deletes the allocation."""
        self._need_allocation()
        return self._request(tid, Method.REFRESH, [(LIFETIME, lifetime.to_bytes(4, "big"))], now)

    def create_permission(self, tid: bytes, peers: list[str], now: float) -> bytes:
        """CreatePermission for peer IPs (section 9; the port is ignored by the server)."""
        self._need_allocation()
        if not peers:
            raise TurnError("CreatePermission needs at least one peer address")
        attrs = [(AttrType.XOR_PEER_ADDRESS, (ip, 0)) for ip in peers]
        return self._request(tid, Method.CREATE_PERMISSION, attrs, now, peers=tuple(peers))

    def channel_bind(self, tid: bytes, peer: Address, number: int, now: float) -> bytes:
        """ChannelBind ``number`` (0x4000-0x4FFF) to ``peer`` (section 12.1); it also
        installs or refreshes the permission for the peer's IP."""
        self._need_allocation()
        if not CHANNEL_MIN <= number <= CHANNEL_MAX:
            raise TurnError(f"channel number 0x{number:04x} is outside 0x4000-0x4FFF",
                            hint="RFC 8656 section 12")
        bound = self._peers_by_channel.get(number)
        if bound is not None and bound != tuple(peer):
            raise TurnError(f"channel 0x{number:04x} is bound to {bound[0]}:{bound[1]}",
                            hint="a channel stays bound to one peer for its lifetime")
        attrs = [(CHANNEL_NUMBER, number.to_bytes(2, "big") + b"\x00\x00"),
                 (AttrType.XOR_PEER_ADDRESS, tuple(peer))]
        return self._request(tid, Method.CHANNEL_BIND, attrs, now, peer=tuple(peer),
                             number=number)

    def send(self, tid: bytes, peer: Address, data: bytes) -> bytes:
        """Data for ``peer``: ChannelData when a channel is bound, else a Send
        indication (section 11.1; indications carry no credentials)."""
        self._need_allocation()
        number = self.channels.get(tuple(peer))
        if number is not None:
            return channel_data(number, data, pad=self.stream)
        return encode(StunMessage(Method.SEND, MessageClass.INDICATION, tid,
                                  [(AttrType.XOR_PEER_ADDRESS, tuple(peer)), (DATA, bytes(data))]))

    def retry(self, old_tid: bytes, new_tid: bytes, now: float) -> bytes:
        """Re-send the request ``old_tid`` (after :class:`Challenged`) as ``new_tid``."""
        pending = self._pending.pop(bytes(old_tid), None)
        if pending is None:
            raise TurnError("no challenged request with that transaction id")
        self._now = now
        self._pending[bytes(new_tid)] = pending
        return self._encode(new_tid, pending)

    def _need_allocation(self) -> None:
        if self.relayed is None:
            raise TurnError("no allocation yet", hint="allocate() first (RFC 8656 section 7)")

    # -- responses and indications -----------------------------------------------------------
    def receive(self, data: bytes, now: float) -> list[Event]:
        """Events from one datagram from the server; [] for anything to ignore."""
        self._now = now
        if is_channel_data(data):
            try:
                number, payload = parse_channel_data(data)
            except TurnError:
                return []
            peer = self._peers_by_channel.get(number)
            return [] if peer is None else [PeerData(peer, payload, number)]
        try:
            msg = decode(data)
        except StunDecodeError:
            return []
        if msg.msg_class == MessageClass.INDICATION and msg.method == Method.DATA:
            peer, payload = msg.get(AttrType.XOR_PEER_ADDRESS), msg.get(DATA)
            if peer is None or not isinstance(payload, bytes):
                return []
            return [PeerData(tuple(peer), payload)]
        pending = self._pending.get(bytes(msg.transaction_id))
        if pending is None or msg.method != pending.method or \
                msg.msg_class not in (MessageClass.SUCCESS, MessageClass.ERROR):
            return []
        if pending.authenticated and not self._authentic(data, msg):
            return []
        tid = bytes(msg.transaction_id)
        if msg.msg_class == MessageClass.ERROR:
            return self._error(tid, pending, msg)
        del self._pending[tid]
        return self._success(pending, msg, now)

    def _authentic(self, data: bytes, msg: StunMessage) -> bool:
        """RFC 8489 section 9.2.4: a response to an authenticated request carries
        MESSAGE-INTEGRITY under the same key. A 401/438 is accepted without it (it
        announces a new nonce, RFC 8489 section 9.2.5)."""
        if msg.msg_class == MessageClass.ERROR and msg.error is not None and \
                msg.error.code in (401, 438) and msg.get(AttrType.MESSAGE_INTEGRITY) is None:
            return True
        try:
            decode(data, integrity_key=self.key)
        except StunDecodeError:
            return False
        return True

    def _error(self, tid: bytes, pending: _Pending, msg: StunMessage) -> list[Event]:
        code = msg.error.code if msg.error else 0
        reason = msg.error.reason if msg.error else ""
        realm, nonce = msg.get(AttrType.REALM), msg.get(AttrType.NONCE)
        first_challenge = code == 401 and not pending.authenticated
        stale = code == 438 and nonce is not None
        if (first_challenge and realm is not None and nonce is not None) or stale:
            if realm is not None:
                self.realm = realm
            self.nonce = nonce
            self.key = long_term_key(self.username, self.realm, self.password)
            return [Challenged(tid, pending.method, code)]
        del self._pending[tid]
        if code == 437 and pending.method == Method.ALLOCATE:
            pass    # 437 to Allocate: this 5-tuple already has an allocation (section 7.2)
        elif code == 437:
            self._forget_allocation()   # to Refresh etc.: the allocation is gone
        return [TurnFailure(tid, pending.method, code, reason)]

    def _success(self, pending: _Pending, msg: StunMessage, now: float) -> list[Event]:
        if pending.method == Method.ALLOCATE:
            relayed = msg.get(AttrType.XOR_RELAYED_ADDRESS)
            lifetime = _u32(msg.get(LIFETIME)) or DEFAULT_LIFETIME
            if relayed is None:
                return [TurnFailure(b"", Method.ALLOCATE, 0, "success without XOR-RELAYED-ADDRESS")]
            self.relayed, self.mapped = tuple(relayed), msg.get(AttrType.XOR_MAPPED_ADDRESS)
            self.expires = now + lifetime
            return [Allocated(self.relayed, self.mapped, lifetime)]
        if pending.method == Method.REFRESH:
            lifetime = _u32(msg.get(LIFETIME)) or 0
            if lifetime == 0:
                self._forget_allocation()
            else:
                self.expires = now + lifetime
            return [Refreshed(lifetime)]
        if pending.method == Method.CREATE_PERMISSION:
            for ip in pending.extra["peers"]:
                self.permissions[ip] = now + PERMISSION_LIFETIME
            return [PermissionsCreated(pending.extra["peers"])]
        if pending.method == Method.CHANNEL_BIND:
            peer, number = pending.extra["peer"], pending.extra["number"]
            self.channels[peer] = number
            self._peers_by_channel[number] = peer
            self.permissions[peer[0]] = now + PERMISSION_LIFETIME
            return [ChannelBound(peer, number)]
        return []

    def _forget_allocation(self) -> None:
        self.relayed = self.mapped = self.expires = None
        self.permissions.clear()
        self.channels.clear()
        self._peers_by_channel.clear()

    # -- timers ------------------------------------------------------------------------------
    def refresh_due(self, now: float, margin: float = 60.0) -> bool:
        """Whether the allocation should be refreshed (section 8: before it expires)."""
        return self.expires is not None and now >= self.expires - margin

    def permission_due(self, ip: str, now: float, margin: float = 60.0) -> bool:
        """Whether ``ip``'s permission is missing or expires within ``margin`` (section 9)."""
        expiry = self.permissions.get(ip)
        return expiry is None or now >= expiry - margin

    def keep_alive(self, tid: bytes, peer: Address, now: float, *,
                   lifetime: int = DEFAULT_LIFETIME, every: float = KEEP_ALIVE_EVERY,
                   margin: float = KEEP_ALIVE_MARGIN, by_channel: bool = True) -> bytes | None:
        """The maintenance request due at ``now`` while data flows to ``peer``, or None.

        A Refresh when the allocation expires within ``margin`` (section 8), else, when
        ``peer``'s permission does: a ChannelBind of its channel again (section 12.1:
        re-binding refreshes the channel and the permission; nothing before a channel
        is bound), or with ``by_channel=False`` (an RFC 6062 TCP allocation, which has
        no channels) a CreatePermission (section 9). At most one request per ``every``
        seconds, so a caller may ask on every send while the answer is on its way; the
        first call sends only what is due already. None without an allocation.
        """
        if self.relayed is None or (self._keep_alive_after is not None and
                                    now < self._keep_alive_after):
            return None
        first = self._keep_alive_after is None
        peer = (str(peer[0]), int(peer[1]))
        out = None
        if self.refresh_due(now, margin):
            out = self.refresh(tid, now, lifetime=lifetime)
        elif self.permission_due(peer[0], now, margin):
            if peer in self.channels:
                out = self.channel_bind(tid, peer, self.channels[peer], now)
            elif not by_channel:
                out = self.create_permission(tid, [peer[0]], now)
        if out is not None or first:             # the first call starts the clock
            self._keep_alive_after = now + every
        return out
