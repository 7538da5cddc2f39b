"""Pure port-counter reasoning for sequential NATs (stunturn_diag.sansio.punch.counter)."""

from stunturn_diag.sansio.punch import counter
from stunturn_diag.sansio.punch.candidates import build_targets, promised_port
from stunturn_diag.sansio.punch.counter import Reading, lead, promise, rate, steer, too_fast_message
from stunturn_diag.sansio.punch.decision import Plan


def test_rate_subtracts_our_own_flows_and_the_reading_itself():
    # 21 ports in 1 s: the second reading is one, 4 were ours, 16 came from others
    assert rate(Reading(20000, 0.0), Reading(20021, 1.0), own_flows=4) == 16.0
    assert rate(Reading(20000, 0.0), Reading(20001, 0.01)) is None   # too close in time
    assert rate(Reading(20000, 0.0), Reading(20001, 1.0), own_flows=3) == 0.0
    assert rate(Reading(21000, 0.0), Reading(20100, 1.0)) is None    # wrapped: unknown


def test_promise_leads_by_the_rate_over_the_horizon_within_bounds():
    assert promise(Reading(20000, 0.0), 1, None, 2.0) == 20000 + 1 + 1 + counter.LEAD_MARGIN
    assert lead(10.0, 2.0) == 30 + counter.LEAD_MARGIN
    assert lead(1e6, 10.0) == counter.MAX_LEAD


def test_steer_burns_the_gap_goes_inside_the_window_and_gives_up_past_it():
    assert steer(Reading(20000, 0), 20010, 8) == counter.Step("burn", 8)   # 9th slot: a read
    assert steer(Reading(20009, 0), 20010, 8) == counter.Step("go", 0)
    assert steer(Reading(20012, 0), 20010, 8) == counter.Step("go", 3)
    assert steer(Reading(20017, 0), 20010, 8).action == "late"
    # others opened 5 flows since the reading's request left: the burn leaves them out
    assert steer(Reading(20000, 0), 20010, 8, others=5) == counter.Step("burn", 3)
    assert steer(Reading(20000, 0), 20010, 8, others=50) == counter.Step("burn", 0)
    assert counter.drift(100.0, 0.105) == 10 and counter.drift(None, 1.0) == 0
    text = too_fast_message(Reading(20000, 0.0), Reading(20400, 1.0), 2, 20010, 8)
    assert "397.0 flows/s" in text and "too fast" in text and "20010-20017" in text


def test_the_peer_aims_at_the_promised_window():
    plan = Plan("predict", True, "x", predict_initiator=8)
    details = {"srflx": {"ip": "203.0.113.2", "port": 20001},
               "nat": {"punch": {"flows_after_stun": 2, "next_port": 20100}}}
    assert promised_port(details) == 20100
    targets = build_targets(plan, "receiver", details)
    assert targets.targets == [("203.0.113.2", p) for p in range(20100, 20108)]
    del details["nat"]["punch"]["next_port"]          # older peers: srflx + shift + 1
    assert build_targets(plan, "receiver", details).targets[0] == ("203.0.113.2", 20004)
    assert promised_port({"nat": {"punch": {"next_port": True}}}) is None


def test_a_counter_that_outruns_the_window_during_the_punch_is_too_fast():
    assert counter.outruns_window(500.0, 8)           # 10 ports in PUNCH_SPAN
    assert not counter.outruns_window(100.0, 8)
    assert not counter.outruns_window(None, 8)
    assert counter.outruns_window(100.0, 8, skip=7)   # one port of the window left
    # a reading answered 100 ms after its request left: 12 ports taken by the punch
    assert counter.outruns_window(100.0, 8, age=0.1)
    assert not counter.outruns_window(100.0, 8, age=0.01)
    text = too_fast_message(Reading(20000, 0.0), Reading(20100, 0.2), 0, 20090, 16)
    assert "too fast" in text and "495.0 flows/s" in text and "20090-20105" in text


def test_after_reading_steps_burn_go_read_again_and_too_fast():
    from stunturn_diag.sansio.punch.counter import Move, UsedPorts, after_reading
    first = Reading(20000, 0.0)
    # slow counter (10 flows/s), far below the window: burn all but one of the gap
    assert after_reading(first, Reading(20010, 1.0), 0, 0.0, 20100, 8, False) == \
        Move("burn", 20100 - 20011 - 1)
    # right in front of the window, fresh reading: go
    assert after_reading(first, Reading(20101, 10.0), 0, 0.0, 20100, 8, False) == \
        Move("go", 2)
    # inside, but the answer is late and others moved meanwhile: read again, unless
    # that was the last step
    late = Reading(21000, 10.0)              # 100 flows/s
    assert after_reading(first, late, 0, 0.05, 20999, 8, False) == Move("read")
    assert after_reading(first, late, 0, 0.05, 20999, 8, True) == Move("too-fast")
    # past the window
    assert after_reading(first, Reading(20200, 2.0), 0, 0.0, 20100, 8, False) == \
        Move("too-fast")
    used = UsedPorts()
    assert used.take(("192.0.2.1", 3478), 5000) and not used.take(("192.0.2.1", 3478), 5000)
    assert used.take(("192.0.2.1", 9), 5000)


def _meets(d_i: int, d_r: int, window: int = 8) -> bool:
    """Two sequential NATs (RFC 4787 4.1: one new mapping per destination, 5: exact
    filter) after both promised offset 0: the initiator's k-th flow lands at offset
    ``k + d_i`` and the receiver's at ``k + d_r`` (unforeseen shifts). A pair connects
    when each one's mapped port is exactly where the other aims."""
    from stunturn_diag.sansio.punch.candidates import window_ports
    ini = window_ports(0, window, "initiator", True)     # where the initiator aims
    rec = window_ports(0, window, "receiver", True)      # where the receiver aims
    return any(ini[a] == b + d_r and rec[b] == a + d_i
               for a in range(window) for b in range(window))


def test_two_sequential_windows_meet_despite_an_unforeseen_shift():
    from stunturn_diag.sansio.punch.candidates import SHIFT_SPAN, window_ports
    for d_i in range(SHIFT_SPAN):
        for d_r in range(SHIFT_SPAN - d_i):
            assert _meets(d_i, d_r), (d_i, d_r)
    assert not _meets(SHIFT_SPAN, 0)          # the limit is real, not a stub
    # the same k-th-to-k-th aim on both sides (the old rule) meets only unshifted
    assert window_ports(0, 8, "initiator", True) == list(range(8))
    assert window_ports(0, 8, "initiator", False) == window_ports(0, 8, "receiver", False)
    rec = window_ports(0, 8, "receiver", True)
    assert len(set(rec)) == len(rec)          # distinct: TCP keeps one socket per target


def test_the_receiver_spreads_its_window_only_when_both_sides_are_sequential():
    both = Plan("predict", True, "x", predict_initiator=8, predict_receiver=8)
    one = Plan("predict", True, "x", predict_initiator=8)
    details = {"srflx": {"ip": "203.0.113.2", "port": 20001},
               "nat": {"punch": {"next_port": 20100}}}
    spread = [p for _ip, p in build_targets(both, "receiver", details).targets]
    assert spread == [20100 + k + k % 3 for k in range(8)]
    plain = [p for _ip, p in build_targets(one, "receiver", details).targets]
    assert plain == list(range(20100, 20108))
