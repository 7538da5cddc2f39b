"""Pure classifiers: RFC 5780 mapping/filtering tables, allocation patterns, TCP, NAT layers."""

from __future__ import annotations

import os

import pytest

from stunturn_diag.behaviour import Filtering, Mapping, PortAllocation, UnsolicitedSyn
from stunturn_diag.sansio.probe import classify as C
from stunturn_diag.sansio.probe.endpoints import Endpoints, from_info, stun_hostport
from stunturn_diag.sansio.probe.engine import Outcome
from stunturn_diag.sansio.probe.hops import analyse_hops
from stunturn_diag.sansio.probe.tcp_classify import classify_simopen, classify_tcp_filtering, classify_tcp_mapping
from stunturn_diag.sansio.stun import ErrorCode

LOCAL = ("192.168.1.10", 40000)
EP = Endpoints(("198.51.100.10", 3478), ("198.51.100.10", 3479), ("198.51.100.20", 3478),
               ("198.51.100.20", 3479))


class Msg:
    def __init__(self, mapped=None, error=None):
        self.mapped_address, self.error = mapped, error


def ans(name, mapped=None, source=None, error=None):
    o = Outcome(name, "s", None, b"t" * 12, status="answered", attempts=1)
    o.message, o.source = Msg(mapped, error), source
    return o


def silent(name, attempts=3):
    return Outcome(name, "s", None, b"t" * 12, status="no-reply", attempts=attempts)


def pub(port):
    return ("203.0.113.2", port)


def outcomes(**mapped):
    return {f"map.{k}": (ans(f"map.{k}", v) if v else silent(f"map.{k}")) for k, v in mapped.items()}


@pytest.mark.parametrize("primary,alt_ip,alt_both,alt_port,expected", [
    (LOCAL, None, None, None, Mapping.NO_NAT),
    (pub(1), pub(1), pub(1), pub(1), Mapping.ENDPOINT_INDEPENDENT),
    (pub(1), pub(2), pub(2), pub(1), Mapping.ADDRESS_DEPENDENT),
    (pub(1), pub(2), pub(3), pub(4), Mapping.ADDRESS_AND_PORT_DEPENDENT),
    (pub(1), None, None, pub(4), Mapping.ADDRESS_AND_PORT_DEPENDENT),  # decided without the alt IP
    (pub(1), None, pub(1), None, Mapping.ENDPOINT_INDEPENDENT),
    (pub(1), None, None, pub(1), None),  # EIM or ADM: open, said so
    (pub(1), pub(2), None, pub(1), None),
    (None, None, None, None, None),
])
def test_mapping_table(primary, alt_ip, alt_both, alt_port, expected):
    v = C.classify_mapping(outcomes(primary=primary, alt_ip=alt_ip, alt_both=alt_both, alt_port=alt_port),
                           LOCAL)
    assert v.value is expected and v.reason


def test_filtering_table():
    both_ok = ans("filt.change_both", pub(1), source=("198.51.100.20", 3479))
    port_ok = ans("filt.change_port", pub(2), source=("198.51.100.10", 3479))
    assert C.classify_filtering({"filt.change_both": both_ok, "filt.change_port": port_ok}, EP).value \
        is Filtering.ENDPOINT_INDEPENDENT
    assert C.classify_filtering({"filt.change_both": silent("a"), "filt.change_port": port_ok}, EP).value \
        is Filtering.ADDRESS_DEPENDENT
    v = C.classify_filtering({"filt.change_both": silent("a"), "filt.change_port": silent("b")}, EP)
    assert v.value is Filtering.ADDRESS_AND_PORT_DEPENDENT and "3 tries" in v.reason
    assert C.classify_filtering({}, EP).value is None


def test_filtering_refused_or_ignored_change_request_is_undetermined():
    err = ans("filt.change_both", None, source=EP.primary, error=ErrorCode(420, "Unknown Attribute"))
    v = C.classify_filtering({"filt.change_both": err, "filt.change_port": silent("b")}, EP)
    assert v.value is None and "420" in v.reason
    same = ans("filt.change_port", pub(2), source=EP.primary)
    v = C.classify_filtering({"filt.change_both": silent("a"), "filt.change_port": same}, EP)
    assert v.value is None and "ignored" in v.reason


