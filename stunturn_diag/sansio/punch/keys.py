"""Access keys (pure): the rendezvous identifier, fresh keys, a strength estimate.

The access key never leaves this machine. The signaling server pairs the two
peers by a **rendezvous identifier** derived from it with a slow, memory-hard KDF
(scrypt, RFC 7914) under a fixed domain-separation label::

    rendezvous = hex(scrypt(key, salt="stunturn-rendezvous/v1", N=2**15, r=8, p=1, dkLen=32))

Both peers must find each other from the key alone, so the salt cannot be per
match; a server (or anyone reading the HTTP bodies, hence TLS) can therefore test
guesses of a *weak* key against the identifier at the cost of one scrypt each
(about 32 MiB and 50-150 ms). That is why :func:`generate_key` exists and weak keys
get a warning. The identifier is useless for the punch itself: the PAKE
(:mod:`.handshake`) is keyed on the access key under another label.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import math
import re

RENDEZVOUS_LABEL = b"stunturn-rendezvous/v1"
#: scrypt cost (RFC 7914 section 2): N (CPU/memory), r (block size), p (parallelism)
SCRYPT_N = 2 ** 15
SCRYPT_R = 8
SCRYPT_P = 1
RENDEZVOUS_BYTES = 32
#: 128 * r * N bytes of scrypt state, plus headroom
_SCRYPT_MAXMEM = 128 * SCRYPT_R * SCRYPT_N + (8 << 20)
KEY_BYTES = 16
#: below this estimate a key gets a warning
WEAK_BITS = 64

#: a few of the words and patterns that lead password cracking lists
COMMON_WORDS = (
    "password", "passwort", "passw0rd", "qwerty", "azerty", "letmein", "welcome", "admin",
    "secret", "dragon", "monkey", "master", "shadow", "sunshine", "princess", "football",
    "baseball", "iloveyou", "trustno1", "superman", "batman", "login", "hello", "freedom",
    "whatever", "starwars", "changeme", "default", "stunturn", "punch", "test", "guest",
    "root", "user", "abc", "key", "pass", "love", "god", "sex", "money", "summer", "winter",
    "spring", "autumn", "london", "berlin", "paris", "asdf", "zxcv", "1234", "0000", "1111",
)
#: bits a dictionary word is worth (as if drawn from a 10,000-word list)
_WORD_BITS = math.log2(10_000)
_LEET = str.maketrans("013457@$!", "oleastasi")


def _raw(key: str | bytes) -> bytes:
    return key.encode("utf-8") if isinstance(key, str) else bytes(key)


@functools.lru_cache(maxsize=16)
def _scrypt(raw: bytes) -> str:
    return hashlib.scrypt(raw, salt=RENDEZVOUS_LABEL, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                          maxmem=_SCRYPT_MAXMEM, dklen=RENDEZVOUS_BYTES).hex()


def rendezvous_id(key: str | bytes) -> str:
    """The identifier sent to the signaling server instead of the key (64 hex digits).

    Cached: the slow KDF runs once per key and process (the punch API runs it before
    contacting the server).
    """
    return _scrypt(_raw(key))


def generate_key(entropy) -> str:
    """A fresh 128-bit key, base32 (RFC 4648 section 6) without padding: 26 characters.

    ``entropy(n)`` returns ``n`` random bytes (``secrets.token_bytes``).
    """
    return base64.b32encode(entropy(KEY_BYTES)).decode("ascii").rstrip("=")


def _charset_size(text: str) -> int:
    size = 0
    if re.search(r"[a-z]", text):
        size += 26
    if re.search(r"[A-Z]", text):
        size += 26
    if re.search(r"[0-9]", text):
        size += 10
    if re.search(r"[^a-zA-Z0-9]", text):
        size += 33
    return max(size, 1)


def _smallest_period(text: str) -> str:
    """``"abcabcabc"`` -> ``"abc"``: a repeated unit adds (almost) nothing."""
    for n in range(1, len(text) // 2 + 1):
        if len(text) % n == 0 and text[:n] * (len(text) // n) == text:
            return text[:n]
    return text


def estimate_bits(key: str) -> float:
    """A rough, conservative strength estimate in bits (length x charset, words discounted).

    Not a guarantee: a key from :func:`generate_key` scores about 134 bits, short keys,
    repetitions, runs of one character and keys built from common words score low.
    """
    unit = _smallest_period(key)
    per_char = math.log2(_charset_size(key))
    folded = unit.lower().translate(_LEET)
    words = 0
    for word in sorted(COMMON_WORDS, key=len, reverse=True):
        while word in folded:
            folded = folded.replace(word, "\x00", 1)
            words += 1
    rest = re.sub(r"(.)\1+", r"\1", folded.replace("\x00", ""))   # "aaaa" counts as "a"
    return words * _WORD_BITS + len(rest) * per_char


def key_warnings(key: str) -> list[str]:
    """Warnings for a key (empty when it looks strong enough)."""
    bits = estimate_bits(key)
    if bits >= WEAK_BITS:
        return []
    return [f"the access key looks weak (about {bits:.0f} bits estimated, want >= {WEAK_BITS}): "
            "whoever sees the signaling requests can test guesses offline; "
            "use `stunturn-diag punch --generate-key`"]
