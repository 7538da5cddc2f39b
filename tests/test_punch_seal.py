"""AEAD sealing after the handshake: UDP frames and TCP records (stunturn_diag.sansio.punch.seal)."""

from __future__ import annotations

import os
import pytest

from stunturn_diag.errors import AuthenticationError
from stunturn_diag.sansio.punch.handshake import Handshake, Role
from stunturn_diag.sansio.punch.seal import (FRAME_OVERHEAD, MAX_RECORD, RecordReader, RecordSealer,
                                      ReplayWindow, Session)
from stunturn_diag.sansio.punch.wire import Kind

KEY = "seal-test-key-0123"
SECRET = b"attack at dawn, the vault code is 4711"


def sessions() -> tuple[Session, Session]:
    i, r = Handshake(KEY, "m-seal", Role.INITIATOR, entropy=os.urandom), Handshake(KEY, "m-seal", Role.RECEIVER, entropy=os.urandom)
    i.handle(r.handle(i.hello()).reply)
    r.handle(i.proof())
    assert i.complete and r.complete
    return i.session(), r.session()


def test_frames_are_ciphertext_and_round_trip():
    si, sr = sessions()
    frame = si.seal(Kind.DATA, SECRET)
    assert SECRET not in frame and SECRET[:8] not in frame
    assert len(frame) == len(SECRET) + FRAME_OVERHEAD
    assert sr.open(frame) == (Kind.DATA, SECRET)
    # the same plaintext twice: different ciphertext (nonce from the sequence number)
    assert si.seal(Kind.DATA, SECRET)[16:] != frame[16:]


def test_frames_reject_forgery_replay_and_wrong_direction():
    si, sr = sessions()
    frame = si.seal(Kind.DATA, b"x")
    assert sr.open(frame) is not None
    assert sr.open(frame) is None and sr.counters.replayed == 1
    forged = bytearray(si.seal(Kind.DATA, b"y"))
    forged[-20] ^= 0xFF
    assert sr.open(bytes(forged)) is None and sr.counters.bad_tag == 1
    kind_swapped = bytearray(si.seal(Kind.DATA, b"z"))
    kind_swapped[5] = Kind.BYE                               # header is associated data
    assert sr.open(bytes(kind_swapped)) is None and sr.counters.bad_tag == 2
    assert si.open(si.seal(Kind.DATA, b"z")) is None         # own frame reflected
    other_i, _ = sessions()                                  # keys of another handshake
    other_i.next_seq = 100                                   # (a fresh sequence number)
    assert sr.open(other_i.seal(Kind.DATA, b"evil")) is None and sr.counters.bad_tag == 3


def test_a_forged_high_sequence_number_does_not_move_the_window():
    """The window advances only after the tag verified: forgeries cannot push it away."""
    si, sr = sessions()
    first = si.seal(Kind.DATA, b"1")
    forged = bytearray(si.seal(Kind.DATA, b"2"))
    forged[8:16] = (2**40).to_bytes(8, "big")
    assert sr.open(bytes(forged)) is None and sr.counters.bad_tag == 1
    assert sr.open(first) == (Kind.DATA, b"1")


def test_reordering_within_the_window_is_delivered_beyond_it_dropped_and_counted():
    si, sr = sessions()
    frames = [si.seal(Kind.DATA, bytes([n])) for n in range(100)]
    assert sr.open(frames[99]) is not None
    assert sr.open(frames[50]) is not None                   # 49 back: inside the 64 window
    assert sr.open(frames[10]) is None and sr.counters.replayed == 1   # 89 back: outside
    assert sr.open(frames[50]) is None and sr.counters.replayed == 2


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


def _record_pair(key=b"k" * 32):
    return RecordSealer(key), RecordReader(key)


def test_records_round_trip_in_pieces_and_are_ciphertext():
    sealer, reader = _record_pair()
    data = SECRET * 1000                             # > MAX_RECORD: several records
    wire = sealer.seal_data(data) + sealer.seal(Kind.FIN)
    assert SECRET not in wire and sealer.seq == len(data) // MAX_RECORD + 2
    got, kinds = b"", []
    for i in range(0, len(wire), 777):               # arbitrary TCP segmentation
        for kind, payload in reader.feed(wire[i:i + 777]):
            kinds.append(kind)
            got += payload
    assert got == data and kinds[-1] is Kind.FIN and reader.pending == 0


@pytest.mark.parametrize("attack", ["flip", "replay", "drop", "swap", "length"])
def test_a_modified_replayed_or_dropped_record_fails_the_stream(attack):
    sealer, reader = _record_pair()
    records = [sealer.seal(Kind.DATA, bytes([n]) * 10) for n in range(3)]
    if attack == "flip":
        bad = bytearray(records[1])
        bad[5] ^= 1
        stream = records[0] + bytes(bad)
    elif attack == "replay":
        stream = records[0] + records[0]
    elif attack == "drop":
        stream = records[0] + records[2]
    elif attack == "swap":
        stream = records[1] + records[0]
    else:
        stream = b"\x03\xff\xff" + records[0][3:]
    with pytest.raises(AuthenticationError) as err:
        reader.feed(stream)
    assert err.value.reason == "record-failed"
    assert reader.counters.bad_tag + reader.counters.malformed == 1
    with pytest.raises(AuthenticationError):
        reader.feed(records[2])                      # dead after the first failure
