"""RFC 5769 test vectors (sections 2.1-2.4) through the codec.

The bytes are transcribed from RFC 5769 section 2; the expected values are the
ones the RFC states for each vector.
"""

from __future__ import annotations

import pytest

from stunturn_diag.errors import StunDecodeError, StunIntegrityError
from stunturn_diag.sansio.stun import (
    AttrType,
    MessageClass,
    Method,
    StunMessage,
    decode,
    encode,
    long_term_key,
    saslprep,
)


def unhex(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


TID = unhex("b7 e7 a7 01 bc 34 d6 86 fa 87 df ae")
SHORT_TERM_PASSWORD = "VOkJxbRl1RmTxUk/WvJxBt"

#: RFC 5769 section 2.1: Binding request, SOFTWARE, PRIORITY, ICE-CONTROLLED,
#: USERNAME (padded with 0x20), MESSAGE-INTEGRITY, FINGERPRINT.
SAMPLE_REQUEST = unhex("""
    00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
    00 24 00 04 6e 00 01 ff
    80 29 00 08 93 2f f9 b1 51 26 3b 36
    00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
    00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
    80 28 00 04 e5 7a 3b cf
""")

#: RFC 5769 section 2.2: Binding success response, IPv4 XOR-MAPPED-ADDRESS.
SAMPLE_IPV4_RESPONSE = unhex("""
    01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 08 00 01 a1 47 e1 12 a6 43
    00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
    80 28 00 04 c0 7d 4c 96
""")

#: RFC 5769 section 2.3: Binding success response, IPv6 XOR-MAPPED-ADDRESS.
SAMPLE_IPV6_RESPONSE = unhex("""
    01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
    00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41
    80 28 00 04 c8 fb 0b 4c
""")

#: RFC 5769 section 2.4: Binding request with long-term authentication.
LONG_TERM_REQUEST = unhex("""
    00 01 00 60 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
    00 06 00 12 e3 83 9e e3 83 88 e3 83 aa e3 83 83 e3 82 af e3 82 b9 00 00
    00 15 00 1c 66 2f 2f 34 39 39 6b 39 35 34 64 36 4f 4c 33 34 6f 4c 39 46
                53 54 76 79 36 34 73 41
    00 14 00 0b 65 78 61 6d 70 6c 65 2e 6f 72 67 00
    00 08 00 14 f6 70 24 65 6d d6 4a 3e 02 b8 e0 71 2e 85 c9 a2 8c a8 96 66
""")
LT_USERNAME = "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"
LT_PASSWORD = "The\u00adM\u00aatr\u2168"
LT_REALM = "example.org"
LT_NONCE = "f//499k954d6OL34oL9FSTvy64sA"

ALL_VECTORS = {
    "2.1": SAMPLE_REQUEST,
    "2.2": SAMPLE_IPV4_RESPONSE,
    "2.3": SAMPLE_IPV6_RESPONSE,
    "2.4": LONG_TERM_REQUEST,
}


def reencoded(msg: StunMessage, key: bytes | str, *, fingerprint: bool, pad_byte: int) -> bytes:
    return encode(msg, integrity_key=key, fingerprint=fingerprint, pad_byte=pad_byte)


# -- 2.1 ----------------------------------------------------------------------

def test_sample_request_values() -> None:
    msg = decode(SAMPLE_REQUEST, integrity_key=SHORT_TERM_PASSWORD)
    assert msg.method == Method.BINDING and msg.msg_class == MessageClass.REQUEST
    assert msg.transaction_id == TID and not msg.classic
    assert msg.software == "STUN test client"
    assert msg.get(AttrType.USERNAME) == "evtj:h6vY"
    assert msg.get(AttrType.PRIORITY) == 0x6E0001FF
    assert msg.get(AttrType.ICE_CONTROLLED) == 0x932FF9B151263B36
    assert msg.get(AttrType.FINGERPRINT) == 0xE57A3BCF
    assert [t for t, _ in msg.attributes] == [
        AttrType.SOFTWARE, AttrType.PRIORITY, AttrType.ICE_CONTROLLED, AttrType.USERNAME,
        AttrType.MESSAGE_INTEGRITY, AttrType.FINGERPRINT]
    assert msg.unknown_comprehension_required == []


def test_sample_request_reencodes_byte_exact_with_space_padding() -> None:
    msg = decode(SAMPLE_REQUEST)
    assert reencoded(msg, SHORT_TERM_PASSWORD, fingerprint=True, pad_byte=0x20) == SAMPLE_REQUEST


def test_sample_request_zero_padding_changes_only_padding_and_hashes() -> None:
    """With the default zero padding the MAC differs (it covers the padding) but all verifies."""
    out = encode(decode(SAMPLE_REQUEST), integrity_key=SHORT_TERM_PASSWORD, fingerprint=True)
    assert len(out) == len(SAMPLE_REQUEST) and out != SAMPLE_REQUEST
    again = decode(out, integrity_key=SHORT_TERM_PASSWORD)
    assert again.attributes[:4] == decode(SAMPLE_REQUEST).attributes[:4]


def test_sample_request_wrong_password_fails() -> None:
    with pytest.raises(StunIntegrityError):
        decode(SAMPLE_REQUEST, integrity_key="VOkJxbRl1RmTxUk/WvJxBT")


# -- 2.2 / 2.3 ------------------------------------------------------------------

@pytest.mark.parametrize("data, expected", [
    (SAMPLE_IPV4_RESPONSE, ("192.0.2.1", 32853)),
    (SAMPLE_IPV6_RESPONSE, ("2001:db8:1234:5678:11:2233:4455:6677", 32853)),
], ids=["2.2-ipv4", "2.3-ipv6"])
def test_sample_responses(data: bytes, expected: tuple[str, int]) -> None:
    msg = decode(data, integrity_key=SHORT_TERM_PASSWORD)
    assert msg.method == Method.BINDING and msg.msg_class == MessageClass.SUCCESS
    assert msg.transaction_id == TID
    assert msg.software == "test vector"
    assert msg.mapped_address == expected
    assert msg.get(AttrType.XOR_MAPPED_ADDRESS) == expected
    assert reencoded(msg, SHORT_TERM_PASSWORD, fingerprint=True, pad_byte=0x20) == data


# -- 2.4 ----------------------------------------------------------------------

def test_saslprep_of_the_rfc_password() -> None:
    assert saslprep(LT_PASSWORD) == "TheMatrIX"
    assert saslprep(LT_USERNAME) == LT_USERNAME


def test_long_term_request_values_and_integrity() -> None:
    key = long_term_key(LT_USERNAME, LT_REALM, LT_PASSWORD)
    msg = decode(LONG_TERM_REQUEST, integrity_key=key)
    assert msg.transaction_id == unhex("78 ad 34 33 c6 ad 72 c0 29 da 41 2e")
    assert msg.get(AttrType.USERNAME) == LT_USERNAME
    assert msg.get(AttrType.NONCE) == LT_NONCE
    assert msg.get(AttrType.REALM) == LT_REALM
    assert msg.get(AttrType.FINGERPRINT) is None
    assert encode(msg, integrity_key=key) == LONG_TERM_REQUEST
    with pytest.raises(StunIntegrityError):
        decode(LONG_TERM_REQUEST, integrity_key=long_term_key(LT_USERNAME, LT_REALM, "TheMatrix"))


# -- tampering ------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(ALL_VECTORS))
def test_every_bit_flip_is_detected(name: str) -> None:
    """Every single-bit flip is caught by MESSAGE-INTEGRITY, FINGERPRINT or the parser.

    Padding is covered too (the hashes run over it). The one exception is the
    FINGERPRINT attribute's type: flipped, it becomes an unknown attribute after
    MESSAGE-INTEGRITY, which RFC 8489 section 14.5 says to ignore.
    """
    data = ALL_VECTORS[name]
    key: bytes | str = (long_term_key(LT_USERNAME, LT_REALM, LT_PASSWORD) if name == "2.4"
                        else SHORT_TERM_PASSWORD)
    has_fingerprint = data[-8:-6] == b"\x80\x28"
    ignorable = {len(data) - 8, len(data) - 7} if has_fingerprint else set()
    undetected = []
    for offset in range(len(data)):
        for bit in range(8):
            bad = bytearray(data)
            bad[offset] ^= 1 << bit
            try:
                msg = decode(bytes(bad), integrity_key=key)
            except StunDecodeError:
                continue
            undetected.append(offset)
            assert msg.get(AttrType.FINGERPRINT) is None  # it was ignored, not accepted
    assert set(undetected) <= ignorable
