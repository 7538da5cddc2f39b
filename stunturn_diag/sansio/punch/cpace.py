"""CPace on X25519 with SHA-512 (CPACE-X25519-SHA512, draft-irtf-cfrg-cpace), pure.

Only what the punch handshake (:mod:`.handshake`) needs, written from the draft's
definitions: the prefix-free length-value encoding, the generator string, the
Elligator 2 map to Curve25519 (hash-to-curve's ``map_to_curve_elligator2``) in
plain integer arithmetic modulo ``2^255 - 19``, the verified scalar
multiplication, and the intermediate session key ``ISK`` of the
initiator/responder flow::

    g   = Elligator2(decodeUCoordinate(SHA-512(generator_string(DSI, PRS, CI, sid))[:32]))
    Ya  = X25519(ya, g)            Yb = X25519(yb, g)
    K   = X25519(ya, Yb) = X25519(yb, Ya)         (all-zero K: abort, a low-order share)
    ISK = SHA-512(lv(DSI "_ISK") lv(sid) lv(K) | lv(Ya) lv(ADa) | lv(Yb) lv(ADb))

The scalar multiplications run in C (``cryptography``'s X25519, which clamps the
scalar and masks bit 255 of the u-coordinate as RFC 7748 says). No randomness and
no I/O here: the caller draws the 32-byte scalar and passes it in. The tests pin
the generator, both shares, ``K``, ``ISK`` and the low-order vectors to the
draft's X25519 test vectors.
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

#: G_X25519.DSI
DSI = b"CPace255"
DSI_ISK = DSI + b"_ISK"
#: SHA-512's input block size (H.s_in_bytes)
S_IN_BYTES = 128
FIELD_BYTES = 32
FIELD_BITS = 255
#: the field prime of Curve25519 and the curve's Montgomery A
P = 2 ** 255 - 19
A = 486662
#: hash-to-curve's non-square Z for Curve25519 (the draft's find_z_ell2 gives 2)
Z = 2
#: G_X25519.I, the neutral element's encoding
IDENTITY = bytes(FIELD_BYTES)
_LEGENDRE = (P - 1) // 2


class CPaceError(ValueError):
    """A share whose scalar multiplication gives the neutral element (a low-order point)."""


def prepend_len(data: bytes) -> bytes:
    """``data`` preceded by its length in LEB128."""
    n, out = len(data), bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out) + data


def lv_cat(*parts: bytes) -> bytes:
    """The draft's prefix-free concatenation (``prefix_free_cat`` / ``lv_cat``)."""
    return b"".join(prepend_len(p) for p in parts)


def generator_string(prs: bytes, ci: bytes, sid: bytes, dsi: bytes = DSI,
                     s_in_bytes: int = S_IN_BYTES) -> bytes:
    """DSI, PRS and zero padding fill the hash's first block; then CI and sid."""
    zpad = max(0, s_in_bytes - 1 - len(prepend_len(prs)) - len(prepend_len(dsi)))
    return lv_cat(dsi, prs, bytes(zpad), ci, sid)


def decode_u(u: bytes) -> int:
    """RFC 7748 decodeUCoordinate for 255 bits (bit 255 masked; not reduced)."""
    return int.from_bytes(u[:FIELD_BYTES], "little") & ((1 << FIELD_BITS) - 1)


def encode_u(u: int) -> bytes:
    return (u % P).to_bytes(FIELD_BYTES, "little")


def elligator2(r: int) -> int:
    """hash-to-curve's map_to_curve_elligator2 for Curve25519: the u-coordinate only.

    ``x1 = -A / (1 + Z r^2)``; ``x1`` if ``x1^3 + A x1^2 + x1`` is a square (zero
    counts as one), else ``-x1 - A``. ``1 + 2 r^2`` is never zero (``-1/2`` is no
    square mod p), so the inversion is always defined.
    """
    r %= P
    x1 = (-A * pow(1 + Z * r * r, P - 2, P)) % P
    gx1 = (x1 * (x1 * (x1 + A) + 1)) % P
    if gx1 == 0 or pow(gx1, _LEGENDRE, P) == 1:
        return x1
    return (-x1 - A) % P


def calculate_generator(prs: bytes, ci: bytes, sid: bytes) -> bytes:
    """G_X25519.calculate_generator with SHA-512: the generator's u-coordinate (32 bytes)."""
    digest = hashlib.sha512(generator_string(prs, ci, sid)).digest()[:FIELD_BYTES]
    return encode_u(elligator2(decode_u(digest)))


def scalar_mult_vfy(scalar: bytes, point: bytes) -> bytes:
    """X25519(scalar, point) in C; :data:`IDENTITY` where the result is the neutral element."""
    if len(scalar) != FIELD_BYTES or len(point) != FIELD_BYTES:
        raise ValueError("X25519 scalars and points are 32 bytes")
    try:
        return X25519PrivateKey.from_private_bytes(scalar).exchange(
            X25519PublicKey.from_public_bytes(point))
    except ValueError:      # OpenSSL refuses an all-zero shared secret (a low-order point)
        return IDENTITY


def share(scalar: bytes, generator: bytes) -> bytes:
    """This side's public share ``Y = X25519(y, g)``."""
    y = scalar_mult_vfy(scalar, generator)
    if y == IDENTITY:       # only for a generator of low order, which Elligator 2 never gives
        raise CPaceError("the generator is of low order")
    return y


#: X25519's base point u = 9 (RFC 7748 section 4.1)
BASE_POINT = (9).to_bytes(FIELD_BYTES, "little")


def warm_up(scalar: bytes) -> None:
    """One throwaway X25519 with ``scalar`` on the base point, result discarded.

    The first X25519 key a process builds pays the crypto backend's lazy set-up
    (5-20 ms measured here, against 0.06 ms afterwards). :class:`StartedPake` calls this
    before the match, so that cost is not on the path from the match to the channel.
    """
    scalar_mult_vfy(scalar, BASE_POINT)


def is_canonical(point: bytes) -> bool:
    """A u-coordinate as X25519 outputs it: 32 bytes, bit 255 clear, below p."""
    return len(point) == FIELD_BYTES and int.from_bytes(point, "little") < P


def shared_point(scalar: bytes, peer_share: bytes) -> bytes:
    """``K = X25519(y, Y_peer)``; :class:`CPaceError` (abort) where it is the neutral element."""
    k = scalar_mult_vfy(scalar, peer_share)
    if k == IDENTITY:
        raise CPaceError("the peer's share is a low-order point")
    return k


def transcript_ir(ya: bytes, ada: bytes, yb: bytes, adb: bytes) -> bytes:
    """MSGa || MSGb of the initiator/responder flow (``MSG = lv_cat(Y, AD)``)."""
    return lv_cat(ya, ada) + lv_cat(yb, adb)


def isk(sid: bytes, k: bytes, ya: bytes, ada: bytes, yb: bytes, adb: bytes) -> bytes:
    """The intermediate session key (64 bytes) of the initiator/responder flow."""
    return hashlib.sha512(lv_cat(DSI_ISK, sid, k) + transcript_ir(ya, ada, yb, adb)).digest()


__all__ = ["DSI", "DSI_ISK", "IDENTITY", "CPaceError", "prepend_len", "lv_cat",
           "generator_string", "decode_u", "encode_u", "elligator2", "calculate_generator",
           "scalar_mult_vfy", "share", "is_canonical", "shared_point", "transcript_ir", "isk"]