@pytest.mark.parametrize("pairs,expected,delta,nxt", [
    ([(("h", p), ("x", p)) for p in (40001, 41234, 50000, 33333, 40404)], PortAllocation.PRESERVING, None, None),
    ([(("h", 40000 + i), ("x", 20000 + i)) for i in range(5)], PortAllocation.SEQUENTIAL, 1, 20005),
    ([(("h", 40000 + i), ("x", 30000 + 2 * i)) for i in range(5)], PortAllocation.SEQUENTIAL, 2, 30010),
    ([(("h", 40000 + i), ("x", 65533 + i)) for i in range(3)] + [(("h", 1), ("x", 1))],
     PortAllocation.RANDOM, None, None),
    ([(("h", 40000 + i), ("x", p)) for i, p in enumerate((5123, 61000, 20817, 43311, 9000))],
     PortAllocation.RANDOM, None, None),
])
def test_allocation_patterns(pairs, expected, delta, nxt):
    v = C.classify_allocation(pairs)
    assert v.value is expected
    assert v.extra.get("delta") == delta and v.extra.get("predicted_next_port") == nxt


def test_allocation_needs_three_points():
    assert C.classify_allocation([(("h", 1), ("x", 1))]).value is None


def test_sequential_with_one_interleaved_mapping_still_sequential():
    ports = [20000, 20001, 20002, 20004, 20005]
    v = C.classify_allocation([(("h", 40000 + i), ("x", p)) for i, p in enumerate(ports)])
    assert v.value is PortAllocation.SEQUENTIAL and v.extra["confidence"] == 0.75


def test_sequential_with_one_stale_mapping_of_a_reused_local_port():
    """Seen in the lab (eim-no-preservation, runs back to back): the kernel reused a local port
    whose endpoint-independent mapping still lived, so that socket got the old public port and
    the NAT's counter did not move."""
    ports = [20249, 20250, 20251, 20148, 20252]
    v = C.classify_allocation([(("h", 40000 + i), ("x", p)) for i, p in enumerate(ports)])
    assert v.value is PortAllocation.SEQUENTIAL and v.extra["delta"] == 1
    assert v.extra["predicted_next_port"] == 20253 and v.extra["outlier"] == 20148
    assert "20148" in v.reason and v.extra["confidence"] == 0.8
    # two stale ones are too many to call it sequential
    ports = [20249, 20150, 20251, 20148, 20252]
    v = C.classify_allocation([(("h", 40000 + i), ("x", p)) for i, p in enumerate(ports)])
    assert v.value is PortAllocation.RANDOM


def test_hairpin_and_unsolicited():
    a2b, b2a = silent("hair.a_to_b"), ans("hair.b_to_a", None, source=pub(7))
    b2a.dest = pub(9)
    assert C.classify_hairpin({"hair.a_to_b": a2b, "hair.b_to_a": b2a}).value is True
    assert C.classify_hairpin({"hair.a_to_b": a2b, "hair.b_to_a": silent("x")}).value is False
    assert C.classify_hairpin({}).value is None
    o = {"unsol.bind": ans("unsol.bind", pub(5)), "unsol.after": ans("unsol.after", pub(6))}
    assert C.classify_unsolicited(o, Mapping.ENDPOINT_INDEPENDENT).value is True
    o["unsol.after"] = ans("unsol.after", pub(5))
    assert C.classify_unsolicited(o, Mapping.ENDPOINT_INDEPENDENT).value is False
    assert C.classify_unsolicited(o, Mapping.ADDRESS_AND_PORT_DEPENDENT).value is None


def test_lifetime_bracket():
    sched = [1.0, 2.0, 4.0, 8.0]
    o = {"life.y0": ans("y"), "life.y1": ans("y"), "life.y2": silent("y"), "life.y3": silent("y")}
    assert C.classify_lifetime(o, sched).value == {"min_s": 2.0, "max_s": 4.0}


def test_tcp_mapping_and_filtering():
    seen = {"primary": pub(1), "alt-ip": pub(1), "alt-both": pub(1), "alt-port": pub(1)}
    assert classify_tcp_mapping(LOCAL, seen).value is Mapping.ENDPOINT_INDEPENDENT
    seen = {"primary": pub(1), "alt-ip": pub(2), "alt-both": pub(3), "alt-port": pub(4)}
    assert classify_tcp_mapping(LOCAL, seen).value is Mapping.ADDRESS_AND_PORT_DEPENDENT
    filt, syn = classify_tcp_filtering({"alt-ip": {"outcome": "connected"}, "alt-port": {"outcome": "connected"}})
    assert filt.value is Filtering.ENDPOINT_INDEPENDENT and syn.value is UnsolicitedSyn.PASS
    filt, syn = classify_tcp_filtering({"alt-ip": {"outcome": "rst"}, "alt-port": {"outcome": "connected"}})
    assert filt.value is Filtering.ADDRESS_DEPENDENT and syn.value is UnsolicitedSyn.RST
    filt, syn = classify_tcp_filtering({"alt-ip": {"outcome": "timeout"}, "alt-port": {"outcome": "icmp"}})
    assert filt.value is Filtering.ADDRESS_AND_PORT_DEPENDENT and syn.value is UnsolicitedSyn.DROP
    filt, syn = classify_tcp_filtering(None)
    assert filt.value is None and syn.value is None
    assert classify_simopen({"skipped": "no ttl"}).value is None
    info = {"connected": True, "ttl": 2, "server_source": {"ip": "198.51.100.20", "port": 5},
            "mapped": {"ip": "203.0.113.2", "port": 6}}
    assert classify_simopen(info).value is True


