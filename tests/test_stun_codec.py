"""STUN codec: round trips, validation, RFC 8489 ordering rules, robustness against bad bytes."""

from __future__ import annotations

import ipaddress
import random
import struct

import pytest

from stunturn_diag.errors import StunDecodeError, StunEncodeError, StunIntegrityError
from stunturn_diag.sansio.stun import (
    KNOWN_ATTRIBUTES,
    MAGIC_COOKIE,
    AttrType,
    ChangeRequest,
    ErrorCode,
    MessageClass,
    Method,
    StunMessage,
    binding_request,
    decode,
    encode,
    join_type,
    looks_like_stun,
    message_length,
    new_transaction_id,
    split_type,
)
from stunturn_diag.stun_requests import fresh_binding_request, fresh_transaction_id
try:
    from test_stun_vectors import ALL_VECTORS
except ImportError:  # tests/ imported as a package
    from tests.test_stun_vectors import ALL_VECTORS

TID = bytes(range(1, 13))
CLASSIC_TID = bytes(range(0x40, 0x50))
#: canonical text (as ipaddress prints it), which is what decode returns
ADDRESSES = [(str(ipaddress.ip_address(ip)), port) for ip, port in [
    ("192.0.2.1", 3478), ("0.0.0.0", 0), ("255.255.255.255", 65535), ("2001:db8::1", 5349),
    ("::", 0), ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535), ("::ffff:192.0.2.7", 1)]]
ADDRESS_TYPES = [AttrType.MAPPED_ADDRESS, AttrType.XOR_MAPPED_ADDRESS, AttrType.RESPONSE_ADDRESS,
                 AttrType.SOURCE_ADDRESS, AttrType.CHANGED_ADDRESS, AttrType.RESPONSE_ORIGIN,
                 AttrType.OTHER_ADDRESS, AttrType.ALTERNATE_SERVER, AttrType.REFLECTED_FROM,
                 AttrType.XOR_MAPPED_ADDRESS_OLD, AttrType.XOR_PEER_ADDRESS,
                 AttrType.XOR_RELAYED_ADDRESS]


def header(msg_type: int, length: int, tid: bytes = TID, cookie: bool = True) -> bytes:
    return struct.pack("!HH", msg_type, length) + (struct.pack("!I", MAGIC_COOKIE) if cookie else b"") + tid


def attr(attr_type: int, value: bytes, pad: bytes = b"\0") -> bytes:
    return struct.pack("!HH", attr_type, len(value)) + value + pad * (-len(value) % 4)


def message(*attrs: bytes, msg_type: int = 0x0001, tid: bytes = TID, cookie: bool = True) -> bytes:
    body = b"".join(attrs)
    return header(msg_type, len(body), tid, cookie) + body


def full_message(tid: bytes = TID) -> StunMessage:
    """One message carrying every known attribute type."""
    msg = StunMessage(Method.BINDING, MessageClass.SUCCESS, tid)
    for i, kind in enumerate(ADDRESS_TYPES):
        msg.add(kind, ADDRESSES[i % len(ADDRESSES)])
    msg.add(AttrType.CHANGE_REQUEST, ChangeRequest(True, False))
    msg.add(AttrType.RESPONSE_PORT, 40000)
    msg.add(AttrType.PADDING, bytes(7))
    msg.add(AttrType.ERROR_CODE, ErrorCode(438, "Stale Nonce"))
    msg.add(AttrType.UNKNOWN_ATTRIBUTES, (0x0031, 0x7FFF, 0x0002))
    msg.add(AttrType.USERNAME, "us\u00e9r")
    msg.add(AttrType.REALM, "example.org")
    msg.add(AttrType.NONCE, "n0nce")
    msg.add(AttrType.SOFTWARE, "stunturn-diag \u2603")
    msg.add(AttrType.PRIORITY, 0x6E0001FF)
    msg.add(AttrType.USE_CANDIDATE, b"")
    msg.add(AttrType.PASSWORD, b"classic")
    msg.add(AttrType.ICE_CONTROLLED, 2**64 - 1)
    msg.add(AttrType.ICE_CONTROLLING, 7)
    msg.add(0x7F00, b"raw-required")
    msg.add(0xFF00, b"raw-optional\x00\xff")
    return msg


