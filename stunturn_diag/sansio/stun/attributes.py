"""Attribute value codecs: bytes <-> Python values, one pair per value shape.

Every decoder raises only :class:`StunDecodeError`; every encoder only
:class:`StunEncodeError`. ``xor_key`` is the 16 header bytes after type and
length (magic cookie + transaction id, RFC 8489 section 14.2); for a classic
RFC 3489 message it is its 16-byte transaction id.
"""

from __future__ import annotations

import ipaddress
from typing import Callable

from stunturn_diag.errors import StunDecodeError, StunEncodeError
from stunturn_diag.sansio.stun.constants import (
    CHANGE_IP_FLAG,
    CHANGE_PORT_FLAG,
    FAMILY_IPV4,
    FAMILY_IPV6,
    AttrType,
)
from stunturn_diag.sansio.stun.values import Address, ChangeRequest, ErrorCode

Decoder = Callable[[bytes, bytes], object]
Encoder = Callable[[object, bytes], bytes]

#: RFC 8489 sections 14.3, 14.9, 14.10, 14.14: upper bounds on text attributes (bytes).
TEXT_LIMITS = {
    AttrType.USERNAME: 513,
    AttrType.REALM: 763,
    AttrType.NONCE: 763,
    AttrType.SOFTWARE: 763,
}


def _xor(data: bytes, key: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(data, key))


# -- addresses (RFC 8489 sections 14.1 and 14.2) -----------------------------

def _decode_address(value: bytes, xor_key: bytes | None) -> Address:
    if len(value) < 4:
        raise StunDecodeError(f"address attribute too short ({len(value)} bytes)",
                              hint="a MAPPED-ADDRESS style value has at least 8 bytes")
    family = value[1]
    if family == FAMILY_IPV4:
        want = 8
    elif family == FAMILY_IPV6:
        want = 20
    else:
        raise StunDecodeError(f"unknown address family 0x{family:02x}",
                              hint="RFC 8489 section 14.1 allows 0x01 (IPv4) and 0x02 (IPv6)")
    if len(value) != want:
        raise StunDecodeError(f"address attribute of family {family} has {len(value)} bytes, "
                              f"expected {want}")
    port_bytes, addr_bytes = value[2:4], value[4:]
    if xor_key is not None:
        port_bytes = _xor(port_bytes, xor_key[:2])
        addr_bytes = _xor(addr_bytes, xor_key)
    port = int.from_bytes(port_bytes, "big")
    ip = ipaddress.IPv4Address(addr_bytes) if family == FAMILY_IPV4 else ipaddress.IPv6Address(addr_bytes)
    return (str(ip), port)


def _encode_address(value: object, xor_key: bytes | None) -> bytes:
    try:
        host, port = value  # type: ignore[misc]
        ip = ipaddress.ip_address(host)
        port = int(port)
    except (TypeError, ValueError) as exc:
        raise StunEncodeError(f"not an (ip, port) address: {value!r}",
                              hint="give a tuple like ('192.0.2.1', 3478)") from exc
    if not 0 <= port <= 0xFFFF:
        raise StunEncodeError(f"port {port} out of range 0..65535")
    family = FAMILY_IPV4 if ip.version == 4 else FAMILY_IPV6
    port_bytes, addr_bytes = port.to_bytes(2, "big"), ip.packed
    if xor_key is not None:
        port_bytes = _xor(port_bytes, xor_key[:2])
        addr_bytes = _xor(addr_bytes, xor_key)
    return bytes((0, family)) + port_bytes + addr_bytes


def decode_plain_address(value: bytes, xor_key: bytes) -> Address:
    """MAPPED-ADDRESS and friends (RFC 8489 section 14.1, RFC 5780 sections 7.3/7.4)."""
    return _decode_address(value, None)


def encode_plain_address(value: object, xor_key: bytes) -> bytes:
    return _encode_address(value, None)


def decode_xor_address(value: bytes, xor_key: bytes) -> Address:
    """XOR-MAPPED-ADDRESS (RFC 8489 section 14.2): port ^ cookie>>16, IP ^ cookie(+tid)."""
    return _decode_address(value, xor_key)


def encode_xor_address(value: object, xor_key: bytes) -> bytes:
    return _encode_address(value, xor_key)


# -- RFC 5780 attributes -----------------------------------------------------

def decode_change_request(value: bytes, xor_key: bytes) -> ChangeRequest:
    """CHANGE-REQUEST (RFC 5780 section 7.2): 32 bits, flags A (0x4) and B (0x2)."""
    if len(value) != 4:
        raise StunDecodeError(f"CHANGE-REQUEST has {len(value)} bytes, expected 4")
    flags = int.from_bytes(value, "big")
    return ChangeRequest(bool(flags & CHANGE_IP_FLAG), bool(flags & CHANGE_PORT_FLAG))


