"""The pure punch handshake and the UDP frame MAC (stunturn_diag.punch.auth)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from stunturn_diag.errors import AuthenticationError, PunchError
from stunturn_diag.punch import auth
from stunturn_diag.punch.auth import Handshake, Kind, ReplayWindow, Role, authenticate_stream

KEY = "correct horse battery"
MATCH = "5f1e0c"


def pair(key_i=KEY, key_r=KEY, match_i=MATCH, match_r=MATCH):
    return Handshake(key_i, match_i, Role.INITIATOR), Handshake(key_r, match_r, Role.RECEIVER)


def run(a: Handshake, b: Handshake, first: bytes, to_b=True, limit=10):
    """Deliver messages back and forth until nobody replies."""
    msg, dst = first, (b if to_b else a)
    for _ in range(limit):
        out = dst.handle(msg)
        if out.reply is None:
            return
        msg, dst = out.reply, (a if dst is b else b)


def test_both_sides_complete_and_confirm_from_a_hello():
    i, r = pair()
    run(i, r, i.hello())
    assert i.complete and r.complete and i.confirmed and r.confirmed
    assert i.peer_nonce == r.nonce and r.peer_nonce == i.nonce


def test_simultaneous_hellos_also_converge():
    i, r = pair()
    run(i, r, i.hello())
    j, s = pair()
    # both hellos cross: each answers the other's hello
    pi = j.handle(s.hello()).reply
    ps = s.handle(j.hello()).reply
    run(j, s, pi)
    run(j, s, ps, to_b=False)
    assert j.complete and s.complete and j.confirmed and s.confirmed


def test_session_keys_match_per_direction():
    i, r = pair()
    run(i, r, i.hello())
    si, sr = i.session(), r.session()
    frame = si.seal(Kind.DATA, b"ping")
    assert sr.open(frame) == (Kind.DATA, b"ping")
    assert si.open(sr.seal(Kind.DATA, b"pong")) == (Kind.DATA, b"pong")


@pytest.mark.parametrize("variant", ["key", "match"])
def test_wrong_key_or_match_never_completes(variant):
    i, r = pair(key_r="other key") if variant == "key" else pair(match_r="other")
    run(i, r, i.hello())
    run(i, r, r.hello(), to_b=False)
    assert not i.complete and not r.complete
    assert r.counters.bad_tag >= 1 and i.counters.bad_tag >= 1


def test_reflected_messages_are_refused():
    i, r = pair()
    assert not i.handle(i.hello()).accepted          # own HELLO reflected back
    out = r.handle(i.hello())
    assert not r.handle(out.reply).accepted          # own PROOF reflected back
    assert i.counters.wrong_role == 1 and r.counters.wrong_role == 1 and not r.complete


def test_proof_from_another_exchange_is_refused():
    i, r = pair()
    i2 = Handshake(KEY, MATCH, Role.INITIATOR)       # an old session of the same peer
    stale = r.handle(i2.hello()).reply               # proof bound to i2's nonce
    assert not i.handle(stale).accepted
    assert i.counters.stale == 1 and not i.complete


def test_tampered_proof_is_refused():
    i, r = pair()
    proof = bytearray(r.handle(i.hello()).reply)
    proof[-1] ^= 1
    assert not i.handle(bytes(proof)).accepted and i.counters.bad_proof == 1
    flipped = bytearray(r.handle(i.hello()).reply)
    flipped[7] |= auth.FLAG_VERIFIED                 # claim "verified" without the key
    assert not i.handle(bytes(flipped)).accepted and not i.confirmed


@pytest.mark.parametrize("data", [b"", b"x" * 3, b"\x00\x01" * 20, auth.MAGIC + b"\x01\x09\x01\x00"])
def test_garbage_is_dropped_and_counted(data):
    i, _ = pair()
    assert not i.handle(data).accepted
    assert i.counters.dropped == 1


def test_after_completion_only_the_verified_peer_is_answered():
    i, r = pair()
    run(i, r, i.hello())
    other = Handshake(KEY, MATCH, Role.RECEIVER)     # a second "receiver" replaying later
    assert not i.handle(other.hello()).accepted
    assert i.handle(r.hello()).reply is not None     # the real peer's retransmission


def test_frames_reject_forgery_replay_and_wrong_direction():
    i, r = pair()
    run(i, r, i.hello())
    si, sr = i.session(), r.session()
    frame = si.seal(Kind.DATA, b"x")
    assert sr.open(frame) is not None
    assert sr.open(frame) is None and sr.counters.replayed == 1
    forged = bytearray(si.seal(Kind.DATA, b"y"))
    forged[-20] ^= 0xFF
    assert sr.open(bytes(forged)) is None and sr.counters.bad_tag == 1
    assert si.open(si.seal(Kind.DATA, b"z")) is None          # own frame reflected
    attacker = Handshake("wrong", MATCH, Role.INITIATOR)
    attacker.complete, attacker.peer_nonce = True, r.nonce
    assert sr.open(attacker.session().seal(Kind.DATA, b"evil")) is None


def test_replay_window_accepts_reordering_within_window():
    w = ReplayWindow(size=8)
    assert all(w.check_and_set(s) for s in (0, 2, 1, 5))
    assert not w.check_and_set(2)
    assert w.check_and_set(20)
    assert not w.check_and_set(12)                   # fell out of the window
    assert w.check_and_set(13)


def test_replay_window_survives_a_huge_sequence_jump():
    w = ReplayWindow()
    assert w.check_and_set(0)
    assert w.check_and_set(2**63)                    # no 2**63-bit shift (MemoryError)
    assert not w.check_and_set(2**63)
    assert not w.check_and_set(0)
    assert w.check_and_set(2**63 - 1)


def test_session_before_completion_raises():
    with pytest.raises(AuthenticationError):
        Handshake(KEY, MATCH, Role.INITIATOR).session()


def _stream_pair(key_a=KEY, key_b=KEY):
    a, b = socket.socketpair()
    results = {}

    def side(name, sock, key, role):
        try:
            results[name] = authenticate_stream(sock, key, MATCH, role, time.monotonic() + 5)
        except PunchError as exc:
            results[name] = exc
            sock.close()

    threads = [threading.Thread(target=side, args=("i", a, key_a, Role.INITIATOR)),
               threading.Thread(target=side, args=("r", b, key_b, Role.RECEIVER))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    a.close(), b.close()
    return results


def test_authenticate_stream_succeeds_with_same_key():
    res = _stream_pair()
    assert isinstance(res["i"], auth.Session) and isinstance(res["r"], auth.Session)
    assert res["i"].send_key == res["r"].recv_key


def test_authenticate_stream_fails_with_different_key():
    res = _stream_pair(key_b="not the key")
    assert isinstance(res["i"], PunchError) and isinstance(res["r"], PunchError)
    assert any(isinstance(v, AuthenticationError) for v in res.values())


def test_authenticate_stream_times_out_on_silent_peer():
    a, b = socket.socketpair()
    now = [0.0]

    def clock():
        now[0] += 0.05
        return now[0]

    with pytest.raises(PunchError) as err:
        authenticate_stream(a, KEY, MATCH, "initiator", deadline=0.2, clock=clock)
    assert err.value.reason == "auth-timeout"
    a.close(), b.close()


def test_authenticate_stream_to_a_closed_peer_is_a_punch_error():
    a, b = socket.socketpair()
    b.close()                                        # sendall of our HELLO fails (EPIPE)
    with pytest.raises(PunchError) as err:
        authenticate_stream(a, KEY, MATCH, "initiator", deadline=time.monotonic() + 5)
    assert err.value.reason == "auth-connection-lost"
    a.close()


def test_base_key_is_stretched_and_bound_to_key_and_match():
    import hashlib
    import hmac as _hmac

    base = auth.derive_base_key(KEY, MATCH)
    assert base == auth.derive_base_key(KEY.encode(), MATCH)
    assert base != auth.derive_base_key(KEY, MATCH + "0") != auth.derive_base_key(KEY + "!", MATCH)
    naive = _hmac.new(KEY.encode(), b"stunturn-punch/v1\x00" + MATCH.encode(), hashlib.sha256)
    assert base != naive.digest()            # the raw key is never used directly
    assert auth.stretch_key(KEY) == hashlib.pbkdf2_hmac(
        "sha256", KEY.encode(), b"stunturn-punch/v1 access key", auth.KDF_ITERATIONS)
