"""CPace on X25519 against draft-irtf-cfrg-cpace's test vectors (stunturn_diag.sansio.punch.cpace).

The vectors are the draft's "Test vector for CPace using group X25519 and hash
SHA-512" (generator, MSGa/MSGb, K, ISK initiator/responder, low-order points), plus
the generator of the later drafts' CI spelling (``0b A_initiator 0b B_responder``).
"""

from __future__ import annotations

import hashlib
import os

import pytest

from stunturn_diag.sansio.punch import handshake, cpace
from stunturn_diag.sansio.punch.handshake import Handshake, Role

H = bytes.fromhex
PRS = b"Password"
CI = b"\nAinitiator\nBresponder"
SID = H("7e4b4791d6a8ef019b936c79fb7f2c57")
GEN_STRING = H(
    "0843506163653235350850617373776f72646d" + "00" * 109 +
    "160a41696e69746961746f720a42726573706f6e646572107e4b4791d6a8ef019b936c79fb7f2c57")
GEN_HASH = H("10047198e8c4cacf0ab8a6d0ac337b8ae497209d042f7f3a5094586394e821fc")
GEN_FIELD = H("10047198e8c4cacf0ab8a6d0ac337b8ae497209d042f7f3a5094586394e8217c")
G = H("4e6098733061c0e8486611a904fe5edb049804d26130a44131a6229e55c5c321")
YA_SCALAR = H("45acf93116ae5d3dae995a7c627df2924321a8e857d9a200807131e38839b0c2")
YB_SCALAR = H("a145e914b347002d298ce2051394f0ed68cf3623dfe5db082c78ffa5a667acdc")
YA = H("6f7fd31863b18b0cc9830fc842c60dea80120ccf2fd375498225e45a52065361")
YB = H("e1b730a4956c0f853d96c5d125cebeeea46952c07c6f66da65bd9ffd2f71a462")
MSGA = H("20" + YA.hex() + "03414461")
MSGB = H("20" + YB.hex() + "03414462")
K = H("2a905bc5f0b93ee72ac4b6ea8723520941adfc892935bf6f86d9e199befa6024")
ISK_IR = H("99a9e0ff35acb94ad8af1cd6b32ac409dc7d00557ccd9a7d19d3b4629e5f1f08"
           "4f9332096162438c7ecc78331b4eda17e1a229a47182eccc9ea58cd9cdcd8e9a")

#: (u, scalar_mult_vfy(s, u)) for the draft's s; zero where the result is the neutral element
LOW_ORDER_S = H("af46e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449aff")
ZERO = "00" * 32
LOW_ORDER = [
    ("00" * 32, ZERO),
    ("01" + "00" * 31, ZERO),
    ("ec" + "ff" * 30 + "7f", ZERO),
    ("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800", ZERO),
    ("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157", ZERO),
    ("ed" + "ff" * 30 + "7f", ZERO),
    ("da" + "ff" * 31, "d8e2c776bbacd510d09fd9278b7edcd25fc5ae9adfba3b6e040e8d3b71b21806"),
    ("ee" + "ff" * 30 + "7f", ZERO),
    ("db" + "ff" * 31, "c85c655ebe8be44ba9c0ffde69f2fe10194458d137f09bbff725ce58803cdb38"),
    ("d9" + "ff" * 31, "db64dafa9b8fdd136914e61461935fe92aa372cb056314e1231bc4ec12417456"),
    ("cdeb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b880",
     "e062dcd5376d58297be2618c7498f55baa07d7e03184e8aada20bca28888bf7a"),
    ("4c9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f11d7",
     "993c6ad11c4c29da9a56f7691fd0ff8d732e49de6250b6c2e80003ff4629a175"),
]


def test_prepend_len_and_prefix_free_cat_vectors():
    assert cpace.prepend_len(b"") == H("00")
    assert cpace.prepend_len(b"1234") == H("0431323334")
    assert cpace.prepend_len(bytes(range(127))) == b"\x7f" + bytes(range(127))
    assert cpace.prepend_len(bytes(range(128))) == b"\x80\x01" + bytes(range(128))
    assert cpace.lv_cat(b"1234", b"5", b"", b"6789") == H("04313233340135000436373839")