def test_layers_from_hops():
    hops = [{"ttl": 1, "from": "192.168.1.1"}, {"ttl": 2, "from": "100.64.1.1"}, {"ttl": 3, "from": "203.0.113.1"}]
    got = analyse_hops(hops, 4, True, "203.0.113.18", "192.168.1.10")
    assert got["count"] == 2 and got["cgnat"] is True
    got = analyse_hops(hops[:1], 3, True, "203.0.113.2", "192.168.1.10")
    assert got["count"] == 1 and got["cgnat"] is False
    assert analyse_hops([], 1, False, "192.0.2.10", "192.0.2.10")["count"] == 0


def test_endpoints_from_info_and_other_address():
    info = {"stun": {"primary": {"ip": "198.51.100.10", "port": 3478}, "alt_port": None, "alt_ip": None,
                     "alt_both": None}}
    ep = from_info(info)
    assert ep.primary == ("198.51.100.10", 3478) and not ep.behaviour_tests
    ep = ep.with_other_address(("198.51.100.20", 3479))
    assert ep.behaviour_tests and ep.alt_ip == ("198.51.100.20", 3478) and ep.source == "other-address"
    assert from_info({}) is None
    assert Endpoints(("a", 1)).with_other_address(("a", 2)).behaviour_tests is False  # same IP: unusable


@pytest.mark.parametrize("text,expected", [
    ("192.0.2.1", ("192.0.2.1", 3478)), ("192.0.2.1:5000", ("192.0.2.1", 5000)),
    ("[2001:db8::1]:9", ("2001:db8::1", 9)), ("stun.example.org", ("stun.example.org", 3478)),
])
def test_parse_hostport(text, expected):
    assert stun_hostport(text) == expected


@pytest.mark.parametrize("text", ["", ":80", "h:0", "h:70000", "h:x"])
def test_parse_hostport_rejects(text):
    with pytest.raises(ValueError):
        stun_hostport(text)


def test_plan_requests_are_well_formed_stun():
    from stunturn_diag.sansio.probe.plan import UdpPlan, sockets_for
    from stunturn_diag.sansio.stun import decode
    plan = UdpPlan(EP, {s: ("192.168.1.10", 40000 + i) for i, s in enumerate(sockets_for(None))},
                   rand=os.urandom)
    (first,) = plan.start(0.0)
    msg = decode(first.payload)
    assert msg.transaction_id == first.tid and msg.change_request == (False, False)
    assert len(first.prelude) == 1  # the gate is sent twice per attempt


@pytest.mark.parametrize("ports,delta", [
    ([20000, 20001, 20003, 20004, 20007], 1),        # two steps moved by other flows
    ([20000, 20002, 20005, 20006, 20009], 1),        # most steps moved
    ([30000, 29999, 29996, 29995, 29993], -1),       # a counter that counts down
])
def test_sequential_counter_moved_by_other_flows_is_still_sequential(ports, delta):
    """One counter shared with other hosts (the lab's shared-counter NAT with background
    flows): every step goes the same way and is small."""
    v = C.classify_allocation([(("h", 40000 + i), ("x", p)) for i, p in enumerate(ports)])
    assert v.value is PortAllocation.SEQUENTIAL and v.extra["delta"] == delta, v.reason
    assert v.extra["noisy"] is True and "other flows" in v.reason
    assert v.extra["predicted_next_port"] == ports[-1] + delta


@pytest.mark.parametrize("ports", [
    [20000, 20040, 20041, 20090, 20091],             # a step beyond NOISY_STEP
    [20000, 20003, 20001, 20004, 20006],             # a step back
])
def test_steps_that_are_large_or_change_direction_are_not_a_counter(ports):
    v = C.classify_allocation([(("h", 40000 + i), ("x", p)) for i, p in enumerate(ports)])
    assert v.value is PortAllocation.RANDOM, v.reason
