"""Pure (sans-IO) STUN Binding responder: RFC 8489, RFC 5780 NAT behaviour discovery, RFC 3489.

:class:`StunResponder` turns one received message (bytes, source address, the
local endpoint that received it, the transport) into the replies to send: bytes,
the local endpoint to send them from, the destination. No sockets, no clocks;
it counts what it sees in :attr:`StunResponder.stats`.

Behaviour (each rule cites the RFC text it follows):

- Binding success responses carry XOR-MAPPED-ADDRESS and MAPPED-ADDRESS,
  RESPONSE-ORIGIN and, when an alternate IP is configured, OTHER-ADDRESS
  (RFC 5780 section 6.1), then SOFTWARE (RFC 8489 section 14.14). FINGERPRINT is
  added when the request carried one: RFC 5780 section 6.1 requires it only when
  STUN is multiplexed with other traffic, which a request's FINGERPRINT signals.
- CHANGE-REQUEST picks the source of the response from the four endpoints
  A1:P1, A1:P2, A2:P1, A2:P2 as in RFC 5780 section 6.1, Table 1.
- Without an alternate address, a request with CHANGE-REQUEST gets 420 (Unknown
  Attribute) listing it (RFC 5780 section 6 and 6.1). RFC 3489 has no such
  error: a classic request whose CHANGE-REQUEST asks for no change is answered,
  one asking for a change we cannot make gets no answer (counted as
  ``dropped_change_unavailable``), which classic clients read as "filtered"
  (RFC 3489 section 10.1) - some (pystun3) resend forever on an error response.
- Over TCP a response can only go back on the same connection (RFC 5780
  section 3: a server never opens a connection to the client), so a
  CHANGE-REQUEST asking for a change, or RESPONSE-PORT, cannot be honoured and
  gets 420 listing that attribute, the answer RFC 5780 section 5 tells clients
  to expect from a server that does not support it.
- RESPONSE-PORT sends the response to the request's source IP at that port
  (RFC 5780 section 7.5); together with PADDING it is refused with 400 (section
  6.1, and section 10: it prevents amplification).
- PADDING in the request gets PADDING in the response (RFC 5780 section 6.1).
  Its length is capped so that a padded response is never larger than the
  request (or than a plain response with an empty PADDING, for tiny requests),
  and never above :data:`MAX_PADDING`: padding never amplifies.
- Unknown comprehension-required attributes get 420 with UNKNOWN-ATTRIBUTES
  (RFC 8489 section 6.3.1.1); RESPONSE-ADDRESS (RFC 3489 section 11.2.2) is
  refused the same way because it would let anyone aim our responses at a
  third party. Requests for other methods get 400 (RFC 8489 section 6.3.1).
- Classic RFC 3489 requests (no magic cookie) get a classic response:
  MAPPED-ADDRESS, SOURCE-ADDRESS and, with an alternate IP, CHANGED-ADDRESS
  (RFC 3489 section 11.2).
- Anything that is not a well-formed STUN request is dropped and counted:
  ``dropped_non_stun``, ``dropped_malformed`` (also a bad FINGERPRINT, RFC 8489
  section 14.7), ``dropped_not_request`` (indications and responses, RFC 8489
  section 6.3.2-6.3.4), ``dropped_oversize``, ``dropped_bad_source``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stunturn_diag import __version__
from stunturn_diag.errors import StunDecodeError
from stunturn_diag.sansio.stun import (
    Address,
    AttrType,
    ErrorCode,
    MessageClass,
    Method,
    StunMessage,
    decode,
    encode,
    looks_like_stun,
)
from stunturn_diag.sansio.netaddr import unmapped

#: SOFTWARE value of our responses (RFC 8489 section 14.14).
DEFAULT_SOFTWARE = f"stunturn-diag {__version__}"
#: Largest request we decode; anything bigger is dropped (no legitimate Binding
#: request comes close: PADDING is the only large attribute, RFC 5780 section 7.6).
MAX_REQUEST_BYTES = 16 * 1024
#: Largest PADDING value we ever send (an Ethernet MTU, RFC 5780 section 6.1).
MAX_PADDING = 1500
#: At most this many types in one UNKNOWN-ATTRIBUTES (keeps error responses small).
MAX_UNKNOWN_LISTED = 16

TRANSPORTS = ("udp", "tcp")
ROLES = ("primary", "alt-port", "alt-ip", "alt-both")
#: role -> (uses alternate IP, uses alternate port); RFC 5780 section 6.1 A1/A2 x P1/P2.
_ROLE_BITS = {"primary": (False, False), "alt-port": (False, True),
              "alt-ip": (True, False), "alt-both": (True, True)}
_BITS_ROLE = {bits: role for role, bits in _ROLE_BITS.items()}

#: Comprehension-required attributes a Binding request may carry that we understand
#: (RFC 8489 section 18.3, RFC 5780 section 7, RFC 3489 section 11.2). Address and
#: error attributes belong in responses and are ignored in a request; credentials
#: are ignored because this usage needs no authentication (RFC 5780 section 5.2).
UNDERSTOOD_REQUEST_ATTRIBUTES = frozenset({
    AttrType.MAPPED_ADDRESS, AttrType.CHANGE_REQUEST, AttrType.SOURCE_ADDRESS,
    AttrType.CHANGED_ADDRESS, AttrType.USERNAME, 0x0007,  # PASSWORD, RFC 3489 section 11.2.7
    AttrType.MESSAGE_INTEGRITY, AttrType.ERROR_CODE, AttrType.UNKNOWN_ATTRIBUTES,
    AttrType.REFLECTED_FROM, AttrType.REALM, AttrType.NONCE,
    AttrType.MESSAGE_INTEGRITY_SHA256, AttrType.XOR_MAPPED_ADDRESS, AttrType.PADDING,
    AttrType.RESPONSE_PORT,
})

#: Counter names (the keys of :attr:`StunResponder.stats`).
COUNTERS = ("requests", "classic_requests", "responses", "errors_sent",
            "dropped_non_stun", "dropped_malformed", "dropped_not_request",
            "dropped_oversize", "dropped_bad_source", "dropped_change_unavailable")

_REASONS = {400: "Bad Request", 420: "Unknown Attribute"}


@dataclass(frozen=True)
class StunEndpoint:
    """One address:port the STUN responder answers on (RFC 5780 section 7)."""

    ip: str
    port: int
    role: str  # "primary" | "alt-port" | "alt-ip" | "alt-both"

    def as_dict(self) -> dict:
        return {"ip": self.ip, "port": self.port, "role": self.role}


@dataclass(frozen=True)
class Reply:
    """One message to send: ``data`` from ``local`` to ``destination``."""

    data: bytes
    local: StunEndpoint
    destination: Address


@dataclass(frozen=True)
class Outcome:
    """What happened to one received message.

    ``event`` is the counter it was counted under (``responses``, ``errors_sent``
    or a ``dropped_*`` name); ``detail`` says why, for logs.
    """

    event: str
    replies: tuple[Reply, ...] = ()
    detail: str = ""


@dataclass
class StunResponder:
    """Answers STUN Binding requests for a set of local endpoints (RFC 5780 section 6).

    ``endpoints`` holds the primary endpoint and, when an alternate IP is
    configured, all four roles ``primary``, ``alt-port``, ``alt-ip``, ``alt-both``.
    """

    endpoints: list[StunEndpoint]
    software: str | None = DEFAULT_SOFTWARE
    stats: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))

    def __post_init__(self) -> None:
        self._by_role = {ep.role: ep for ep in self.endpoints}
        if "primary" not in self._by_role:
            raise ValueError("a STUN responder needs a primary endpoint")
        unknown = set(self._by_role) - set(ROLES)
        if unknown:
            raise ValueError(f"unknown endpoint roles: {sorted(unknown)}")
        #: RFC 5780 section 6: changes (and OTHER-ADDRESS) need all four endpoints.
        self.can_change = set(self._by_role) == set(ROLES)

    # -- public ---------------------------------------------------------------

    def endpoint(self, role: str) -> StunEndpoint:
        """The local endpoint with this role."""
        return self._by_role[role]

    def handle(self, data: bytes, source: Address, local: StunEndpoint | str,
               transport: str = "udp") -> Outcome:
        """Process one received message; returns the replies and counts the outcome."""
        outcome = self._handle(bytes(data), source, self._local(local), transport)
        self.stats[outcome.event] = self.stats.get(outcome.event, 0) + 1
        return outcome

    # -- processing -----------------------------------------------------------

    def _local(self, local: StunEndpoint | str) -> StunEndpoint:
        """The receiving endpoint; a given StunEndpoint wins (its IP is the real destination
        address when the socket is bound to a wildcard address)."""
        role = local if isinstance(local, str) else local.role
        if role not in self._by_role:
            raise ValueError(f"no local endpoint with role {role!r}")
        return local if isinstance(local, StunEndpoint) else self._by_role[role]

    def _handle(self, data: bytes, source: Address, local: StunEndpoint,
                transport: str) -> Outcome:
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, got {transport!r}")
        try:
            source = _normalise(source)
        except ValueError as exc:
            return Outcome("dropped_bad_source", detail=str(exc))
        if len(data) > MAX_REQUEST_BYTES:
            return Outcome("dropped_oversize", detail=f"{len(data)} bytes")
        if not looks_like_stun(data):
            return Outcome("dropped_non_stun")
        try:
            request = decode(data)
        except StunDecodeError as exc:  # includes StunIntegrityError (bad FINGERPRINT)
            return Outcome("dropped_malformed", detail=str(exc))
        if request.msg_class != MessageClass.REQUEST:
            # RFC 8489 sections 6.3.2-6.3.4: indications get no answer; a server
            # has no transactions of its own, so responses are stray.
            return Outcome("dropped_not_request", detail=request.msg_class.name)
        self.stats["requests"] += 1
        if request.classic:
            self.stats["classic_requests"] += 1
        return self._answer(request, data, source, local, transport)

    def _answer(self, request: StunMessage, data: bytes, source: Address,
                local: StunEndpoint, transport: str) -> Outcome:
        def refuse(code: int, detail: str, unknown: list[int] | None = None) -> Outcome:
            reply = self._error(request, code, unknown)
            return Outcome("errors_sent", (Reply(reply, local, source),), detail)

        if request.method != Method.BINDING:
            return refuse(400, f"method 0x{request.method:03x} is not supported")
        unknown = [t for t in _types(request) if t < 0x8000
                   and t not in UNDERSTOOD_REQUEST_ATTRIBUTES]
        if unknown:
            return refuse(420, "unknown comprehension-required attributes", unknown)

        has_change = request.get(AttrType.CHANGE_REQUEST) is not None
        change = request.change_request
        wants_change = change.change_ip or change.change_port
        if has_change and not self.can_change:
            if request.classic and wants_change and transport == "udp":
                return Outcome("dropped_change_unavailable", detail="no alternate address")
            if wants_change or not request.classic:
                return refuse(420, "CHANGE-REQUEST without an alternate address",
                              [AttrType.CHANGE_REQUEST])
        if wants_change and transport == "tcp":
            return refuse(420, "CHANGE-REQUEST cannot be honoured over TCP",
                          [AttrType.CHANGE_REQUEST])
        padding = request.get(AttrType.PADDING)
        response_port = request.response_port
        if response_port is not None:
            if padding is not None:
                return refuse(400, "RESPONSE-PORT together with PADDING")
            if transport == "tcp":
                return refuse(420, "RESPONSE-PORT cannot be honoured over TCP",
                              [AttrType.RESPONSE_PORT])
            if not 0 < response_port <= 0xFFFF:
                return refuse(400, f"RESPONSE-PORT {response_port} cannot be sent to")

        ip_bit, port_bit = _ROLE_BITS[local.role]
        sender = self._by_role[_BITS_ROLE[(ip_bit ^ change.change_ip,
                                            port_bit ^ change.change_port)]]
        if sender.role == local.role:
            sender = local
        other = (self._by_role[_BITS_ROLE[(not ip_bit, not port_bit)]]
                 if self.can_change else None)
        destination = (source[0], response_port) if response_port else source
        reply = self._success(request, data, source, sender, other, padding is not None)
        return Outcome("responses", (Reply(reply, sender, destination),))

    # -- message building -----------------------------------------------------

    def _success(self, request: StunMessage, data: bytes, mapped: Address,
                 sender: StunEndpoint, other: StunEndpoint | None, padded: bool) -> bytes:
        """Binding success response (RFC 5780 section 6.1; RFC 3489 section 11.2 if classic)."""
        response = StunMessage(Method.BINDING, MessageClass.SUCCESS, request.transaction_id)
        origin = (sender.ip, sender.port)
        if request.classic:
            response.add(AttrType.MAPPED_ADDRESS, mapped)
            response.add(AttrType.SOURCE_ADDRESS, origin)
            if other is not None:
                response.add(AttrType.CHANGED_ADDRESS, (other.ip, other.port))
        else:
            response.add(AttrType.XOR_MAPPED_ADDRESS, mapped)
            response.add(AttrType.MAPPED_ADDRESS, mapped)
            response.add(AttrType.RESPONSE_ORIGIN, origin)
            if other is not None:
                response.add(AttrType.OTHER_ADDRESS, (other.ip, other.port))
            if self.software:
                response.add(AttrType.SOFTWARE, self.software)
        fingerprint = _wants_fingerprint(request)
        if not padded:
            return encode(response, fingerprint=fingerprint)
        # RFC 5780 section 6.1: PADDING MUST be included. Section 10 / no amplification:
        # size it so the whole response is no larger than the request (4 = attribute header).
        bare = len(encode(response, fingerprint=fingerprint))
        length = max(0, min(MAX_PADDING, len(data) - bare - 4)) // 4 * 4
        response.add(AttrType.PADDING, bytes(length))
        return encode(response, fingerprint=fingerprint)  # FINGERPRINT stays last

    def _error(self, request: StunMessage, code: int, unknown: list[int] | None) -> bytes:
        """Binding error response (RFC 8489 sections 6.3.1.1, 14.8, 14.13)."""
        response = StunMessage(request.method, MessageClass.ERROR, request.transaction_id)
        response.add(AttrType.ERROR_CODE, ErrorCode(code, _REASONS[code]))
        if unknown:
            listed = list(unknown[:MAX_UNKNOWN_LISTED])
            if request.classic and len(listed) % 2:  # RFC 3489 section 11.2.10: repeat one
                listed.append(listed[-1])
            response.add(AttrType.UNKNOWN_ATTRIBUTES, tuple(listed))
        if self.software and not request.classic:
            response.add(AttrType.SOFTWARE, self.software)
        return encode(response, fingerprint=_wants_fingerprint(request))


def _types(message: StunMessage) -> list[int]:
    """Attribute types in order, without repeats (linear: a 16 KiB request holds ~4000)."""
    return list(dict.fromkeys(int(kind) for kind, _ in message.attributes))


def _wants_fingerprint(request: StunMessage) -> bool:
    """Mirror FINGERPRINT (RFC 5780 section 6.1); never in a classic response (RFC 3489)."""
    return not request.classic and request.get(AttrType.FINGERPRINT) is not None


def _normalise(source: Address) -> Address:
    """``(ip, port)`` with IPv4-mapped IPv6 turned into IPv4 (the client's real family)."""
    host, port = source[0], source[1]
    if not isinstance(host, str):
        raise ValueError(f"source address {source!r} is not (ip, port)")
    ip = unmapped(host)
    if not isinstance(port, int) or not 0 < port <= 0xFFFF:
        raise ValueError(f"source port {port!r} cannot be answered")
    return (ip, port)
