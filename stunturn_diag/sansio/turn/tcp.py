"""Sans-IO TURN TCP allocations (RFC 6062) on :class:`~.client.TurnClient`.

No sockets, no clocks, no randomness, like the UDP client: transaction ids and the
time come from the caller.

- Framing (RFC 8489 section 6.2.2, RFC 8656 section 12.5): over a TCP connection to
  the server STUN messages (20-byte header + the length it states) and ChannelData
  (4-byte header + data padded to 4) follow each other with no separator.
  :class:`StreamFramer` cuts a byte stream into them and says how many bytes the next
  one still needs (:meth:`StreamFramer.needed`), so a runner can read a data
  connection's ConnectionBind answer without reading past it.
- :class:`TcpTurnClient` (the control connection, RFC 6062 section 4): Allocate with
  REQUESTED-TRANSPORT 6 (TCP; no DONT-FRAGMENT, section 4.1), CreatePermission and
  Refresh as for UDP, Connect (method 0x000A, section 4.3) with XOR-PEER-ADDRESS whose
  success carries CONNECTION-ID (0x002A) -> :class:`Connected`; the server's
  ConnectionAttempt indication (0x000C, section 4.4: a peer connected to our relayed
  address) -> :class:`ConnectionAttempt`. Send indications and channels do not exist
  on a TCP allocation (section 4.1): :meth:`send` and :meth:`channel_bind` refuse.
- :class:`ConnectionBinder` (one data connection, sections 4.3 and 4.4): a
  ConnectionBind (0x000B) with the CONNECTION-ID under the control connection's
  long-term credential. Its 401 or 438 with a fresh nonce (the server keeps nonces
  per client connection) is a :class:`~.client.Challenged` once; success is
  :class:`ConnectionBound`, after which the connection carries only the peer's bytes.
- Errors stay events: 446 Connection Already Exists, 447 Connection Timeout or
  Failure (section 6.3), 403 (no permission for the peer), 437, 400...
"""

from __future__ import annotations

from dataclasses import dataclass

from stunturn_diag.errors import TurnError, TurnFramingError
from stunturn_diag.sansio.stun import (MAGIC_COOKIE, AttrType, MessageClass, Method,
                                       StunMessage, decode)
from stunturn_diag.sansio.stun.values import Address
from stunturn_diag.errors import StunDecodeError

from .client import (CHANNEL_MAX, DEFAULT_LIFETIME, LIFETIME, REQUESTED_TRANSPORT, Event,
                     TurnClient, TurnFailure, _Pending, _u32)

#: RFC 6062 section 6.2: the CONNECTION-ID attribute (a 32-bit value)
CONNECTION_ID = 0x002A
#: RFC 6062 section 6.3 / IANA: REQUESTED-TRANSPORT value for TCP
PROTOCOL_TCP = 6
#: RFC 6062 section 6.3 error codes
CONNECTION_ALREADY_EXISTS = 446
CONNECTION_TIMEOUT_OR_FAILURE = 447
#: RFC 6062 section 5.3: the server drops a peer connection not bound within 30 s
BIND_WITHIN = 30.0
#: the longest frame accepted on a stream (a STUN header's 16-bit length + header)
MAX_FRAME = 20 + 0xFFFF


def frame_length(head: bytes) -> int | None:
    """Total bytes of the frame that starts with ``head`` (at least 4 bytes), None
    while fewer than 4 are known. STUN: 20 + length; ChannelData: 4 + length padded
    to 4 (section 12.5, padding is mandatory over TCP). TurnFramingError for anything
    else: the two top bits 0b10/0b11, a channel number outside 0x4000-0x4FFF (section
    12), a STUN length that is no multiple of 4 or, once 8 bytes are known, no magic
    cookie (RFC 8489 section 5): the stream is not TURN, or out of step."""
    if len(head) < 4:
        return None
    kind = head[0] >> 6
    length = int.from_bytes(head[2:4], "big")
    if kind == 0b00:
        if length % 4:
            raise TurnFramingError(f"a STUN message length of {length} is not a multiple of 4",
                                   hint="RFC 8489 section 5: the stream is out of step")
        if len(head) >= 8 and bytes(head[4:8]) != MAGIC_COOKIE.to_bytes(4, "big"):
            raise TurnFramingError("a STUN header without the magic cookie",
                                   hint="RFC 8489 section 5: the stream is out of step")
        return 20 + length
    if kind == 0b01:
        number = int.from_bytes(head[:2], "big")
        if number > CHANNEL_MAX:
            raise TurnFramingError(f"ChannelData on channel 0x{number:04x} (reserved: "
                                   "0x5000-0x7FFF)", hint="RFC 8656 section 12")
        return 4 + length + (-length % 4)
    raise TurnFramingError(f"0x{head[0]:02x} starts neither a STUN message nor ChannelData",
                           hint="RFC 8656 section 12.5: the stream is out of step")


class StreamFramer:
    """Bytes of one TCP connection to the server in, whole frames out (the deframer of
    every stream to a TURN server: RFC 6062 control and data connections, and a UDP
    allocation over TCP, :class:`~.client.TurnClient` with ``stream=True``). A partial
    frame stays buffered until the rest arrives; garbage raises TurnFramingError."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Every frame ``data`` completes, in order; the rest is kept."""
        self._buf += data
        frames = []
        while True:
            total = frame_length(bytes(self._buf[:8]))
            if total is None or len(self._buf) < total:
                return frames
            frames.append(bytes(self._buf[:total]))
            del self._buf[:total]

    def needed(self) -> int:
        """Bytes still missing before the next frame is whole (4 while the header is
        unknown); reading no more than this never takes bytes past the frame."""
        total = frame_length(bytes(self._buf[:4]))
        return 4 - len(self._buf) if total is None else total - len(self._buf)

    @property
    def buffered(self) -> bytes:
        return bytes(self._buf)