def test_generator_string_hash_and_generator_vectors():
    assert cpace.generator_string(PRS, CI, SID) == GEN_STRING
    assert hashlib.sha512(GEN_STRING).digest()[:32] == GEN_HASH
    assert cpace.encode_u(cpace.decode_u(GEN_HASH)) == GEN_FIELD
    assert cpace.calculate_generator(PRS, CI, SID) == G


def test_generator_vector_with_the_later_drafts_channel_identifier():
    assert cpace.calculate_generator(PRS, b"\x0bA_initiator\x0bB_responder", SID) == H(
        "d04bf6d41f6a289632a2e929fa29bebd51092512a7829fdde7d314b62f05a73f")


def test_shares_secret_point_and_isk_vectors():
    assert cpace.share(YA_SCALAR, G) == YA and cpace.share(YB_SCALAR, G) == YB
    assert cpace.lv_cat(YA, b"ADa") == MSGA and cpace.lv_cat(YB, b"ADb") == MSGB
    assert cpace.shared_point(YA_SCALAR, YB) == cpace.shared_point(YB_SCALAR, YA) == K
    assert cpace.transcript_ir(YA, b"ADa", YB, b"ADb") == MSGA + MSGB
    assert cpace.isk(SID, K, YA, b"ADa", YB, b"ADb") == ISK_IR


@pytest.mark.parametrize("u, q", LOW_ORDER)
def test_scalar_mult_vfy_low_order_vectors(u, q):
    assert cpace.scalar_mult_vfy(LOW_ORDER_S, H(u)) == H(q)
    if q == ZERO:
        with pytest.raises(cpace.CPaceError):
            cpace.shared_point(LOW_ORDER_S, H(u))


def test_elligator2_lands_on_the_curve_for_random_inputs():
    """u^3 + A u^2 + u is a square for every output (a point of Curve25519, not the twist)."""
    p = cpace.P
    for _ in range(50):
        u = cpace.elligator2(int.from_bytes(os.urandom(32), "little"))
        rhs = (u * u * u + cpace.A * u * u + u) % p
        assert rhs == 0 or pow(rhs, (p - 1) // 2, p) == 1
    # r = 0 (probability 2^-255 for a hash) maps to u = 0, the point of order 2: refused
    assert cpace.elligator2(0) == 0
    with pytest.raises(cpace.CPaceError):
        cpace.share(os.urandom(32), cpace.encode_u(0))


def _isk(sid: bytes, ya: bytes, yb: bytes, scalar: bytes, peer: bytes) -> bytes:
    return cpace.isk(sid, cpace.shared_point(scalar, peer), ya, handshake.AD, yb, handshake.AD)


def test_both_sides_derive_the_same_isk_and_a_wrong_key_another():
    sid = handshake.session_id("m-1")
    ga = cpace.calculate_generator(handshake.pake_password("k"), handshake.CHANNEL_ID, sid)
    gwrong = cpace.calculate_generator(handshake.pake_password("not k"), handshake.CHANNEL_ID, sid)
    a, b, w = os.urandom(32), os.urandom(32), os.urandom(32)
    ya, yb, yw = cpace.share(a, ga), cpace.share(b, ga), cpace.share(w, gwrong)
    assert ga != gwrong
    assert _isk(sid, ya, yb, a, yb) == _isk(sid, ya, yb, b, ya)
    # the receiver guessed the key wrong: its ISK differs from the initiator's
    assert _isk(sid, ya, yw, a, yw) != _isk(sid, ya, yw, w, ya)


def test_a_wrong_key_fails_the_key_confirmation():
    i, r = Handshake("k", "m-1", Role.INITIATOR, entropy=os.urandom), Handshake("not k", "m-1", Role.RECEIVER, entropy=os.urandom)
    proof_r = r.handle(i.hello()).reply                  # r derived its (different) ISK
    out = i.handle(proof_r)
    assert not out.accepted and out.why == "bad-proof" and not i.complete
    assert i.failure_reason()[0] == "auth-failed"