def encode_change_request(value: object, xor_key: bytes) -> bytes:
    try:
        change_ip, change_port = value  # type: ignore[misc]
    except (TypeError, ValueError) as exc:
        raise StunEncodeError(f"not a ChangeRequest: {value!r}") from exc
    flags = (CHANGE_IP_FLAG if change_ip else 0) | (CHANGE_PORT_FLAG if change_port else 0)
    return flags.to_bytes(4, "big")


def decode_response_port(value: bytes, xor_key: bytes) -> int:
    """RESPONSE-PORT (RFC 5780 section 7.5): 16-bit port, then 16 bits reserved."""
    if len(value) != 4:
        raise StunDecodeError(f"RESPONSE-PORT has {len(value)} bytes, expected 4")
    return int.from_bytes(value[:2], "big")


def encode_response_port(value: object, xor_key: bytes) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFF:
        raise StunEncodeError(f"RESPONSE-PORT must be a port 0..65535, got {value!r}")
    return value.to_bytes(2, "big") + b"\x00\x00"


# -- ERROR-CODE, UNKNOWN-ATTRIBUTES, text, raw --------------------------------

def decode_error_code(value: bytes, xor_key: bytes) -> ErrorCode:
    """ERROR-CODE (RFC 8489 section 14.8): 21 reserved bits, class (3), number (8), reason."""
    if len(value) < 4:
        raise StunDecodeError(f"ERROR-CODE has {len(value)} bytes, expected at least 4")
    klass, number = value[2] & 0x07, value[3]
    if not 1 <= klass <= 6 or number > 99:
        raise StunDecodeError(f"ERROR-CODE class {klass} / number {number} is not a valid code",
                              hint="RFC 8489 section 14.8: class 3..6, number 0..99")
    return ErrorCode(klass * 100 + number, _decode_text(value[4:], "ERROR-CODE reason"))


