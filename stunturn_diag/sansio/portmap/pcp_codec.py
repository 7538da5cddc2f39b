"""Sans-IO codec for the Port Control Protocol, version 2 (RFC 6887).

Pure: bytes in, dataclasses out (and back). No sockets, no clocks, no randomness:
the 96-bit mapping nonce (RFC 6887 section 11.1) is passed in by the caller.

Layouts (all integers in network byte order):

- request header (section 7.1), 24 bytes: version (2), R=0 + opcode (7 bits),
  16 reserved bits, requested lifetime (32), PCP client's IP address (128);
- response header (section 7.2), 24 bytes: version, R=1 + opcode, 8 reserved bits,
  result code (8), lifetime (32), epoch time (32), 96 reserved bits;
- MAP opcode data (section 11.1), 36 bytes: mapping nonce (96), protocol (8),
  24 reserved bits, internal port (16), suggested / assigned external port (16),
  suggested / assigned external IP address (128);
- options (section 7.3): code (8), reserved (8), option length (16), data padded to
  a multiple of 4.

Addresses are always 128 bits; IPv4 travels as an IPv4-mapped IPv6 address
``::ffff:a.b.c.d`` (section 5). Messages are a multiple of 4 bytes and at most 1100
bytes (section 7).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import IntEnum

from stunturn_diag.errors import PortMapDecodeError, PortMapEncodeError
from stunturn_diag.sansio.portmap._wire import uint as _u

VERSION = 2
#: the PCP server's UDP port, and the port clients listen on for unsolicited ANNOUNCEs
#: (RFC 6887 section 19.1)
SERVER_PORT = 5351
CLIENT_PORT = 5350
MAX_MESSAGE = 1100
HEADER_LENGTH = 24
MAP_LENGTH = 36
NONCE_LENGTH = 12
RESPONSE_BIT = 0x80


class Opcode(IntEnum):
    """RFC 6887 section 19.2."""

    ANNOUNCE = 0
    MAP = 1
    PEER = 2


class ResultCode(IntEnum):
    """RFC 6887 section 7.4."""

    SUCCESS = 0
    UNSUPP_VERSION = 1
    NOT_AUTHORIZED = 2
    MALFORMED_REQUEST = 3
    UNSUPP_OPCODE = 4
    UNSUPP_OPTION = 5
    MALFORMED_OPTION = 6
    NETWORK_FAILURE = 7
    NO_RESOURCES = 8
    UNSUPP_PROTOCOL = 9
    USER_EX_QUOTA = 10
    CANNOT_PROVIDE_EXTERNAL = 11
    ADDRESS_MISMATCH = 12
    EXCESSIVE_REMOTE_PEERS = 13


class OptionCode(IntEnum):
    """RFC 6887 section 13 (codes 0-127 must be processed, 128-255 are optional)."""

    THIRD_PARTY = 1
    PREFER_FAILURE = 2
    FILTER = 3


#: IANA protocol numbers used by MAP (RFC 6887 section 11.1: 0 = all protocols)
PROTOCOL_ALL = 0
PROTOCOL_TCP = 6
PROTOCOL_UDP = 17

#: result codes after which a retry may succeed (RFC 6887 section 7.4: "long lifetime"
#: errors are permanent for that request, the others are "short lifetime")
TRANSIENT_RESULTS = frozenset({ResultCode.NETWORK_FAILURE, ResultCode.NO_RESOURCES,
                               ResultCode.USER_EX_QUOTA})


def mapped_address(ip: str) -> bytes:
    """The 16-byte PCP form of ``ip``: IPv6 as is, IPv4 as ``::ffff:a.b.c.d`` (section 5)."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError as exc:
        raise PortMapEncodeError(f"not an IP address: {ip!r}") from exc
    if addr.version == 4:
        return b"\x00" * 10 + b"\xff\xff" + addr.packed
    return addr.packed


def unmapped_address(data: bytes) -> str:
    """The text form of a 16-byte PCP address (an IPv4-mapped one becomes IPv4 text)."""
    if len(data) != 16:
        raise PortMapDecodeError(f"a PCP address has 16 bytes, got {len(data)}")
    addr = ipaddress.IPv6Address(data)
    return str(addr.ipv4_mapped) if addr.ipv4_mapped is not None else str(addr)


@dataclass(frozen=True)
class Option:
    """One PCP option (section 7.3); ``data`` without padding."""

    code: int
    data: bytes = b""

    @property
    def mandatory(self) -> bool:
        """Codes 0-127 must be processed by the receiver (section 7.3)."""
        return self.code < 128


@dataclass(frozen=True)
class MapData:
    """MAP opcode data (section 11.1). In a request the port/IP are *suggested*, in a
    response *assigned*. ``protocol`` is an IANA number (17 UDP, 6 TCP, 0 all)."""

    nonce: bytes
    protocol: int
    internal_port: int
    external_port: int = 0
    external_ip: str = "0.0.0.0"


