"""Wire format: decode/encode whole STUN messages (RFC 8489 sections 5, 14, 15; RFC 3489 section 11.1).

:func:`decode` raises only :class:`StunDecodeError` (malformed input) and its
subclass :class:`StunIntegrityError` (FINGERPRINT / MESSAGE-INTEGRITY mismatch).
"""

from __future__ import annotations

import hmac as _hmac

from stunturn_diag.errors import StunDecodeError, StunEncodeError, StunIntegrityError
from stunturn_diag.sansio.stun.attributes import decode_value, encode_value
from stunturn_diag.sansio.stun.constants import (
    CLASSIC_TRANSACTION_ID_LENGTH,
    HEADER_LENGTH,
    MAGIC_COOKIE_BYTES,
    MAX_BODY_LENGTH,
    TRANSACTION_ID_LENGTH,
    AttrType,
    MessageClass,
    Method,
)
from stunturn_diag.sansio.stun.integrity import Key, as_key, fingerprint as _fingerprint, hmac_sha1, hmac_sha256, with_length
from stunturn_diag.sansio.stun.message import StunMessage

_MI = AttrType.MESSAGE_INTEGRITY
_MI256 = AttrType.MESSAGE_INTEGRITY_SHA256
_FP = AttrType.FINGERPRINT
_COMPUTED = (_MI, _MI256, _FP)
_ALGORITHMS = ("sha1", "sha256", "both")
_METHODS = {m.value: m for m in Method}
_ATTR_TYPES = {a.value: a for a in AttrType}


def split_type(msg_type: int) -> tuple[int, MessageClass]:
    """Message type field -> (method, class); RFC 8489 section 5, figure 3."""
    klass = ((msg_type >> 7) & 0b10) | ((msg_type >> 4) & 0b01)
    method = (msg_type & 0x000F) | ((msg_type >> 1) & 0x0070) | ((msg_type >> 2) & 0x0F80)
    return _METHODS.get(method, method), MessageClass(klass)


def join_type(method: int, msg_class: int) -> int:
    """(method, class) -> 14-bit message type field; RFC 8489 section 5."""
    return ((method & 0x000F) | ((method & 0x0070) << 1) | ((method & 0x0F80) << 2)
            | ((msg_class & 0b01) << 4) | ((msg_class & 0b10) << 7))


def _check_header(data: bytes) -> int:
    """Validate the fixed header fields; return the body length."""
    if len(data) < HEADER_LENGTH:
        raise StunDecodeError(f"STUN message too short: {len(data)} bytes, the header alone has 20",
                              hint="RFC 8489 section 5")
    if data[0] & 0xC0:
        raise StunDecodeError("not STUN: the two most significant bits are not zero",
                              hint="RFC 8489 section 5")
    length = int.from_bytes(data[2:4], "big")
    if length % 4:
        raise StunDecodeError(f"STUN length field {length} is not a multiple of 4",
                              hint="RFC 8489 section 5")
    return length


def looks_like_stun(data: bytes, *, classic: bool = True) -> bool:
    """Cheap header check (RFC 8489 section 5 / RFC 7983 demultiplexing).

    True when there are at least 20 bytes, the top two bits are zero, the
    length field is a multiple of 4 and, unless ``classic`` is allowed (the
    default, RFC 3489 has no cookie), the magic cookie is present.
    """
    try:
        _check_header(bytes(data[:HEADER_LENGTH]))
    except (StunDecodeError, TypeError):
        return False
    return classic or bytes(data[4:8]) == MAGIC_COOKIE_BYTES


def message_length(header20: bytes) -> int:
    """Total message length (header + body) from the first 20 bytes; for TCP framing.

    Raises :class:`StunDecodeError` if those bytes cannot start a STUN message.
    """
    try:
        header = bytes(header20[:HEADER_LENGTH])
    except TypeError as exc:
        raise StunDecodeError(f"STUN header must be bytes, got {type(header20).__name__}") from exc
    return HEADER_LENGTH + _check_header(header)