# -- events ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Connected(Event):
    """Connect succeeded (RFC 6062 section 4.3): bind ``connection_id`` on a new data
    connection."""

    peer: Address
    connection_id: int


@dataclass(frozen=True)
class ConnectionAttempt(Event):
    """A peer connected to our relayed address (section 4.4); bind ``connection_id``
    on a new data connection within 30 s or the server drops it."""

    peer: Address
    connection_id: int


@dataclass(frozen=True)
class ConnectionBound(Event):
    """ConnectionBind succeeded: the data connection now carries the peer's bytes."""

    connection_id: int


def _cid(value: object) -> int | None:
    return _u32(value) if isinstance(value, bytes) else None


class TcpTurnClient(TurnClient):
    """The control connection's view of one TCP allocation (RFC 6062)."""

    def allocate(self, tid: bytes, now: float, *, lifetime: int = DEFAULT_LIFETIME,
                 dont_fragment: bool = False) -> bytes:
        """An Allocate request for a TCP relay (RFC 6062 section 4.1)."""
        if dont_fragment:
            raise TurnError("DONT-FRAGMENT does not apply to a TCP allocation",
                            hint="RFC 6062 section 4.1")
        attrs = [(REQUESTED_TRANSPORT, bytes((PROTOCOL_TCP, 0, 0, 0))),
                 (LIFETIME, lifetime.to_bytes(4, "big"))]
        return self._request(tid, Method.ALLOCATE, attrs, now)

    def connect(self, tid: bytes, peer: Address, now: float) -> bytes:
        """Connect: the server opens a TCP connection from our relayed address to
        ``peer`` (section 4.3; a permission for the peer's IP must exist)."""
        self._need_allocation()
        return self._request(tid, Method.CONNECT, [(AttrType.XOR_PEER_ADDRESS, tuple(peer))],
                             now, peer=(str(peer[0]), int(peer[1])))

    def send(self, tid: bytes, peer: Address, data: bytes) -> bytes:
        raise TurnError("a TCP allocation carries data on data connections, not in Send "
                        "indications", hint="RFC 6062 section 4.1: connect() + ConnectionBind")

    def channel_bind(self, tid: bytes, peer: Address, number: int, now: float) -> bytes:
        raise TurnError("a TCP allocation has no channels", hint="RFC 6062 section 4.1")

    def binder(self, connection_id: int) -> "ConnectionBinder":
        """The machine for one data connection, under this allocation's credential."""
        if self.key is None:
            raise TurnError("no credential yet", hint="allocate() first")
        return ConnectionBinder(self, connection_id)

    def receive(self, data: bytes, now: float) -> list[Event]:
        """Events from one frame of the control connection (see :class:`StreamFramer`)."""
        try:
            msg = decode(data)
        except StunDecodeError:
            return []
        if msg.msg_class == MessageClass.INDICATION and msg.method == Method.CONNECTION_ATTEMPT:
            peer, cid = msg.get(AttrType.XOR_PEER_ADDRESS), _cid(msg.get(CONNECTION_ID))
            if peer is None or cid is None or self.relayed is None:
                return []
            return [ConnectionAttempt(tuple(peer), cid)]
        if msg.msg_class == MessageClass.INDICATION:
            return []          # no Data indications on a TCP allocation
        return super().receive(data, now)

    def _success(self, pending: _Pending, msg: StunMessage, now: float) -> list[Event]:
        if pending.method == Method.CONNECT:
            cid = _cid(msg.get(CONNECTION_ID))
            if cid is None:
                return [TurnFailure(b"", Method.CONNECT, 0, "success without CONNECTION-ID")]
            return [Connected(pending.extra["peer"], cid)]
        return super()._success(pending, msg, now)


class ConnectionBinder(TurnClient):
    """ConnectionBind on one new data connection (RFC 6062 sections 4.3, 4.4)."""

    def __init__(self, control: TurnClient, connection_id: int) -> None:
        super().__init__(control.username, control.password, software=control.software)
        self.realm, self.nonce, self.key = control.realm, control.nonce, control.key
        if not 0 <= int(connection_id) <= 0xFFFFFFFF:
            raise TurnError(f"CONNECTION-ID is 32 bits, got {connection_id!r}")
        self.connection_id = int(connection_id)
        self.bound = False
        self._rechallenged = False

    def bind(self, tid: bytes, now: float) -> bytes:
        """The ConnectionBind request, the first bytes of the data connection."""
        attrs = [(CONNECTION_ID, self.connection_id.to_bytes(4, "big"))]
        return self._request(tid, Method.CONNECTION_BIND, attrs, now)

    def _error(self, tid: bytes, pending: _Pending, msg: StunMessage) -> list[Event]:
        code = msg.error.code if msg.error else 0
        nonce = msg.get(AttrType.NONCE)
        # a new connection is a new client to the server: its nonce may differ from the
        # control connection's, so one 401 carrying a new nonce is a challenge (more
        # than one, or one without a new nonce, means the credential is refused)
        if code == 401 and pending.authenticated and not self._rechallenged and \
                nonce is not None and nonce != self.nonce:
            self._rechallenged = True
            pending.authenticated = False
        return super()._error(tid, pending, msg)

    def _success(self, pending: _Pending, msg: StunMessage, now: float) -> list[Event]:
        if pending.method == Method.CONNECTION_BIND:
            self.bound = True
            return [ConnectionBound(self.connection_id)]
        return []

    def _need_allocation(self) -> None:
        """A data connection has no allocation of its own."""