def assert_only_codec_errors(data: bytes, key: bytes | None = None) -> None:
    """Decoding either succeeds or raises StunDecodeError; nothing else escapes."""
    try:
        decode(data, integrity_key=key)
    except StunDecodeError:
        pass


# -- message type -------------------------------------------------------------

def test_message_type_split_join_round_trip() -> None:
    for method in range(0x1000):
        for klass in MessageClass:
            msg_type = join_type(method, klass)
            assert msg_type < 0x4000
            assert split_type(msg_type) == (method, klass)


@pytest.mark.parametrize("msg_type, method, klass", [
    (0x0001, Method.BINDING, MessageClass.REQUEST),
    (0x0011, Method.BINDING, MessageClass.INDICATION),
    (0x0101, Method.BINDING, MessageClass.SUCCESS),
    (0x0111, Method.BINDING, MessageClass.ERROR),
    (0x0003, Method.ALLOCATE, MessageClass.REQUEST),
    (0x0113, Method.ALLOCATE, MessageClass.ERROR),
])
def test_well_known_message_types(msg_type: int, method: int, klass: MessageClass) -> None:
    assert split_type(msg_type) == (method, klass)
    assert join_type(method, klass) == msg_type


# -- round trips ----------------------------------------------------------------

@pytest.mark.parametrize("address", ADDRESSES)
@pytest.mark.parametrize("attr_type", ADDRESS_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("tid", [TID, CLASSIC_TID], ids=["rfc8489", "classic"])
def test_address_round_trip(attr_type: AttrType, address: tuple[str, int], tid: bytes) -> None:
    msg = StunMessage(Method.BINDING, MessageClass.SUCCESS, tid, [(attr_type, address)])
    data = encode(msg)
    family = 1 if ipaddress.ip_address(address[0]).version == 4 else 2
    assert data[24 + 1] == family
    assert len(data) == 20 + 4 + (8 if family == 1 else 20)
    decoded = decode(data)
    assert decoded.get(attr_type) == address
    assert decoded.classic == (len(tid) == 16)
    assert decoded == msg


def test_xor_mapped_address_is_obfuscated_per_rfc8489_14_2() -> None:
    data = encode(StunMessage(Method.BINDING, MessageClass.SUCCESS, TID,
                              [(AttrType.XOR_MAPPED_ADDRESS, ("192.0.2.1", 32853))]))
    assert data[26:28] == (32853 ^ (MAGIC_COOKIE >> 16)).to_bytes(2, "big")
    assert data[28:32] == (0xC0000201 ^ MAGIC_COOKIE).to_bytes(4, "big")
    data6 = encode(StunMessage(Method.BINDING, MessageClass.SUCCESS, TID,
                               [(AttrType.XOR_MAPPED_ADDRESS, ("2001:db8::1", 1))]))
    key = MAGIC_COOKIE.to_bytes(4, "big") + TID
    plain = bytes.fromhex("20010db8000000000000000000000001")
    assert data6[28:44] == bytes(a ^ b for a, b in zip(plain, key))


@pytest.mark.parametrize("tid", [TID, CLASSIC_TID], ids=["rfc8489", "classic"])
@pytest.mark.parametrize("key", [None, b"secret", "p\u00e4ss"])
@pytest.mark.parametrize("fingerprint", [False, True])
def test_every_attribute_round_trips(tid: bytes, key: bytes | str | None, fingerprint: bool) -> None:
    msg = full_message(tid)
    data = encode(msg, integrity_key=key, fingerprint=fingerprint)
    decoded = decode(data, integrity_key=key)
    computed = [(t, v) for t, v in decoded.attributes
                if t in (AttrType.MESSAGE_INTEGRITY, AttrType.FINGERPRINT)]
    plain = [(t, v) for t, v in decoded.attributes if (t, v) not in computed]
    assert plain == msg.attributes
    assert (AttrType.MESSAGE_INTEGRITY in [t for t, _ in computed]) == (key is not None)
    assert (AttrType.FINGERPRINT in [t for t, _ in computed]) == fingerprint
    # re-encoding the decoded message reproduces the bytes
    assert encode(decoded, integrity_key=key, fingerprint=fingerprint) == data


def test_every_known_attribute_is_exercised() -> None:
    used = {t for t, _ in full_message().attributes}
    computed = {AttrType.MESSAGE_INTEGRITY, AttrType.MESSAGE_INTEGRITY_SHA256, AttrType.FINGERPRINT}
    assert set(KNOWN_ATTRIBUTES) - computed <= used


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "both"])
def test_integrity_algorithms(algorithm: str) -> None:
    data = encode(binding_request(TID), integrity_key=b"k", integrity_algorithm=algorithm,
                  fingerprint=True)
    msg = decode(data, integrity_key=b"k")
    types = [t for t, _ in msg.attributes]
    assert (AttrType.MESSAGE_INTEGRITY in types) == (algorithm != "sha256")
    assert (AttrType.MESSAGE_INTEGRITY_SHA256 in types) == (algorithm != "sha1")
    assert types[-1] == AttrType.FINGERPRINT
    with pytest.raises(StunIntegrityError):
        decode(data, integrity_key=b"K")