@dataclass(frozen=True)
class Request:
    """A PCP request (section 7.1). ``map`` only for the MAP opcode."""

    opcode: Opcode
    client_ip: str
    lifetime: int = 0
    map: MapData | None = None
    options: tuple[Option, ...] = ()


@dataclass(frozen=True)
class Response:
    """A PCP response (section 7.2). ``lifetime``: of the mapping on success, of the error
    (how long not to retry) otherwise. ``epoch``: seconds since the server's state began
    (section 8.5: a jump backwards means mappings were lost)."""

    opcode: Opcode | int
    result: ResultCode | int
    lifetime: int
    epoch: int
    map: MapData | None = None
    options: tuple[Option, ...] = ()
    version: int = VERSION

    @property
    def ok(self) -> bool:
        return self.result == ResultCode.SUCCESS

    @property
    def result_name(self) -> str:
        try:
            return ResultCode(self.result).name
        except ValueError:
            return f"RESULT_{int(self.result)}"


# -- requests ------------------------------------------------------------------------

def map_request(nonce: bytes, client_ip: str, protocol: int, internal_port: int, *,
                lifetime: int = 7200, suggested_port: int = 0,
                suggested_ip: str | None = None) -> Request:
    """A MAP request (section 11.1). ``lifetime`` 0 deletes the mapping (section 15).
    ``suggested_ip`` defaults to the all-zeros address of the client's family."""
    if suggested_ip is None:
        suggested_ip = "0.0.0.0" if ipaddress.ip_address(client_ip).version == 4 else "::"
    return Request(Opcode.MAP, client_ip, lifetime,
                   MapData(nonce, protocol, internal_port, suggested_port, suggested_ip))


def announce_request(client_ip: str) -> Request:
    """ANNOUNCE (section 14.1): lifetime 0, no opcode data; a server answers SUCCESS,
    which makes it a cheap "is there a PCP server?" question."""
    return Request(Opcode.ANNOUNCE, client_ip, 0)


def _encode_map(m: MapData) -> bytes:
    if len(m.nonce) != NONCE_LENGTH:
        raise PortMapEncodeError(f"the mapping nonce has 12 bytes, got {len(m.nonce)}")
    return (m.nonce + bytes((_u(m.protocol, 8, "protocol"), 0, 0, 0))
            + _u(m.internal_port, 16, "internal port").to_bytes(2, "big")
            + _u(m.external_port, 16, "external port").to_bytes(2, "big")
            + mapped_address(m.external_ip))


def _encode_options(options: tuple[Option, ...]) -> bytes:
    out = b""
    for opt in options:
        data = bytes(opt.data)
        out += bytes((_u(opt.code, 8, "option code"), 0)) + _u(len(data), 16, "option length") \
            .to_bytes(2, "big") + data + b"\x00" * (-len(data) % 4)
    return out


def _opcode_body(opcode: int, map_data: MapData | None) -> bytes:
    if opcode == Opcode.MAP:
        if map_data is None:
            raise PortMapEncodeError("a MAP message needs its opcode data (MapData)")
        return _encode_map(map_data)
    if map_data is not None:
        raise PortMapEncodeError(f"opcode {opcode} carries no MAP data")
    return b""


def _check_size(data: bytes) -> bytes:
    if len(data) > MAX_MESSAGE:
        raise PortMapEncodeError(f"PCP message of {len(data)} bytes is over {MAX_MESSAGE}")
    return data


def encode_request(req: Request) -> bytes:
    """Wire bytes of ``req`` (section 7.1)."""
    head = (bytes((VERSION, _u(int(req.opcode), 7, "opcode"), 0, 0))
            + _u(req.lifetime, 32, "lifetime").to_bytes(4, "big") + mapped_address(req.client_ip))
    return _check_size(head + _opcode_body(req.opcode, req.map) + _encode_options(req.options))


def encode_response(resp: Response) -> bytes:
    """Wire bytes of ``resp`` (section 7.2); used by tests and fake servers."""
    head = (bytes((VERSION, RESPONSE_BIT | _u(int(resp.opcode), 7, "opcode"), 0,
                   _u(int(resp.result), 8, "result code")))
            + _u(resp.lifetime, 32, "lifetime").to_bytes(4, "big")
            + _u(resp.epoch, 32, "epoch").to_bytes(4, "big") + b"\x00" * 12)
    return _check_size(head + _opcode_body(resp.opcode, resp.map) + _encode_options(resp.options))


# -- decoding ------------------------------------------------------------------------

