"""Sans-IO codec for NAT Port Mapping Protocol (NAT-PMP, RFC 6886).

Pure: bytes in, dataclasses out (and back). Layouts (network byte order):

- external address request (section 3.2), 2 bytes: version 0, opcode 0;
- its response, 12 bytes: version 0, opcode 128, result code (16), seconds since
  start of epoch (32), external IPv4 address (32);
- mapping request (section 3.3), 12 bytes: version 0, opcode 1 (UDP) or 2 (TCP),
  16 reserved bits, internal port (16), suggested external port (16), requested
  lifetime in seconds (32); lifetime 0 with external port 0 deletes (section 3.4);
- its response, 16 bytes: version 0, opcode 128 + request opcode, result code (16),
  epoch (32), internal port (16), mapped external port (16), lifetime (32).

A non-zero result leaves the fields after the epoch undefined (section 3.5); an
"unsupported version/opcode" answer may be only 8 bytes long, and is decoded so.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import IntEnum

from stunturn_diag.errors import PortMapDecodeError, PortMapEncodeError
from stunturn_diag.sansio.portmap._wire import uint as _u

VERSION = 0
SERVER_PORT = 5351          # RFC 6886 section 3.1
ANNOUNCE_PORT = 5350        # the gateway multicasts address changes to 224.0.0.1:5350
RESPONSE_BIT = 0x80


class Opcode(IntEnum):
    """RFC 6886 sections 3.2 and 3.3 (responses add 128)."""

    EXTERNAL_ADDRESS = 0
    MAP_UDP = 1
    MAP_TCP = 2


class ResultCode(IntEnum):
    """RFC 6886 section 3.5."""

    SUCCESS = 0
    UNSUPPORTED_VERSION = 1
    NOT_AUTHORIZED = 2          # "Not Authorized/Refused"
    NETWORK_FAILURE = 3         # e.g. the gateway has no DHCP lease / no external address
    OUT_OF_RESOURCES = 4
    UNSUPPORTED_OPCODE = 5


def protocol_opcode(protocol: str) -> Opcode:
    """``"udp"`` -> MAP_UDP, ``"tcp"`` -> MAP_TCP."""
    try:
        return {"udp": Opcode.MAP_UDP, "tcp": Opcode.MAP_TCP}[protocol]
    except KeyError:
        raise PortMapEncodeError(f"NAT-PMP maps 'udp' or 'tcp', not {protocol!r}") from None


@dataclass(frozen=True)
class ExternalAddressRequest:
    """Section 3.2."""


@dataclass(frozen=True)
class MappingRequest:
    """Section 3.3. ``lifetime`` 0 deletes the mapping (section 3.4; then
    ``suggested_port`` must be 0; ``internal_port`` 0 too deletes them all)."""

    opcode: Opcode
    internal_port: int
    suggested_port: int = 0
    lifetime: int = 7200


@dataclass(frozen=True)
class ExternalAddressResponse:
    result: ResultCode | int
    epoch: int
    external_ip: str | None          # None unless result is SUCCESS

    @property
    def ok(self) -> bool:
        return self.result == ResultCode.SUCCESS


@dataclass(frozen=True)
class MappingResponse:
    opcode: Opcode | int
    result: ResultCode | int
    epoch: int
    internal_port: int = 0
    external_port: int = 0
    lifetime: int = 0

    @property
    def ok(self) -> bool:
        return self.result == ResultCode.SUCCESS


@dataclass(frozen=True)
class ErrorResponse:
    """An answer without a body: unsupported version/opcode, or any short error reply."""

    opcode: int
    result: ResultCode | int
    epoch: int

    ok = False


Response = ExternalAddressResponse | MappingResponse | ErrorResponse


def encode_request(req: ExternalAddressRequest | MappingRequest) -> bytes:
    """Wire bytes of a request."""
    if isinstance(req, ExternalAddressRequest):
        return bytes((VERSION, Opcode.EXTERNAL_ADDRESS))
    if req.lifetime == 0 and req.suggested_port != 0:
        raise PortMapEncodeError("a delete (lifetime 0) must suggest external port 0",
                                 hint="RFC 6886 section 3.4")
    return (bytes((VERSION, int(req.opcode), 0, 0))
            + _u(req.internal_port, 16, "internal port").to_bytes(2, "big")
            + _u(req.suggested_port, 16, "suggested external port").to_bytes(2, "big")
            + _u(req.lifetime, 32, "lifetime").to_bytes(4, "big"))


def decode_request(data: bytes) -> ExternalAddressRequest | MappingRequest:
    """Parse a request (for fake gateways and tests)."""
    data = bytes(data)
    if len(data) < 2 or data[0] != VERSION:
        raise PortMapDecodeError("not a NAT-PMP version 0 request")
    if data[1] == Opcode.EXTERNAL_ADDRESS:
        return ExternalAddressRequest()
    if data[1] not in (Opcode.MAP_UDP, Opcode.MAP_TCP):
        raise PortMapDecodeError(f"unknown NAT-PMP opcode {data[1]}")
    if len(data) < 12:
        raise PortMapDecodeError(f"a mapping request has 12 bytes, got {len(data)}")
    return MappingRequest(Opcode(data[1]), int.from_bytes(data[4:6], "big"),
                          int.from_bytes(data[6:8], "big"), int.from_bytes(data[8:12], "big"))


def _result(value: int) -> ResultCode | int:
    try:
        return ResultCode(value)
    except ValueError:
        return value


def decode_response(data: bytes) -> Response:
    """Parse a response (section 3.5: version 0, opcode >= 128)."""
    data = bytes(data)
    if len(data) < 4:
        raise PortMapDecodeError(f"a NAT-PMP response has at least 8 bytes, got {len(data)}")
    if data[0] != VERSION:
        raise PortMapDecodeError(f"NAT-PMP version {data[0]}, expected 0",
                                 hint="a PCP server (version 2) answered; use PCP")
    if not data[1] & RESPONSE_BIT:
        raise PortMapDecodeError("opcode below 128: this is a request, not a response")
    op, result = data[1] & 0x7F, _result(int.from_bytes(data[2:4], "big"))
    epoch = int.from_bytes(data[4:8], "big") if len(data) >= 8 else 0
    if op == Opcode.EXTERNAL_ADDRESS and len(data) >= 12:
        ip = str(ipaddress.IPv4Address(data[8:12])) if result == ResultCode.SUCCESS else None
        return ExternalAddressResponse(result, epoch, ip)
    if op in (Opcode.MAP_UDP, Opcode.MAP_TCP) and len(data) >= 16:
        return MappingResponse(Opcode(op), result, epoch, int.from_bytes(data[8:10], "big"),
                               int.from_bytes(data[10:12], "big"),
                               int.from_bytes(data[12:16], "big"))
    if result == ResultCode.SUCCESS:
        raise PortMapDecodeError(f"a successful NAT-PMP response to opcode {op} is only "
                                 f"{len(data)} bytes long")
    return ErrorResponse(op, result, epoch)


def encode_response(resp: Response) -> bytes:
    """Wire bytes of a response (fake gateways and tests)."""
    if isinstance(resp, ErrorResponse):
        op = resp.opcode
    elif isinstance(resp, ExternalAddressResponse):
        op = Opcode.EXTERNAL_ADDRESS
    else:
        op = resp.opcode
    head = (bytes((VERSION, RESPONSE_BIT | _u(int(op), 7, "opcode")))
            + _u(int(resp.result), 16, "result code").to_bytes(2, "big")
            + _u(resp.epoch, 32, "epoch").to_bytes(4, "big"))
    if isinstance(resp, ExternalAddressResponse):
        return head + ipaddress.IPv4Address(resp.external_ip or "0.0.0.0").packed
    if isinstance(resp, MappingResponse):
        return (head + _u(resp.internal_port, 16, "internal port").to_bytes(2, "big")
                + _u(resp.external_port, 16, "external port").to_bytes(2, "big")
                + _u(resp.lifetime, 32, "lifetime").to_bytes(4, "big"))
    return head


def matches(req: ExternalAddressRequest | MappingRequest, resp: Response) -> bool:
    """Whether ``resp`` answers ``req`` (same opcode; a mapping: same internal port)."""
    want = Opcode.EXTERNAL_ADDRESS if isinstance(req, ExternalAddressRequest) else req.opcode
    got = resp.opcode if not isinstance(resp, ExternalAddressResponse) else Opcode.EXTERNAL_ADDRESS
    if int(got) != int(want):
        return False
    if isinstance(req, MappingRequest) and isinstance(resp, MappingResponse) and resp.ok:
        return resp.internal_port == req.internal_port
    return True


def epoch_lost_state(previous_epoch: int, previous_seen: float, epoch: int, now: float) -> bool:
    """RFC 6886 section 3.6: the gateway lost its mappings (rebooted) when its epoch is
    lower than expected: below the previous epoch plus 7/8 of the time elapsed since,
    less 2 seconds of slack. The caller then re-creates its mappings."""
    elapsed = max(0.0, now - previous_seen)
    return epoch < previous_epoch or epoch + 2 < previous_epoch + elapsed * 7 / 8