def test_truncated_sha256_integrity_verifies() -> None:
    """RFC 8489 section 14.6: MESSAGE-INTEGRITY-SHA256 may be truncated to 16+ bytes."""
    import hashlib
    import hmac

    prefix = message()  # empty binding request
    body_len = 4 + 16
    covered = prefix[:2] + body_len.to_bytes(2, "big") + prefix[4:]
    mac = hmac.new(b"k", covered, hashlib.sha256).digest()[:16]
    data = message(attr(AttrType.MESSAGE_INTEGRITY_SHA256, mac))
    assert decode(data, integrity_key=b"k").get(AttrType.MESSAGE_INTEGRITY_SHA256) == mac


def test_key_without_integrity_attribute_is_an_integrity_error() -> None:
    with pytest.raises(StunIntegrityError):
        decode(encode(binding_request(TID)), integrity_key=b"k")


def test_integrity_not_checked_without_key() -> None:
    data = encode(binding_request(TID), integrity_key=b"k")
    assert decode(data).get(AttrType.MESSAGE_INTEGRITY) is not None


def test_encode_skips_stale_computed_attributes() -> None:
    msg = binding_request(TID)
    msg.add(AttrType.MESSAGE_INTEGRITY, bytes(20)).add(AttrType.FINGERPRINT, 0)
    assert encode(msg) == encode(binding_request(TID))


def test_pad_byte() -> None:
    msg = StunMessage(Method.BINDING, MessageClass.REQUEST, TID, [(AttrType.USERNAME, "a")])
    assert encode(msg, pad_byte=0x20)[-3:] == b"   "
    assert encode(msg)[-3:] == b"\0\0\0"


# -- binding_request and helpers -------------------------------------------------

def test_binding_request_attributes() -> None:
    msg = binding_request(TID, change_ip=True, change_port=True, response_port=5000,
                          padding=1200, software="x")
    decoded = decode(encode(msg))
    assert decoded.change_request == ChangeRequest(True, True)
    assert decoded.response_port == 5000
    assert decoded.get(AttrType.PADDING) == bytes(1200)
    assert decoded.software == "x"
    assert decoded.method == Method.BINDING and decoded.msg_class == MessageClass.REQUEST
    plain = binding_request(TID)
    assert plain.attributes == [] and encode(plain) == header(0x0001, 0)
    assert plain.change_request == ChangeRequest(False, False)
    assert plain.response_port is None and plain.mapped_address is None and plain.error is None


def test_change_request_only_port() -> None:
    data = encode(binding_request(TID, change_port=True))
    assert data[20:] == attr(AttrType.CHANGE_REQUEST, b"\0\0\0\x02")
    assert decode(data).change_request == ChangeRequest(False, True)


def test_new_transaction_id() -> None:
    ids = {fresh_transaction_id() for _ in range(100)}
    assert len(ids) == 100 and all(len(t) == 12 for t in ids)
    classic = fresh_transaction_id(classic=True)
    assert len(classic) == 16 and classic[:4] != MAGIC_COOKIE.to_bytes(4, "big")
    assert fresh_binding_request().transaction_id != fresh_binding_request().transaction_id