def _decode_map(data: bytes) -> MapData:
    if len(data) < MAP_LENGTH:
        raise PortMapDecodeError(f"MAP opcode data has {len(data)} bytes, expected {MAP_LENGTH}")
    return MapData(nonce=data[:12], protocol=data[12],
                   internal_port=int.from_bytes(data[16:18], "big"),
                   external_port=int.from_bytes(data[18:20], "big"),
                   external_ip=unmapped_address(data[20:36]))


def _decode_options(data: bytes) -> tuple[Option, ...]:
    out, i = [], 0
    while i < len(data):
        if len(data) - i < 4:
            raise PortMapDecodeError("truncated PCP option header")
        code, length = data[i], int.from_bytes(data[i + 2:i + 4], "big")
        end = i + 4 + length
        if end > len(data):
            raise PortMapDecodeError(f"PCP option {code} claims {length} bytes, "
                                     f"{len(data) - i - 4} left")
        out.append(Option(code, data[i + 4:end]))
        i = end + (-length % 4)
    return tuple(out)


def _check_header(data: bytes, response: bool) -> tuple[Opcode | int, bytes]:
    """Length (section 7), R bit and version checks; the opcode and what follows the
    24-byte header."""
    what = "response" if response else "request"
    if len(data) < HEADER_LENGTH:
        raise PortMapDecodeError(f"a PCP {what} has at least 24 bytes, got {len(data)}")
    if len(data) > MAX_MESSAGE or len(data) % 4:
        raise PortMapDecodeError(f"PCP message length {len(data)} is over {MAX_MESSAGE} "
                                 "or not a multiple of 4 (RFC 6887 section 7)")
    if bool(data[1] & RESPONSE_BIT) != response:
        raise PortMapDecodeError(f"the R bit is {int(not response)}: this is not a {what}")
    if data[0] != VERSION:
        raise PortMapDecodeError(f"PCP version {data[0]}, expected {VERSION}")
    return _opcode(data[1] & 0x7F), data[HEADER_LENGTH:]


def _opcode(value: int) -> Opcode | int:
    try:
        return Opcode(value)
    except ValueError:
        return value


def decode_response(data: bytes) -> Response:
    """Parse a response. A NAT-PMP server (RFC 6886 section 3.5 / RFC 6887 section 9)
    answers a PCP request with a version-0 "unsupported version" message: that comes
    back as ``Response(version=0, result=UNSUPP_VERSION)``, not an error."""
    data = bytes(data)
    if len(data) >= 4 and data[0] == 0 and data[1] & RESPONSE_BIT:   # NAT-PMP's answer
        result = int.from_bytes(data[2:4], "big")
        epoch = int.from_bytes(data[4:8], "big") if len(data) >= 8 else 0
        return Response(_opcode(data[1] & 0x7F), result, 0, epoch, version=0)
    opcode, body = _check_header(data, response=True)
    map_data = None
    if opcode == Opcode.MAP and len(body) >= MAP_LENGTH:
        map_data, body = _decode_map(body), body[MAP_LENGTH:]
    elif opcode == Opcode.MAP and data[3] == ResultCode.SUCCESS:
        raise PortMapDecodeError("a successful MAP response without its opcode data")
    result: ResultCode | int
    try:
        result = ResultCode(data[3])
    except ValueError:
        result = data[3]
    return Response(opcode, result, int.from_bytes(data[4:8], "big"),
                    int.from_bytes(data[8:12], "big"), map_data, _decode_options(body))


def decode_request(data: bytes) -> Request:
    """Parse a request (for fake servers and tests)."""
    data = bytes(data)
    opcode, body = _check_header(data, response=False)
    map_data = None
    if opcode == Opcode.MAP:
        map_data, body = _decode_map(body), body[MAP_LENGTH:]
    return Request(opcode, unmapped_address(data[8:24]), int.from_bytes(data[4:8], "big"),
                   map_data, _decode_options(body))


def matches(req: Request, resp: Response) -> bool:
    """Whether ``resp`` answers ``req``: same opcode and, for MAP, the same nonce,
    protocol and internal port (RFC 6887 section 11.3: otherwise it is silently dropped)."""
    if resp.version != VERSION:
        return True           # a NAT-PMP server's UNSUPP_VERSION answers any request
    if int(resp.opcode) != int(req.opcode):
        return False
    if req.map is None or resp.map is None:
        return req.map is None or not resp.ok
    return (resp.map.nonce == req.map.nonce and resp.map.protocol == req.map.protocol
            and resp.map.internal_port == req.map.internal_port)


__all__ = ["VERSION", "SERVER_PORT", "CLIENT_PORT", "MAX_MESSAGE", "Opcode", "ResultCode",
           "OptionCode", "Option", "MapData", "Request", "Response", "PROTOCOL_ALL",
           "PROTOCOL_TCP", "PROTOCOL_UDP", "TRANSIENT_RESULTS", "mapped_address",
           "unmapped_address", "map_request", "announce_request", "encode_request",
           "encode_response", "decode_request", "decode_response", "matches"]
