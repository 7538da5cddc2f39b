"""The dual-stack probe's pure parts and its orchestration with a fake ``run_probe``:
the IPv6 plan from /v1/info, the verdict wording, the JSON block, the report, the
host-address helper's choice."""

from __future__ import annotations

import threading

import pytest

from stunturn_diag.behaviour import Filtering, Mapping, PortAllocation
from stunturn_diag.hostaddr import HostAddress, usable
from stunturn_diag.probe import dual_stack
from stunturn_diag.probe.dual_stack import absent, family_verdict, for_url_family, ipv6_plan, summary
from stunturn_diag.sansio.probe.report import render

from test_probe_report import result

STUN6 = {"enabled": True, "primary": {"ip": "2001:db8:0:100::10", "port": 3478}}
INFO = {"stun": {"enabled": True, "primary": {"ip": "198.51.100.10", "port": 3478}},
        "families": {"ipv4": {"http": {"ip": "198.51.100.10", "port": 8080},
                              "stun": {"enabled": True, "primary": {"ip": "198.51.100.10", "port": 3478}}},
                     "ipv6": {"http": {"ip": "2001:db8:0:100::10", "port": 8080}, "stun": STUN6}}}


def test_plan_from_info():
    assert ipv6_plan(INFO) == ("http://[2001:db8:0:100::10]:8080", None)
    assert "older" in ipv6_plan({"stun": {}})[1]
    assert "no IPv6 address" in ipv6_plan({"families": {"ipv4": {}, "ipv6": None}})[1]
    wild = {"families": {"ipv6": {"http": {"ip": "::", "port": 1}, "stun": STUN6}}}
    assert ipv6_plan(wild)[0] is None


def test_the_url_family_picks_the_stun_endpoints():
    assert for_url_family(INFO, "http://[2001:db8:0:100::10]:8080")["stun"] is STUN6
    assert for_url_family(INFO, "http://198.51.100.10:8080") == INFO | {"stun": INFO["families"]["ipv4"]["stun"]}
    assert for_url_family({"stun": {"x": 1}}, "http://[2001:db8::1]:8080") == {"stun": {"x": 1}}
    assert for_url_family(INFO, "http://server.example:8080") is INFO


@pytest.mark.parametrize("nat,mapping,filtering,text", [
    (False, "no-nat", "address-and-port-dependent", "no NAT, but address-and-port-dependent filtering"),
    (False, "no-nat", "address-dependent", "no NAT, but address-dependent filtering"),
    (False, "no-nat", "endpoint-independent", "no NAT, no filtering"),
    (True, "endpoint-independent", "endpoint-independent", "NAT: endpoint-independent mapping"),
    (None, None, None, "undetermined"),
])
def test_verdicts(nat, mapping, filtering, text):
    assert family_verdict(nat, mapping, filtering).startswith(text)


def _v6_firewall():
    r = result(Mapping.NO_NAT, Filtering.ADDRESS_AND_PORT_DEPENDENT, alloc=None, hairpin=None, simopen=None)
    r.public_ip = r.local_ip = "2001:db8:1::10"
    r.nat = False
    return r


def test_summary_uses_the_top_level_vocabulary():
    block = summary(_v6_firewall())
    assert block["reachable"] is True and block["nat"] is False
    assert block["udp"]["mapping"] == "no-nat" and block["udp"]["filtering"] == "address-and-port-dependent"
    assert block["verdict"].startswith("no NAT, but address-and-port-dependent filtering")
    assert set(absent("x")) == set(block)


def test_report_covers_both_families():
    r = result(Mapping.ADDRESS_AND_PORT_DEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT,
               alloc=PortAllocation.RANDOM, simopen=False)
    six = _v6_firewall()
    r.ipv6, r.ipv6_result = summary(six), six
    text = render(r)
    assert "IPv6: no NAT, but address-and-port-dependent filtering" in text
    means = text.split("What this means", 1)[1]
    assert "IPv4 UDP:" in means and "IPv6: You have a public address" in means
    assert "prefer IPv6" in means


def test_report_without_ipv6_is_one_line():
    r = result(Mapping.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT)
    r.ipv6 = absent("no IPv6 route to the server ([Errno 101] Network is unreachable)")
    lines = [line for line in render(r).splitlines() if "IPv6" in line]
    assert lines == ["IPv6: not diagnosed - no IPv6 route to the server ([Errno 101] Network is unreachable)"]
    assert r.exit_code == 0 and r.to_json()["ipv6"]["reachable"] is False


def test_both_families_run_at_once(monkeypatch):
    """run_dual_stack starts the IPv6 run before the first family's and both overlap."""
    monkeypatch.setattr(dual_stack.SignalingClient, "info", lambda self: INFO)
    monkeypatch.setattr(dual_stack, "_route_reason", lambda url, stun: None)
    inside = threading.Barrier(2, timeout=5)
    calls = []

    def fake_probe(url, **kw):
        calls.append(url)
        inside.wait()                     # only passes when both runs are inside at once
        return _v6_firewall() if "[" in url else result(Mapping.ENDPOINT_INDEPENDENT,
                                                        Filtering.ADDRESS_AND_PORT_DEPENDENT)
    r = dual_stack.run_dual_stack("http://198.51.100.10:8080", probe=fake_probe, tcp=True)
    assert sorted(calls) == ["http://198.51.100.10:8080", "http://[2001:db8:0:100::10]:8080"]
    assert r.ipv6["public_ip"] == "2001:db8:1::10" and r.ipv6_result is not None


def test_no_route_is_a_reason_not_an_error(monkeypatch):
    monkeypatch.setattr(dual_stack.SignalingClient, "info", lambda self: INFO)
    monkeypatch.setattr(dual_stack, "_route_reason", lambda url, stun: "no IPv6 route to the server (x)")
    r = dual_stack.run_dual_stack("http://198.51.100.10:8080", probe=lambda url, **kw: result(
        Mapping.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT))
    assert r.ipv6 == absent("no IPv6 route to the server (x)")


def test_a_broken_ipv6_run_is_reported_in_the_block(monkeypatch):
    monkeypatch.setattr(dual_stack.SignalingClient, "info", lambda self: INFO)
    monkeypatch.setattr(dual_stack, "_route_reason", lambda url, stun: None)

    def fake_probe(url, **kw):
        if "[" in url:
            raise OSError("boom")
        return result(Mapping.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT)
    r = dual_stack.run_dual_stack("http://198.51.100.10:8080", probe=fake_probe)
    assert r.ipv6["reachable"] is False and "boom" in r.ipv6["reason"] and r.exit_code == 0


def test_usable_host_addresses():
    found = [HostAddress("lo", "127.0.0.1", 8), HostAddress("lo", "::1", 128),
             HostAddress("eth0", "192.168.1.10", 24), HostAddress("eth0", "192.168.1.11", 24),
             HostAddress("eth0", "fe80::1", 64, 2), HostAddress("eth0", "fd00::5", 64),
             HostAddress("eth0", "2001:db8:1::10", 64), HostAddress("eth1", "::ffff:10.0.0.1", 96)]
    assert usable(found) == ["192.168.1.10", "192.168.1.11", "2001:db8:1::10", "10.0.0.1", "fd00::5"]
    assert usable(found, 6) == ["2001:db8:1::10", "fd00::5"]
    assert usable(found, 4) == ["192.168.1.10", "192.168.1.11", "10.0.0.1"]
