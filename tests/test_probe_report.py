"""Human report and status/exit-code logic of ProbeResult (pure)."""

from __future__ import annotations

from stunturn_diag.behaviour import Filtering, Mapping, PortAllocation, UnsolicitedSyn
from stunturn_diag.sansio.probe.classify import Verdict
from stunturn_diag.sansio.probe.report import meaning, render
from stunturn_diag.sansio.probe.result import ProbeResult


def result(mapping, filtering, alloc=PortAllocation.PRESERVING, hairpin=True, moves=False,
           tcp_filtering=Filtering.ADDRESS_AND_PORT_DEPENDENT, simopen=True, udp_ok=True) -> ProbeResult:
    r = ProbeResult({"url": "x"}, "192.168.1.10", "203.0.113.2", mapping is not Mapping.NO_NAT, 80.0, udp_ok,
                    tcp_reachable=True)
    r.udp = {"mapping": Verdict(mapping, "m"), "filtering": Verdict(filtering, "f"),
             "port_allocation": Verdict(alloc, "a"), "hairpin": Verdict(hairpin, "h"),
             "mapping_moves_on_unsolicited": Verdict(moves, "u")}
    r.tcp = {"mapping": Verdict(mapping, "m"), "filtering": Verdict(tcp_filtering, "f"),
             "unsolicited_syn": Verdict(UnsolicitedSyn.RST, "s"), "port_allocation": Verdict(alloc, "a"),
             "simultaneous_open": Verdict(simopen, "o")}
    return r


def test_full_cone():
    r = result(Mapping.ENDPOINT_INDEPENDENT, Filtering.ENDPOINT_INDEPENDENT)
    assert r.status == "diagnosed" and r.exit_code == 0 and r.classic_label == "full cone"
    assert any("any peer" in line for line in meaning(r))


def test_port_restricted_with_moving_mapping_warns():
    r = result(Mapping.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT, hairpin=False, moves=True)
    text = "\n".join(meaning(r))
    assert "send first" in text and "hairpinning" in text and "simultaneous open works" in text
    assert r.classic_label == "port-restricted cone"


def test_symmetric_sequential_mentions_prediction_and_relay():
    r = result(Mapping.ADDRESS_AND_PORT_DEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT,
               alloc=PortAllocation.SEQUENTIAL, simopen=False)
    text = "\n".join(meaning(r))
    assert "predicting the next port" in text and "relay" in text and "failed here" in text
    assert r.classic_label == "symmetric"


def test_undetermined_makes_it_partial_and_na_does_not():
    r = result(Mapping.ENDPOINT_INDEPENDENT, None)
    assert r.status == "partial" and r.exit_code == 3
    assert r.undetermined[0]["field"] == "udp.filtering"
    r = result(Mapping.NO_NAT, Filtering.ENDPOINT_INDEPENDENT)
    r.udp["hairpin"] = Verdict(None, "not applicable: no NAT", applicable=False)
    r.udp["port_allocation"] = Verdict(None, "not applicable: no NAT", applicable=False)
    r.tcp["port_allocation"] = Verdict(None, "not applicable: no NAT", applicable=False)
    assert r.status == "diagnosed"
    assert "not applicable" in render(r)


def test_unreachable_only_when_neither_udp_nor_tcp_answered():
    r = result(Mapping.ENDPOINT_INDEPENDENT, None, udp_ok=False)
    assert r.status == "partial"
    r.tcp_reachable = False
    assert r.status == "unreachable" and r.exit_code == 4
    assert "relay" in meaning(r)[0]


def test_binding_lifetime_reads_as_a_bracket():
    r = result(Mapping.ENDPOINT_INDEPENDENT, Filtering.ENDPOINT_INDEPENDENT)
    r.udp["binding_lifetime"] = Verdict({"min_s": 15.0, "max_s": 30.0}, "alive after 15 s, expired by 30 s")
    assert "Binding lifetime (RFC 4787 4.3, RFC 5780 4.6): more than 15 s, at most 30 s" in render(r)
    r.udp["binding_lifetime"] = Verdict({"min_s": 2.0, "max_s": None}, "alive after 2 s")
    assert "more than 2 s (never expired within the test)" in render(r)


def test_udp_blocked_report_keeps_tcp_meaning_and_groups_undetermined():
    r = result(Mapping.ENDPOINT_INDEPENDENT, None, udp_ok=False)
    why = "UDP to the STUN server gets no answer"
    for name in ("mapping", "filtering", "port_allocation", "hairpin"):
        r.udp[name] = Verdict(None, why)
    text = render(r)
    assert text.startswith("NAT: yes   public IP: 203.0.113.2")
    assert "UDP does not reach the STUN server" in text and "What this means" in text
    assert "simultaneous open works" in text  # the TCP consequences are still told
    assert f"undetermined udp.mapping, udp.filtering, udp.port_allocation, udp.hairpin: {why}" in text
    assert text.count(why) == 1  # once, not once per field