def decode(data: bytes, *, integrity_key: Key | None = None) -> StunMessage:
    """Parse one whole STUN message.

    FINGERPRINT is always verified when present and must be last (RFC 8489
    section 14.7). Attributes after MESSAGE-INTEGRITY other than
    MESSAGE-INTEGRITY-SHA256 and FINGERPRINT, and after MESSAGE-INTEGRITY-SHA256
    other than FINGERPRINT, are ignored (sections 14.5, 14.6). With
    ``integrity_key`` (bytes, or a str short-term password) every
    MESSAGE-INTEGRITY(-SHA256) present is verified and at least one must be.
    """
    try:
        data = bytes(data)
    except TypeError as exc:
        raise StunDecodeError(f"STUN data must be bytes, got {type(data).__name__}") from exc
    length = _check_header(data)
    if len(data) != HEADER_LENGTH + length:
        raise StunDecodeError(f"STUN length field says {length} body bytes but {len(data) - 20} "
                              "follow the header", hint="truncated or concatenated message")
    msg_type = int.from_bytes(data[0:2], "big")
    method, msg_class = split_type(msg_type)
    classic = data[4:8] != MAGIC_COOKIE_BYTES
    tid = data[4:20] if classic else data[8:20]
    xor_key = data[4:20]

    attributes: list[tuple[int, object]] = []
    macs: list[tuple[int, int, bytes]] = []  # (type, offset, value)
    after_mi = after_mi256 = False
    pos, end = HEADER_LENGTH, len(data)
    while pos < end:
        if end - pos < 4:
            raise StunDecodeError(f"truncated attribute header at offset {pos}")
        attr_type = int.from_bytes(data[pos:pos + 2], "big")
        attr_len = int.from_bytes(data[pos + 2:pos + 4], "big")
        value_end = pos + 4 + attr_len
        next_pos = pos + 4 + ((attr_len + 3) & ~3)
        if next_pos > end:
            raise StunDecodeError(f"attribute 0x{attr_type:04x} at offset {pos} claims {attr_len} "
                                  f"bytes, only {end - pos - 4} remain", hint="RFC 8489 section 14")
        value = data[pos + 4:value_end]
        if attr_type == _FP:
            if next_pos != end:
                raise StunDecodeError("attribute after FINGERPRINT",
                                      hint="RFC 8489 section 14.7: FINGERPRINT must be last")
            received = decode_value(attr_type, value, xor_key)
            expected = _fingerprint(data[:pos])
            if received != expected:
                raise StunIntegrityError(f"FINGERPRINT mismatch: got 0x{received:08x}, "
                                         f"computed 0x{expected:08x}",
                                         hint="message corrupted or not STUN")
            attributes.append((_ATTR_TYPES.get(attr_type, attr_type), received))
        elif after_mi256 or (after_mi and attr_type != _MI256):
            pass  # RFC 8489 section 14.5/14.6: ignored
        else:
            decoded = decode_value(attr_type, value, xor_key)
            if attr_type in (_MI, _MI256):
                macs.append((attr_type, pos, value))
                after_mi = True
                after_mi256 = attr_type == _MI256
            attributes.append((_ATTR_TYPES.get(attr_type, attr_type), decoded))
        pos = next_pos

    if integrity_key is not None:
        _verify(data, macs, as_key(integrity_key))
    return StunMessage(method, msg_class, tid, attributes)


def _verify(data: bytes, macs: list[tuple[int, int, bytes]], key: bytes) -> None:
    """RFC 8489 sections 14.5/14.6: HMAC over the message up to the attribute, length adjusted."""
    if not macs:
        raise StunIntegrityError("message has no MESSAGE-INTEGRITY but a key was given",
                                 hint="the peer must authenticate (RFC 8489 section 9)")
    for attr_type, pos, value in macs:
        covered = with_length(data[:pos], pos + 4 + len(value) - HEADER_LENGTH)
        if attr_type == _MI:
            computed = hmac_sha1(key, covered)
        else:
            computed = hmac_sha256(key, covered)[:len(value)]
        if not _hmac.compare_digest(computed, value):
            name = "MESSAGE-INTEGRITY" if attr_type == _MI else "MESSAGE-INTEGRITY-SHA256"
            raise StunIntegrityError(f"{name} does not verify",
                                     hint="wrong key/password, or the message was altered")