def test_accessor_fallbacks_for_classic_servers() -> None:
    msg = StunMessage(Method.BINDING, MessageClass.SUCCESS, CLASSIC_TID, [
        (AttrType.MAPPED_ADDRESS, ("192.0.2.1", 1)),
        (AttrType.SOURCE_ADDRESS, ("192.0.2.2", 2)),
        (AttrType.CHANGED_ADDRESS, ("192.0.2.3", 3)),
    ])
    got = decode(encode(msg))
    assert got.classic
    assert got.mapped_address == ("192.0.2.1", 1)
    assert got.response_origin == ("192.0.2.2", 2)
    assert got.other_address == ("192.0.2.3", 3)


def test_accessors_prefer_rfc5780_and_xor() -> None:
    msg = StunMessage(Method.BINDING, MessageClass.SUCCESS, TID, [
        (AttrType.MAPPED_ADDRESS, ("192.0.2.1", 1)),
        (AttrType.XOR_MAPPED_ADDRESS, ("192.0.2.9", 9)),
        (AttrType.SOURCE_ADDRESS, ("192.0.2.2", 2)),
        (AttrType.RESPONSE_ORIGIN, ("192.0.2.8", 8)),
        (AttrType.CHANGED_ADDRESS, ("192.0.2.3", 3)),
        (AttrType.OTHER_ADDRESS, ("192.0.2.7", 7)),
        (AttrType.ERROR_CODE, ErrorCode(420, "Unknown Attribute")),
    ])
    got = decode(encode(msg))
    assert got.mapped_address == ("192.0.2.9", 9)
    assert got.response_origin == ("192.0.2.8", 8)
    assert got.other_address == ("192.0.2.7", 7)
    assert got.error == ErrorCode(420, "Unknown Attribute")


def test_first_occurrence_wins() -> None:
    data = message(attr(AttrType.SOFTWARE, b"first"), attr(AttrType.SOFTWARE, b"second"))
    msg = decode(data)
    assert msg.software == "first"
    assert [v for t, v in msg.attributes if t == AttrType.SOFTWARE] == ["first", "second"]


# -- classic RFC 3489 ------------------------------------------------------------

def test_classic_request_bytes() -> None:
    data = message(attr(AttrType.CHANGE_REQUEST, b"\0\0\0\x06"), tid=CLASSIC_TID, cookie=False)
    msg = decode(data)
    assert msg.classic and msg.transaction_id == CLASSIC_TID
    assert msg.change_request == ChangeRequest(True, True)
    assert encode(msg) == data


def test_classic_response_with_xor_mapped_uses_the_id() -> None:
    msg = StunMessage(Method.BINDING, MessageClass.SUCCESS, CLASSIC_TID,
                      [(AttrType.XOR_MAPPED_ADDRESS, ("10.0.0.1", 1000))])
    data = encode(msg)
    assert data[4:20] == CLASSIC_TID
    assert data[28:32] == bytes(a ^ b for a, b in zip(bytes((10, 0, 0, 1)), CLASSIC_TID))
    assert decode(data).mapped_address == ("10.0.0.1", 1000)


# -- unknown attributes (RFC 8489 section 15) --------------------------------------

def test_unknown_attributes_kept_raw_and_comprehension_required_listed() -> None:
    data = message(attr(0x0031, b"abc"), attr(0xC001, b"opt"), attr(0x7FFF, b""),
                   attr(0x0031, b"again"), attr(AttrType.SOFTWARE, b"s"))
    msg = decode(data)
    assert msg.get(0x0031) == b"abc" and msg.get(0xC001) == b"opt" and msg.get(0x7FFF) == b""
    assert msg.unknown_comprehension_required == [0x0031, 0x7FFF]
    assert encode(msg) == data


# -- ordering rules around MESSAGE-INTEGRITY and FINGERPRINT --------------------------

def test_attributes_after_message_integrity_are_ignored() -> None:
    base = encode(binding_request(TID), integrity_key=b"k")
    tail = attr(AttrType.SOFTWARE, b"injected") + attr(AttrType.CHANGE_REQUEST, b"\0\0\0\x06")
    data = base[:2] + (len(base) - 20 + len(tail)).to_bytes(2, "big") + base[4:] + tail
    msg = decode(data, integrity_key=b"k")
    assert msg.software is None and msg.change_request == ChangeRequest(False, False)
    assert [t for t, _ in msg.attributes] == [AttrType.MESSAGE_INTEGRITY]


