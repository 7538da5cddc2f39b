"""MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT computation, credential keys.

RFC 8489 section 14.5 (HMAC-SHA1), 14.6 (HMAC-SHA256), 14.7 (FINGERPRINT),
9.1.1 / 9.2.2 (short-term and long-term keys), RFC 4013 (SASLprep).
"""

from __future__ import annotations

import hashlib
import hmac
import stringprep
import unicodedata
import zlib

from stunturn_diag.errors import StunEncodeError
from stunturn_diag.sansio.stun.constants import FINGERPRINT_XOR

Key = bytes | str


def saslprep(text: str) -> str:
    """Prepare a credential string per RFC 4013 (SASLprep profile of stringprep).

    Maps non-ASCII spaces to SPACE and removes "commonly mapped to nothing"
    characters, applies NFKC, then refuses prohibited and bidi-invalid strings
    with :class:`StunEncodeError`.
    """
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch
        for ch in text
        if not stringprep.in_table_b1(ch)
    )
    prepared = unicodedata.normalize("NFKC", mapped)
    prohibited = (
        stringprep.in_table_c12, stringprep.in_table_c21, stringprep.in_table_c22,
        stringprep.in_table_c3, stringprep.in_table_c4, stringprep.in_table_c5,
        stringprep.in_table_c6, stringprep.in_table_c7, stringprep.in_table_c8,
        stringprep.in_table_c9, stringprep.in_table_a1,
    )
    for ch in prepared:
        if any(check(ch) for check in prohibited):
            raise StunEncodeError(f"credential contains prohibited character U+{ord(ch):04X}",
                                  hint="RFC 4013 section 2.3")
    rand_al = [stringprep.in_table_d1(ch) for ch in prepared]
    if any(rand_al):
        if any(stringprep.in_table_d2(ch) for ch in prepared) or not (rand_al[0] and rand_al[-1]):
            raise StunEncodeError("credential violates the stringprep bidi rule",
                                  hint="RFC 3454 section 6")
    return prepared


def short_term_key(password: str) -> bytes:
    """RFC 8489 section 9.1.1: key = OpaqueString(password) as UTF-8."""
    return saslprep(password).encode("utf-8")


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """RFC 8489 section 9.2.2 (MD5): key = MD5(username ":" realm ":" password), prepared."""
    text = f"{saslprep(username)}:{saslprep(realm)}:{saslprep(password)}"
    return hashlib.md5(text.encode("utf-8")).digest()


def as_key(key: Key) -> bytes:
    """Integrity key as bytes: bytes are used as given, str is a short-term password."""
    if isinstance(key, str):
        return short_term_key(key)
    return bytes(key)


def hmac_sha1(key: bytes, data: bytes) -> bytes:
    """MESSAGE-INTEGRITY value over ``data`` (RFC 8489 section 14.5)."""
    return hmac.new(key, data, hashlib.sha1).digest()


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    """MESSAGE-INTEGRITY-SHA256 value over ``data`` (RFC 8489 section 14.6)."""
    return hmac.new(key, data, hashlib.sha256).digest()


def fingerprint(data: bytes) -> int:
    """FINGERPRINT value over ``data`` (RFC 8489 section 14.7)."""
    return (zlib.crc32(data) & 0xFFFFFFFF) ^ FINGERPRINT_XOR


def with_length(data: bytes, body_length: int) -> bytes:
    """``data`` (header + attributes so far) with the header length field set to ``body_length``.

    RFC 8489 section 14.5: the length field covers the attributes up to and
    including the one being computed, but not any that follow it.
    """
    return data[:2] + body_length.to_bytes(2, "big") + data[4:]
