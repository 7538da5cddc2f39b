"""The pure UDP plan: phases, endpoint discovery from OTHER-ADDRESS, lifetime bracketing."""

from __future__ import annotations

import os

import pytest

from stunturn_diag.sansio.probe.endpoints import Endpoints
from stunturn_diag.sansio.probe.engine import Engine, Outcome
from stunturn_diag.sansio.probe.plan import ALLOC_SOCKETS, UdpPlan, lifetime_schedule, sockets_for
from stunturn_diag.sansio.stun import decode

P = ("198.51.100.10", 3478)


class Msg:
    def __init__(self, mapped, other=None):
        self.mapped_address, self.other_address = mapped, other


def answered(probe, mapped, other=None, at=0.0):
    o = Outcome(probe.name, probe.sock, probe.dest, probe.tid, status="answered", attempts=1)
    o.message, o.replied_at = Msg(mapped, other), at
    return o


def no_reply(probe):
    return Outcome(probe.name, probe.sock, probe.dest, probe.tid, status="no-reply", attempts=3)


def new_plan(lifetime=None, ep=Endpoints(P)):
    return UdpPlan(ep, {s: ("192.168.1.10", 40000 + i) for i, s in enumerate(sockets_for(lifetime))},
                   lifetime_max=lifetime, rand=os.urandom)


def through_allocation(plan):
    (first,) = plan.start(0.0)
    (nxt,) = plan.on_outcome(answered(first, ("203.0.113.2", 1), other=("198.51.100.20", 3479)), 0.0)
    for i in range(1, ALLOC_SOCKETS + 1):
        assert nxt.name == f"alloc.{i}" and not plan.concurrent  # strictly one at a time
        out = plan.on_outcome(answered(nxt, ("203.0.113.2", 1 + i)), 0.0)
        if i < ALLOC_SOCKETS:
            (nxt,) = out
    return out


def test_phases_and_other_address():
    plan = new_plan()
    probes = through_allocation(plan)
    assert plan.concurrent and plan.endpoints.source == "other-address"
    assert plan.endpoints.alt_ip == ("198.51.100.20", 3478)
    names = {p.name for p in probes}
    assert names == {"hair.a", "hair.b", "map.alt_ip", "map.alt_both", "map.alt_port", "filt.change_both",
                     "filt.change_port", "unsol.bind"}
    by = {p.name: p for p in probes}
    assert decode(by["filt.change_both"].payload).change_request == (True, True)
    assert decode(by["filt.change_port"].payload).change_request == (False, True)
    assert by["filt.change_both"].sock != by["filt.change_port"].sock != by["unsol.bind"].sock
    assert by["map.alt_ip"].sock == "map"  # mapping tests share one socket (RFC 5780 4.3)


def test_unreachable_primary_ends_the_plan():
    plan = new_plan()
    (first,) = plan.start(0.0)
    assert plan.on_outcome(no_reply(first), 1.0) == []


def test_no_alternate_address_notes_it():
    plan = new_plan()
    (first,) = plan.start(0.0)
    (nxt,) = plan.on_outcome(answered(first, ("203.0.113.2", 1)), 0.0)  # no OTHER-ADDRESS
    for i in range(1, ALLOC_SOCKETS + 1):
        out = plan.on_outcome(answered(nxt, ("203.0.113.2", 1 + i)), 0.0)
        nxt = out[0] if i < ALLOC_SOCKETS else None
    assert {p.name for p in out} == {"hair.a", "hair.b"}
    assert plan.notes and "alternate" in plan.notes[0]


def test_unsolicited_sequence_and_hairpin_cross():
    plan = new_plan()
    probes = {p.name: p for p in through_allocation(plan)}
    (confirm,) = plan.on_outcome(answered(probes["unsol.bind"], ("203.0.113.2", 7)), 0.1)
    assert len(confirm.prelude) == 4 and decode(confirm.prelude[0][1]).change_request == (True, True)
    assert [n for n, _, _ in plan.take_passive()] == ["unsol.inbound"]
    plan.set_srtt(0.02)
    (after,) = plan.on_outcome(answered(confirm, ("203.0.113.2", 7)), 0.2)
    assert after.dest == plan.endpoints.alt_both and after.not_before >= 0.22  # guard >= srtt
    assert plan.on_outcome(answered(probes["hair.a"], ("203.0.113.2", 8)), 0.1) == []
    cross = plan.on_outcome(answered(probes["hair.b"], ("203.0.113.2", 9)), 0.1)
    assert {(p.sock, p.dest[1], p.expect) for p in cross} == {("hair-b", 8, "request"), ("hair-a", 9, "request")}


def test_lifetime_probes_in_parallel_and_cancelled_after_expiry():
    plan = new_plan(lifetime=30)
    sched = lifetime_schedule(30)
    assert sched == [1, 2, 4, 8, 15, 30]
    probes = {p.name: p for p in through_allocation(plan)}
    ys = {}
    for i, t in enumerate(sched):
        (y,) = plan.on_outcome(answered(probes[f"life.x{i}"], ("203.0.113.2", 100 + i), at=1.0), 1.0)
        assert y.not_before == 1.0 + t and decode(y.payload).response_port == 100 + i
        ys[i] = y
    plan.on_outcome(answered(ys[0], None), 2.0)
    plan.on_outcome(no_reply(ys[2]), 5.1)
    assert set(plan.take_cancelled()) == {ys[i].tid for i in (3, 4, 5)}


def test_engine_cancel():
    eng = Engine()
    plan = new_plan()
    (first,) = plan.start(0.0)
    eng.add(first)
    assert eng.cancel(first.tid) and eng.idle and eng.outcome(first.tid).status == "cancelled"
    assert not eng.cancel(first.tid)


def test_punch_profile_keeps_the_serial_allocation_and_runs_only_mapping_and_filtering():
    """The punch profile: the same strictly serial allocation phase, then only the tests
    behind mapping and filtering (no hairpin, no move test), from fewer sockets."""
    assert set(sockets_for(None, punch_profile=True)) == {"map", "filt-both", "filt-port"} | {
        f"alloc{i}" for i in range(1, ALLOC_SOCKETS + 1)}
    plan = UdpPlan(Endpoints(P), {s: ("192.168.1.10", 40000 + i)
                                  for i, s in enumerate(sockets_for(None, punch_profile=True))},
                   punch_profile=True, rand=os.urandom)
    probes = through_allocation(plan)
    assert plan.concurrent
    assert {p.name for p in probes} == {"map.alt_ip", "map.alt_both", "map.alt_port",
                                        "filt.change_both", "filt.change_port"}
    assert all(p.sock in plan.locals for p in probes)
    by = {p.name: p for p in probes}
    assert decode(by["filt.change_both"].payload).change_request == (True, True)
    assert len(by["filt.change_both"].prelude) == 1  # still two copies per attempt


def test_punch_profile_measures_no_lifetime():
    with pytest.raises(ValueError):
        UdpPlan(Endpoints(P), {}, lifetime_max=30, punch_profile=True, rand=os.urandom)