def test_fingerprint_after_integrity_kept_and_verified() -> None:
    data = encode(binding_request(TID, software="s"), integrity_key=b"k", fingerprint=True)
    assert [t for t, _ in decode(data, integrity_key=b"k").attributes] == [
        AttrType.SOFTWARE, AttrType.MESSAGE_INTEGRITY, AttrType.FINGERPRINT]


def test_attribute_after_fingerprint_is_rejected() -> None:
    base = encode(binding_request(TID), fingerprint=True)
    tail = attr(AttrType.SOFTWARE, b"late")
    data = base[:2] + (len(base) - 20 + len(tail)).to_bytes(2, "big") + base[4:] + tail
    with pytest.raises(StunDecodeError, match="after FINGERPRINT"):
        decode(data)


def test_bad_fingerprint_is_an_integrity_error() -> None:
    data = bytearray(encode(binding_request(TID), fingerprint=True))
    data[-1] ^= 1
    with pytest.raises(StunIntegrityError):
        decode(bytes(data))


# -- header validation ---------------------------------------------------------------

@pytest.mark.parametrize("data, match", [
    (b"", "too short"),
    (header(0x0001, 0)[:19], "too short"),
    (b"\x80" + header(0x0001, 0)[1:], "two most significant bits"),
    (b"\x40" + header(0x0001, 0)[1:], "two most significant bits"),
    (header(0x0001, 2) + b"\0\0", "multiple of 4"),
    (header(0x0001, 4), "body bytes"),
    (header(0x0001, 0) + b"\0\0\0\0", "body bytes"),
    (message(struct.pack("!HH", 0x8022, 1)), "claims"),
    (message(struct.pack("!HH", 0x8022, 5) + b"abcd"), "claims"),
])
def test_header_and_framing_errors(data: bytes, match: str) -> None:
    with pytest.raises(StunDecodeError, match=match):
        decode(data)


@pytest.mark.parametrize("value, match", [
    (b"\x00\x03\x00\x01\x01\x02\x03\x04", "family"),
    (b"\x00\x00\x00\x01\x01\x02\x03\x04", "family"),
    (b"\x00\x01\x00\x01\x01\x02\x03\x04" + bytes(4), "expected 8"),
    (b"\x00\x02\x00\x01\x01\x02\x03\x04", "expected 20"),
    (b"\x00\x01\x00", "too short"),
    (b"", "too short"),
])
@pytest.mark.parametrize("attr_type", ADDRESS_TYPES, ids=lambda t: t.name)
def test_bad_address_values(attr_type: AttrType, value: bytes, match: str) -> None:
    with pytest.raises(StunDecodeError, match=match):
        decode(message(attr(attr_type, value)))


@pytest.mark.parametrize("attr_type, value", [
    (AttrType.CHANGE_REQUEST, b"\0\0\x06"),
    (AttrType.CHANGE_REQUEST, b"\0\0\0\x06\0"),
    (AttrType.RESPONSE_PORT, b"\x13\x88"),
    (AttrType.ERROR_CODE, b"\0\0\x04"),
    (AttrType.ERROR_CODE, b"\0\0\x04\x64"),  # number 100
    (AttrType.ERROR_CODE, b"\0\0\x07\x00"),  # class 7
    (AttrType.ERROR_CODE, b"\0\0\x00\x01"),  # class 0
    (AttrType.ERROR_CODE, b"\0\0\x04\x01\xff"),  # reason not UTF-8
    (AttrType.UNKNOWN_ATTRIBUTES, b"\0\x01\0"),
    (AttrType.USERNAME, b"\xc3\x28"),
    (AttrType.SOFTWARE, b"\xff"),
    (AttrType.REALM, b"\xed\xa0\x80"),  # surrogate
    (AttrType.NONCE, b"\xe2\x82"),
    (AttrType.MESSAGE_INTEGRITY, bytes(19)),
    (AttrType.MESSAGE_INTEGRITY_SHA256, bytes(12)),
    (AttrType.MESSAGE_INTEGRITY_SHA256, bytes(18)),
    (AttrType.FINGERPRINT, bytes(3)),
    (AttrType.PRIORITY, bytes(8)),
    (AttrType.ICE_CONTROLLING, bytes(4)),
])
def test_bad_attribute_values(attr_type: int, value: bytes) -> None:
    with pytest.raises(StunDecodeError):
        decode(message(attr(attr_type, value)))