def encode_error_code(value: object, xor_key: bytes) -> bytes:
    if isinstance(value, int) and not isinstance(value, bool):
        value = ErrorCode(value, "")
    try:
        code, reason = value  # type: ignore[misc]
        code = int(code)
        reason_bytes = str(reason).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise StunEncodeError(f"not an ErrorCode: {value!r}") from exc
    if not 100 <= code <= 699:
        raise StunEncodeError(f"error code {code} out of range 100..699")
    if len(reason_bytes) > 763:
        raise StunEncodeError("ERROR-CODE reason longer than 763 bytes (RFC 8489 section 14.8)")
    return bytes((0, 0, code // 100, code % 100)) + reason_bytes


def decode_unknown_attributes(value: bytes, xor_key: bytes) -> tuple[int, ...]:
    """UNKNOWN-ATTRIBUTES (RFC 8489 section 14.13): a list of 16-bit types."""
    if len(value) % 2:
        raise StunDecodeError(f"UNKNOWN-ATTRIBUTES has odd length {len(value)}")
    return tuple(int.from_bytes(value[i:i + 2], "big") for i in range(0, len(value), 2))


def encode_unknown_attributes(value: object, xor_key: bytes) -> bytes:
    try:
        types = [int(t) for t in value]  # type: ignore[union-attr]
    except (TypeError, ValueError) as exc:
        raise StunEncodeError(f"UNKNOWN-ATTRIBUTES must be a sequence of types: {value!r}") from exc
    if any(not 0 <= t <= 0xFFFF for t in types):
        raise StunEncodeError(f"attribute type out of range in {types!r}")
    return b"".join(t.to_bytes(2, "big") for t in types)


def _decode_text(value: bytes, what: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StunDecodeError(f"{what} is not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc


def text_codec(attr_type: AttrType) -> tuple[Decoder, Encoder]:
    """USERNAME, REALM, NONCE, SOFTWARE (RFC 8489 sections 14.3, 14.9, 14.10, 14.14): UTF-8."""
    name = attr_type.name.replace("_", "-")
    limit = TEXT_LIMITS[attr_type]

    def decode(value: bytes, xor_key: bytes) -> str:
        return _decode_text(value, name)

    def encode(value: object, xor_key: bytes) -> bytes:
        if not isinstance(value, str):
            raise StunEncodeError(f"{name} must be a str, got {type(value).__name__}")
        data = value.encode("utf-8")
        if len(data) > limit:
            raise StunEncodeError(f"{name} is {len(data)} bytes, limit {limit}")
        return data

    return decode, encode


def decode_raw(value: bytes, xor_key: bytes) -> bytes:
    return value


def encode_raw(value: object, xor_key: bytes) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise StunEncodeError(f"raw attribute value must be bytes, got {type(value).__name__}")
    return bytes(value)


def uint_codec(size: int, name: str) -> tuple[Decoder, Encoder]:
    """Fixed-size unsigned integers: PRIORITY (32 bits), ICE-CONTROLLED/-CONTROLLING (64 bits), RFC 8445."""

    def decode(value: bytes, xor_key: bytes) -> int:
        if len(value) != size:
            raise StunDecodeError(f"{name} has {len(value)} bytes, expected {size}")
        return int.from_bytes(value, "big")

    def encode(value: object, xor_key: bytes) -> bytes:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << (8 * size):
            raise StunEncodeError(f"{name} must be an unsigned {8 * size}-bit int, got {value!r}")
        return value.to_bytes(size, "big")

    return decode, encode


def decode_fingerprint(value: bytes, xor_key: bytes) -> int:
    """FINGERPRINT (RFC 8489 section 14.7): 32-bit CRC-32 XOR 0x5354554e."""
    if len(value) != 4:
        raise StunDecodeError(f"FINGERPRINT has {len(value)} bytes, expected 4")
    return int.from_bytes(value, "big")


def decode_message_integrity(value: bytes, xor_key: bytes) -> bytes:
    """MESSAGE-INTEGRITY (RFC 8489 section 14.5): 20-byte HMAC-SHA1."""
    if len(value) != 20:
        raise StunDecodeError(f"MESSAGE-INTEGRITY has {len(value)} bytes, expected 20")
    return value


def decode_message_integrity_sha256(value: bytes, xor_key: bytes) -> bytes:
    """MESSAGE-INTEGRITY-SHA256 (RFC 8489 section 14.6): 16..32 bytes, a multiple of 4."""
    if not 16 <= len(value) <= 32 or len(value) % 4:
        raise StunDecodeError(f"MESSAGE-INTEGRITY-SHA256 has {len(value)} bytes, "
                              "expected 16..32 and a multiple of 4")
    return value


_ADDRESS = (decode_plain_address, encode_plain_address)
_XOR_ADDRESS = (decode_xor_address, encode_xor_address)

#: Known attribute types -> (decoder, encoder). Anything else stays raw bytes.
CODECS: dict[int, tuple[Decoder, Encoder]] = {
    AttrType.MAPPED_ADDRESS: _ADDRESS,
    AttrType.RESPONSE_ADDRESS: _ADDRESS,
    AttrType.SOURCE_ADDRESS: _ADDRESS,
    AttrType.CHANGED_ADDRESS: _ADDRESS,
    AttrType.REFLECTED_FROM: _ADDRESS,
    AttrType.ALTERNATE_SERVER: _ADDRESS,
    AttrType.RESPONSE_ORIGIN: _ADDRESS,
    AttrType.OTHER_ADDRESS: _ADDRESS,
    AttrType.XOR_MAPPED_ADDRESS: _XOR_ADDRESS,
    AttrType.XOR_MAPPED_ADDRESS_OLD: _XOR_ADDRESS,
    AttrType.XOR_PEER_ADDRESS: _XOR_ADDRESS,
    AttrType.XOR_RELAYED_ADDRESS: _XOR_ADDRESS,
    AttrType.CHANGE_REQUEST: (decode_change_request, encode_change_request),
    AttrType.RESPONSE_PORT: (decode_response_port, encode_response_port),
    AttrType.PADDING: (decode_raw, encode_raw),
    AttrType.PASSWORD: (decode_raw, encode_raw),
    AttrType.ERROR_CODE: (decode_error_code, encode_error_code),
    AttrType.UNKNOWN_ATTRIBUTES: (decode_unknown_attributes, encode_unknown_attributes),
    AttrType.USERNAME: text_codec(AttrType.USERNAME),
    AttrType.REALM: text_codec(AttrType.REALM),
    AttrType.NONCE: text_codec(AttrType.NONCE),
    AttrType.SOFTWARE: text_codec(AttrType.SOFTWARE),
    AttrType.PRIORITY: uint_codec(4, "PRIORITY"),
    AttrType.USE_CANDIDATE: (decode_raw, encode_raw),
    AttrType.ICE_CONTROLLED: uint_codec(8, "ICE-CONTROLLED"),
    AttrType.ICE_CONTROLLING: uint_codec(8, "ICE-CONTROLLING"),
    AttrType.MESSAGE_INTEGRITY: (decode_message_integrity, encode_raw),
    AttrType.MESSAGE_INTEGRITY_SHA256: (decode_message_integrity_sha256, encode_raw),
    AttrType.FINGERPRINT: (decode_fingerprint, encode_raw),
}


def decode_value(attr_type: int, value: bytes, xor_key: bytes) -> object:
    """Decode one attribute value; unknown types come back as raw bytes."""
    codec = CODECS.get(attr_type)
    return value if codec is None else codec[0](value, xor_key)


def encode_value(attr_type: int, value: object, xor_key: bytes) -> bytes:
    """Encode one attribute value; unknown types must be given as raw bytes."""
    codec = CODECS.get(attr_type)
    return encode_raw(value, xor_key) if codec is None else codec[1](value, xor_key)
