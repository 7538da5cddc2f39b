"""The dual-stack punch's pure decisions (stunturn_diag.sansio.punch.families): which
families are punched, with what head start, why not, and which path each side keeps."""

from __future__ import annotations

import pytest

from stunturn_diag.sansio.punch.families import (HAPPY_EYEBALLS_DELAY, attach_ipv6, initiator_pick,
                                                ipv6_block, peer_ipv6, plan_families,
                                                receiver_pick)

V6 = ("2001:db8:b::10", 40000)


def _details(block):
    return {"nat": {"punch": {"ipv6": block}}} if block is not None else {"nat": {"punch": {}}}


OK_BLOCK = ipv6_block(V6, [("2001:db8:b::10", 40000), ("fd00::10", 40000), ("10.0.0.1", 5)])


def test_the_block_carries_the_mapping_and_ipv6_host_candidates_only():
    assert OK_BLOCK == {"srflx": {"ip": V6[0], "port": V6[1]},
                        "local": [{"ip": "2001:db8:b::10", "port": 40000},
                                  {"ip": "fd00::10", "port": 40000}]}
    assert ipv6_block(None, [], "no route") == {"unavailable": "no route"}


@pytest.mark.parametrize("block,targets,why", [
    (OK_BLOCK, [V6, ("fd00::10", 40000)], None),
    (None, [], "shared no IPv6"),
    ({"unavailable": "IPv6 disabled"}, [], "IPv6 disabled"),
    ({"srflx": {"ip": "10.0.0.1", "port": 5}}, [], "malformed"),            # not IPv6
    ({"srflx": {"ip": "ff02::1", "port": 5}}, [], "malformed"),             # multicast
    ({"srflx": {"ip": "::ffff:10.0.0.1", "port": 5}}, [], "malformed"),     # v4-mapped
    ({"srflx": {"ip": V6[0], "port": 0}}, [], "malformed"),
    ({"srflx": {"ip": V6[0], "port": True}}, [], "malformed"),
    ({"srflx": "x", "local": [{"ip": V6[0], "port": 9}] * 9}, [(V6[0], 9)], None),
])
def test_peer_candidates_are_vetted(block, targets, why):
    got, reason = peer_ipv6(_details(block))
    assert got == targets
    assert (reason is None) if why is None else (why in reason)


@pytest.mark.parametrize("mine,peer,v4_ok,start,reasons", [
    # both sides have IPv6, IPv4 punchable: race, IPv6 first
    (None, OK_BLOCK, True, {6: 0.0, 4: HAPPY_EYEBALLS_DELAY}, {}),
    # IPv4 cannot be punched (both random-symmetric): IPv6 only
    (None, OK_BLOCK, False, {6: 0.0}, {4: "IPv4 cannot be punched: both random"}),
    # no IPv6 here: IPv4 only, whatever its plan says (the relay fallback as before)
    ("no route", OK_BLOCK, False, {4: 0.0}, {6: "this side has no IPv6 path: no route"}),
    (None, {"unavailable": "disabled"}, True, {4: 0.0}, {6: "the peer has no IPv6 path: disabled"}),
    (None, None, True, {4: 0.0}, {6: "shared no IPv6"}),
])
def test_which_families_are_punched(mine, peer, v4_ok, start, reasons):
    plan = plan_families(mine, _details(peer), v4_feasible=v4_ok,
                         v4_explanation="both random")
    assert plan.start == start
    assert plan.raced == (len(start) == 2)
    for fam, why in reasons.items():
        assert plan.reasons[fam].startswith(why) or why in plan.reasons[fam]
    assert bool(plan.targets6) == (6 in start)


def test_the_head_start_is_an_option():
    plan = plan_families(None, _details(OK_BLOCK), v4_feasible=True, v4_explanation="",
                         delay=0.3)
    assert plan.start == {6: 0.0, 4: 0.3}


