"""The pure transaction engine with a fake clock: retransmission, matching, no-reply decisions."""

from __future__ import annotations

import pytest

from stunturn_diag.sansio.probe.engine import Engine, Probe

DEST = ("198.51.100.10", 3478)


def probe(name: str, tid: bytes, **kw) -> Probe:
    return Probe(name, "s", DEST, b"req-" + tid, tid, **kw)


def run_until_idle(eng: Engine, t: float = 0.0, *, reply=None, step_limit: int = 1000):
    """Step the fake clock from wake-up to wake-up; ``reply(send, t)`` may answer."""
    log = []
    for _ in range(step_limit):
        sends, concluded = eng.poll(t)
        log += [(t, s) for s in sends]
        if reply:
            for s in sends:
                reply(s, t)
        if eng.idle:
            return t, log
        t = eng.next_wakeup()
    raise AssertionError("engine never became idle")


def test_answered_once_measures_rtt_and_rto():
    eng = Engine(rto_min=0.02)
    eng.add(probe("a", b"1" * 12))
    sends, _ = eng.poll(0.0)
    assert [s.payload for s in sends] == [b"req-" + b"1" * 12]
    out = eng.on_packet(b"1" * 12, 0.004, source=DEST, sock="s")
    assert out.answered and out.attempts == 1 and out.rtt == pytest.approx(0.004)
    assert eng.srtt == pytest.approx(0.004)
    assert eng.rto == pytest.approx(0.02)  # srtt + 4 rttvar = 0.012, clamped up to rto_min
    assert eng.idle


def test_silence_concluded_after_needed_attempts_plus_two_rto():
    eng = Engine(rto_initial=0.1, rto_min=0.02, min_attempts=3, final_wait_min=0.0)
    eng.add(probe("ok", b"o" * 12))
    eng.poll(0.0)
    eng.on_packet(b"o" * 12, 0.002)  # one clean sample: rto = rto_min
    eng.add(probe("filtered", b"f" * 12, not_before=0.01))
    end, log = run_until_idle(eng, 0.01)
    times = [t for t, s in log]
    assert len(times) == 3  # loss floor 10% -> 0.1**3 <= 1e-3
    assert times == pytest.approx([0.01, 0.03, 0.05])
    out = eng.outcome(b"f" * 12)
    assert out.status == "no-reply" and out.concluded_at == pytest.approx(0.09)


def test_final_wait_has_a_floor_for_busy_hosts():
    eng = Engine(rto_initial=0.02, rto_min=0.02, final_wait_min=0.1)
    eng.add(probe("a", b"a" * 12))
    eng.poll(0.0)
    eng.on_packet(b"a" * 12, 0.001)
    eng.add(probe("f", b"f" * 12, not_before=0.01))
    run_until_idle(eng, 0.01)
    assert eng.outcome(b"f" * 12).concluded_at == pytest.approx(0.05 + 0.1)


def test_one_lost_packet_is_not_filtering():
    eng = Engine(rto_initial=0.05)
    eng.add(probe("a", b"a" * 12))
    dropped = []

    def reply(send, t):
        if not dropped:
            dropped.append(t)  # the first copy is lost
            return
        eng.on_packet(b"a" * 12, t + 0.001)
    run_until_idle(eng, reply=reply)
    out = eng.outcome(b"a" * 12)
    assert out.answered and out.attempts == 2


def test_backoff_doubles_before_first_rtt_sample():
    eng = Engine(rto_initial=0.1, rto_max=1.0)
    eng.add(probe("a", b"a" * 12))
    _, log = run_until_idle(eng)
    assert [round(t, 3) for t, _ in log] == [0.0, 0.1, 0.3]


def test_measured_loss_raises_attempts():
    eng = Engine(rto_initial=0.05, target_miss=1e-3, max_attempts=10)
    assert eng.attempts_needed() == 3
    # five answered transactions each needing two sends: 50% round-trip loss measured
    for i in range(5):
        tid = bytes([i]) * 12
        eng.add(probe(f"p{i}", tid))
        eng.poll(0.0)
        eng.poll(eng.next_wakeup())
        eng.on_packet(tid, 1.0)
    assert eng.loss_estimate == pytest.approx((5 + 0.5) / (10 + 5))
    assert eng.attempts_needed() == 7  # 0.367**7 <= 1e-3


def test_duplicates_and_unknown_are_counted_not_fatal():
    eng = Engine()
    eng.add(probe("a", b"a" * 12))
    eng.poll(0.0)
    assert eng.on_packet(b"a" * 12, 0.01) is not None
    assert eng.on_packet(b"a" * 12, 0.02) is None
    assert eng.on_packet(b"z" * 12, 0.02) is None
    assert eng.stats["duplicates"] == 1 and eng.stats["unmatched"] == 1
    assert eng.outcome(b"a" * 12).duplicates == 1