def _attribute(attr_type: int, value: bytes, pad_byte: int) -> bytes:
    if len(value) > 0xFFFF:
        raise StunEncodeError(f"attribute 0x{attr_type:04x} value of {len(value)} bytes exceeds 65535")
    pad = (-len(value)) % 4
    return (attr_type.to_bytes(2, "big") + len(value).to_bytes(2, "big") + value
            + bytes((pad_byte,)) * pad)


def encode(msg: StunMessage, *, integrity_key: Key | None = None, fingerprint: bool = False,
           integrity_algorithm: str = "sha1", pad_byte: int = 0) -> bytes:
    """Serialise ``msg``.

    MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT entries in ``msg.attributes``
    are skipped: they are computed here, MESSAGE-INTEGRITY when
    ``integrity_key`` is given (``integrity_algorithm``: "sha1", "sha256" for
    MESSAGE-INTEGRITY-SHA256, or "both"), FINGERPRINT last when ``fingerprint``.
    ``pad_byte`` fills attribute padding (RFC 8489 section 14: any value;
    zero by default).
    """
    tid = bytes(msg.transaction_id)
    if len(tid) == TRANSACTION_ID_LENGTH:
        prefix = MAGIC_COOKIE_BYTES + tid
    elif len(tid) == CLASSIC_TRANSACTION_ID_LENGTH:
        prefix = tid
    else:
        raise StunEncodeError(f"transaction id has {len(tid)} bytes, expected 12 (or 16 for RFC 3489)")
    try:
        method, msg_class = int(msg.method), int(msg.msg_class)
    except (TypeError, ValueError) as exc:
        raise StunEncodeError(f"method/class must be ints: {msg.method!r}, {msg.msg_class!r}") from exc
    if not 0 <= method <= 0xFFF:
        raise StunEncodeError(f"method 0x{method:x} does not fit 12 bits")
    if not 0 <= msg_class <= 3:
        raise StunEncodeError(f"message class {msg_class} is not 0..3")
    if integrity_algorithm not in _ALGORITHMS:
        raise StunEncodeError(f"integrity_algorithm must be one of {_ALGORITHMS}")
    if not 0 <= pad_byte <= 0xFF:
        raise StunEncodeError(f"pad_byte {pad_byte} is not a byte")

    body = bytearray()
    for attr_type, value in msg.attributes:
        if isinstance(attr_type, bool) or not isinstance(attr_type, int):
            raise StunEncodeError(f"attribute type must be an int, got {attr_type!r}")
        attr_type = int(attr_type)
        if not 0 <= attr_type <= 0xFFFF:
            raise StunEncodeError(f"attribute type {attr_type} out of range 0..0xFFFF")
        if attr_type in _COMPUTED:
            continue
        body += _attribute(attr_type, encode_value(attr_type, value, prefix), pad_byte)

    type_bytes = join_type(method, msg_class).to_bytes(2, "big")

    def framed(extra: int) -> bytes:
        return type_bytes + (len(body) + extra).to_bytes(2, "big") + prefix + bytes(body)

    if integrity_key is not None:
        key = as_key(integrity_key)
        if integrity_algorithm in ("sha1", "both"):
            body += _attribute(_MI, hmac_sha1(key, framed(24)), 0)
        if integrity_algorithm in ("sha256", "both"):
            body += _attribute(_MI256, hmac_sha256(key, framed(36)), 0)
    if fingerprint:
        body += _attribute(_FP, _fingerprint(framed(8)).to_bytes(4, "big"), 0)
    if len(body) > MAX_BODY_LENGTH:
        raise StunEncodeError(f"STUN message body of {len(body)} bytes exceeds {MAX_BODY_LENGTH}")
    return framed(0)