def test_the_report_names_each_family_and_why():
    raced = plan_families(None, _details(OK_BLOCK), v4_feasible=True, v4_explanation="")
    assert raced.report(6) == {"6": {"tried": True, "result": "won"},
                               "4": {"tried": True, "result": "lost",
                                     "reason": "IPv6 authenticated first"}}
    assert raced.report(4, {6: "timeout"})["6"] == {"tried": True, "result": "failed",
                                                    "reason": "timeout"}
    only4 = plan_families("disabled", _details(OK_BLOCK), v4_feasible=True, v4_explanation="")
    assert only4.report(4)["6"] == {"tried": False, "result": "not-tried",
                                    "reason": "this side has no IPv6 path: disabled"}


@pytest.mark.parametrize("complete,running,at_deadline,pick", [
    ({}, 2, False, None),
    ({}, 0, True, None),
    ({4: False}, 1, False, None),          # authenticated, not nominated, IPv6 may still come
    ({4: False}, 0, False, 4),             # the only path left
    ({4: True}, 1, False, 4),              # nominated
    ({6: False, 4: True}, 0, False, 4),    # the initiator kept IPv4: follow it
    ({6: True, 4: False}, 0, False, 6),
    ({6: False, 4: False}, 0, False, None),  # two paths: wait for the initiator's word
    ({6: False, 4: False}, 0, True, 6),    # no nomination by the deadline: prefer IPv6
    ({4: False}, 1, True, 4),
])
def test_the_receiver_follows_the_initiators_nomination(complete, running, at_deadline, pick):
    assert receiver_pick(complete, running=running, at_deadline=at_deadline) == pick


def test_the_initiator_keeps_the_first_authenticated_path():
    assert initiator_pick([4, 6]) == 4 and initiator_pick([6]) == 6
    assert initiator_pick([]) is None


def test_the_block_is_trimmed_to_the_servers_details_limit():
    import json
    nat = {"udp": {"mapping": "x" * 100}, "punch": {"birthday": False}}
    size = len(json.dumps(attach_ipv6(nat, OK_BLOCK), separators=(",", ":")))
    assert attach_ipv6(nat, OK_BLOCK)["punch"]["ipv6"] == OK_BLOCK
    assert attach_ipv6(nat, OK_BLOCK, limit=size - 1)["punch"]["ipv6"]["local"] == []
    bare = len(json.dumps(attach_ipv6(nat, OK_BLOCK, limit=size - 1), separators=(",", ":")))
    assert "unavailable" in attach_ipv6(nat, OK_BLOCK, limit=bare - 1)["punch"]["ipv6"]
    assert attach_ipv6(nat, OK_BLOCK, limit=50) == nat
    assert nat["punch"] == {"birthday": False}          # not mutated


def test_tcp_candidates_travel_under_tcp():
    block = ipv6_block(V6, [], tcp=((V6[0], 50000), [], None))
    assert peer_ipv6(_details(block), "tcp") == ([(V6[0], 50000)], None)
    assert peer_ipv6(_details(block), "udp") == ([V6], None)
    no_tcp = ipv6_block(V6, [], tcp=(None, [], "no TCP STUN over IPv6"))
    targets, why = peer_ipv6(_details(no_tcp), "tcp")
    assert targets == [] and "no TCP STUN over IPv6" in why
    targets, why = peer_ipv6(_details({"unavailable": "no route"}), "tcp")
    assert targets == [] and "no route" in why
    targets, why = peer_ipv6(_details(OK_BLOCK), "tcp")     # an older, UDP-only block
    assert targets == [] and "shared no IPv6 TCP" in why
    plan = plan_families(None, _details(block), v4_feasible=True, v4_explanation="",
                         protocol="tcp")
    assert plan.targets6 == [(V6[0], 50000)] and plan.raced


def test_a_failed_ipv4_only_punch_reports_both_families():
    plan = plan_families("no route", _details(OK_BLOCK), v4_feasible=True, v4_explanation="")
    assert plan.report(None, {4: "timeout"}) == {
        "6": {"tried": False, "result": "not-tried",
              "reason": "this side has no IPv6 path: no route"},
        "4": {"tried": True, "result": "failed", "reason": "timeout"}}