def test_late_reply_overrides_no_reply():
    eng = Engine(rto_initial=0.02, rto_min=0.02)
    eng.add(probe("a", b"a" * 12))
    run_until_idle(eng)
    assert eng.outcome(b"a" * 12).status == "no-reply"
    out = eng.on_packet(b"a" * 12, 5.0)
    assert out is not None and out.answered and out.late and eng.stats["late"] == 1


def test_reordered_replies_match_by_transaction_id_only():
    eng = Engine()
    tids = [bytes([i]) * 12 for i in range(3)]
    for i, tid in enumerate(tids):
        eng.add(Probe(f"p{i}", f"s{i}", (f"10.0.0.{i}", 1), b"x", tid))
    eng.poll(0.0)
    for tid, src in zip(reversed(tids), [("192.0.2.9", 9)] * 3):  # from anywhere, any order
        assert eng.on_packet(tid, 0.01, source=src, sock="other").answered
    assert eng.idle
    assert {o.name for o in eng.outcomes if o.received_on == "other"} == {"p0", "p1", "p2"}


def test_karn_no_sample_from_retransmitted():
    eng = Engine(rto_initial=0.1)
    eng.add(probe("a", b"a" * 12))
    eng.poll(0.0)
    eng.poll(0.1)  # second copy
    eng.on_packet(b"a" * 12, 0.15)
    assert eng.srtt is None  # ambiguous which copy was answered (Karn)


def test_prelude_is_sent_before_every_attempt_and_passive_tid_matches():
    eng = Engine(rto_initial=0.05)
    eng.add(Probe("confirm", "u", DEST, b"plain", b"c" * 12, prelude=((DEST, b"change"),)))
    eng.expect("inbound", "u", b"i" * 12)
    sends, _ = eng.poll(0.0)
    assert [s.payload for s in sends] == [b"change", b"plain"]
    sends, _ = eng.poll(0.05)
    assert [s.payload for s in sends] == [b"change", b"plain"]
    assert eng.on_packet(b"i" * 12, 0.06).passive
    assert not eng.idle  # passive expectations never keep the engine busy... the probe does
    eng.on_packet(b"c" * 12, 0.06)
    assert eng.idle


def test_not_before_delays_first_send():
    eng = Engine()
    eng.add(probe("later", b"l" * 12, not_before=2.0))
    assert eng.poll(1.0) == ([], [])
    assert eng.next_wakeup() == 2.0
    sends, _ = eng.poll(2.0)
    assert len(sends) == 1


def test_bad_parameters_and_duplicate_tid_rejected():
    with pytest.raises(ValueError):
        Engine(rto_min=1.0, rto_initial=0.5)
    eng = Engine()
    eng.add(probe("a", b"a" * 12))
    with pytest.raises(ValueError):
        eng.add(probe("b", b"a" * 12))


# --- a prior RTT (the TCP connect's) ---------------------------------------------------------

def test_a_prior_rtt_gives_up_on_a_silent_server_after_a_few_rtos():
    cold = Engine(rto_initial=0.05)
    cold.add(probe("silent", b"c" * 12))
    run_until_idle(cold)
    warm = Engine(rto_initial=0.05, prior_rtt=0.002)
    warm.add(probe("silent", b"w" * 12))
    run_until_idle(warm)
    # cold: 50 + 100 ms, then 2 x 200 ms after the last copy; warm: the RTO at its 30 ms
    # floor, 2 x 30 ms, then the 100 ms final wait
    assert cold.outcome(b"c" * 12).concluded_at == pytest.approx(0.55)
    assert warm.outcome(b"w" * 12).concluded_at == pytest.approx(0.16)
    assert warm.outcome(b"w" * 12).status == "no-reply" and warm.prior_only


def test_the_first_udp_sample_replaces_the_prior():
    eng = Engine(prior_rtt=0.3)
    eng.add(probe("a", b"a" * 12))
    eng.poll(0.0)
    assert eng.rto == pytest.approx(0.9)      # srtt + 4 rttvar of the prior
    eng.on_packet(b"a" * 12, 0.004)
    assert not eng.prior_only and eng.srtt == pytest.approx(0.004)
    assert eng.prior_rtt == 0.3


def test_a_prior_rtt_must_be_positive():
    with pytest.raises(ValueError):
        Engine(prior_rtt=0.0)