def test_error_code_wire_format() -> None:
    msg = StunMessage(Method.BINDING, MessageClass.ERROR, TID,
                      [(AttrType.ERROR_CODE, ErrorCode(420, "Unknown Attribute"))])
    data = encode(msg)
    assert data[:2] == b"\x01\x11"
    assert data[24:28] == b"\0\0\x04\x14"
    assert decode(data).error == (420, "Unknown Attribute")


@pytest.mark.parametrize("data", [None, 42, "text", object()])
def test_non_bytes_input(data: object) -> None:
    with pytest.raises(StunDecodeError):
        decode(data)  # type: ignore[arg-type]


def test_bytearray_and_memoryview_input() -> None:
    data = ALL_VECTORS["2.2"]
    assert decode(bytearray(data)) == decode(memoryview(data)) == decode(data)


# -- looks_like_stun / message_length -------------------------------------------------

def test_looks_like_stun_and_message_length() -> None:
    for data in ALL_VECTORS.values():
        assert looks_like_stun(data) and looks_like_stun(data, classic=False)
        assert message_length(data[:20]) == len(data)
        assert message_length(data) == len(data)
    classic = encode(binding_request(CLASSIC_TID))
    assert looks_like_stun(classic) and not looks_like_stun(classic, classic=False)
    for junk in [b"", b"\x00" * 19, b"\x80" + bytes(19), b"\x00\x01\x00\x02" + bytes(16),
                 b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", None]:
        assert not looks_like_stun(junk)  # type: ignore[arg-type]
    for junk in [b"\x00" * 19, b"\xc0" + bytes(19), b"\x00\x01\x00\x03" + bytes(16), None]:
        with pytest.raises(StunDecodeError):
            message_length(junk)  # type: ignore[arg-type]


# -- encode errors ------------------------------------------------------------------

@pytest.mark.parametrize("msg", [
    StunMessage(Method.BINDING, MessageClass.REQUEST, b"short"),
    StunMessage(0x1000, MessageClass.REQUEST, TID),
    StunMessage("binding", MessageClass.REQUEST, TID),  # type: ignore[arg-type]
    StunMessage(Method.BINDING, 4, TID),  # type: ignore[arg-type]
    StunMessage(Method.BINDING, MessageClass.REQUEST, TID, [("SOFTWARE", "x")]),  # type: ignore[list-item]
    StunMessage(Method.BINDING, MessageClass.REQUEST, TID, [(AttrType.MAPPED_ADDRESS, ("nope", 1))]),
    StunMessage(Method.BINDING, MessageClass.REQUEST, TID, [(AttrType.MAPPED_ADDRESS, ("1.2.3.4", 70000))]),
    StunMessage(Method.BINDING, MessageClass.REQUEST, TID, [(AttrType.MAPPED_ADDRESS, "1.2.3.4")]),
    StunMessage(Method.BINDING, MessageClass.REQUEST, TID, [(AttrType.RESPONSE_PORT, -1)]),
    StunMessage(Method.BINDING, MessageClass.REQUEST, TID, [(AttrType.RESPONSE_PORT, "80")]),
    StunMessage(Method.BINDING, MessageClass.REQUEST, TID, [(AttrType.ERROR_CODE, ErrorCode(700, ""))]),
    StunMessage(Method.BINDING, MessageClass.REQUEST, TID, [(AttrType.USERNAME, b"bytes")]),
    StunMessage(Method.BINDING, MessageClass.REQUEST, TID, [(AttrType.USERNAME, "u" * 514)]),
    StunMessage(Method.BINDING, MessageClass.REQUEST, TID, [(0x7F00, "not bytes")]),
    StunMessage(Method.BINDING, MessageClass.REQUEST, TID, [(0x10000, b"")]),
    StunMessage(Method.BINDING, MessageClass.REQUEST, TID, [(AttrType.PADDING, bytes(0x10000))]),
    StunMessage(Method.BINDING, MessageClass.REQUEST, TID, [(AttrType.PADDING, bytes(0xFFF0))] * 2),
    StunMessage(Method.BINDING, MessageClass.REQUEST, TID, [(AttrType.UNKNOWN_ATTRIBUTES, (0x10000,))]),
])
def test_encode_rejects_bad_messages(msg: StunMessage) -> None:
    with pytest.raises(StunEncodeError):
        encode(msg)


# -- robustness: truncations, corruptions, random bodies ------------------------------

def robustness_corpus() -> dict[str, bytes]:
    corpus = dict(ALL_VECTORS)
    corpus["full"] = encode(full_message(), integrity_key=b"k", fingerprint=True)
    corpus["full-classic"] = encode(full_message(CLASSIC_TID))
    corpus["rfc5780-request"] = encode(binding_request(TID, change_ip=True, response_port=9,
                                                       padding=5, software="s"), fingerprint=True)
    corpus["sha256"] = encode(binding_request(TID), integrity_key=b"k", integrity_algorithm="both",
                              fingerprint=True)
    return corpus


CORPUS = robustness_corpus()


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_every_truncation_raises_decode_error(name: str) -> None:
    data = CORPUS[name]
    for cut in range(len(data)):
        with pytest.raises(StunDecodeError):
            decode(data[:cut])
        # fix up the length field too, so the attribute walker sees the cut
        if cut >= 20:
            fixed = data[:2] + (cut - 20).to_bytes(2, "big") + data[4:cut]
            assert_only_codec_errors(fixed)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_every_single_byte_value_at_every_offset(name: str) -> None:
    """All 256 values at every offset of the RFC vectors; on the long built messages,
    every bit flip plus boundary values (0, 1, 2, 3, 0x14, 0x7f, 0x80, 0xfe, 0xff)."""
    data = CORPUS[name]
    boundary = (0x00, 0x01, 0x02, 0x03, 0x14, 0x7F, 0x80, 0xFE, 0xFF)
    for offset in range(len(data)):
        values = (range(256) if len(data) <= 128
                  else set(boundary) | {data[offset] ^ (1 << bit) for bit in range(8)})
        for value in values:
            bad = bytearray(data)
            bad[offset] = value
            assert_only_codec_errors(bytes(bad))
            assert_only_codec_errors(bytes(bad), b"k")


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_length_field_variants_and_appended_bytes(name: str) -> None:
    data = CORPUS[name]
    for extra in (b"\0", b"\0\0\0\0", b"\0\x06\0\0", bytes(4) * 3, data):
        for length in range(0, len(data) - 20 + len(extra) + 8, 2):
            joined = data[:2] + length.to_bytes(2, "big") + data[4:] + extra
            assert_only_codec_errors(joined)


def test_random_attribute_bodies() -> None:
    """Deterministic pseudo-random TLV soup behind a valid header."""
    rng = random.Random(5780)
    types = [int(t) for t in AttrType] + [0x0000, 0x7FFF, 0x8000, 0xFFFF, 0x0031]
    decoded = 0
    for _ in range(20000):
        body = b""
        for _ in range(rng.randrange(1, 5)):
            kind = rng.choice(types)
            size = rng.choice([0, 1, 2, 4, 8, 12, 16, 20, 32, rng.randrange(64)])
            value = bytes(rng.randrange(256) for _ in range(size))
            if rng.random() < 0.5 and size >= 2:
                value = bytes((0, rng.choice([0, 1, 2, 3]))) + value[2:]
            body += attr(kind, value, bytes((rng.randrange(256),)))
        if rng.random() < 0.2:
            body = body[:rng.randrange(len(body) + 1)]
        tid = CLASSIC_TID if rng.random() < 0.2 else TID
        data = header(rng.randrange(0x4000), len(body), tid, cookie=len(tid) == 12) + body
        try:
            decode(data)
            decoded += 1
        except StunDecodeError:
            pass
    assert decoded > 1000  # the soup is not all rejected: the valid part really parses
