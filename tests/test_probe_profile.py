"""sansio.probe.profile.punch_profile: the one probe -> punch NAT profile conversion (pure)."""

from __future__ import annotations

from stunturn_diag.behaviour import Filtering, Mapping, PortAllocation
from stunturn_diag.sansio.probe.classify import Verdict
from stunturn_diag.sansio.probe.profile import punch_profile
from stunturn_diag.sansio.probe.result import ProbeResult
from stunturn_diag.sansio.punch.decision import profile_from_details


def _result(tcp_mapping=None) -> ProbeResult:
    r = ProbeResult({"url": "x"}, "192.168.1.10", "203.0.113.2", True, 80.0, True, tcp_reachable=True)
    r.udp = {"mapping": Verdict(Mapping.ADDRESS_AND_PORT_DEPENDENT, "m"),
             "filtering": Verdict(Filtering.ADDRESS_AND_PORT_DEPENDENT, "f"),
             "port_allocation": Verdict(PortAllocation.SEQUENTIAL, "a"), "hairpin": Verdict(True, "h")}
    r.tcp = {"mapping": Verdict(tcp_mapping, "m"), "filtering": Verdict(None, "f")}
    return r


def test_a_result_its_json_and_the_profile_itself_give_the_same_profile():
    r = _result()
    want = {"udp": {"mapping": "address-and-port-dependent", "filtering": "address-and-port-dependent",
                    "port_allocation": "sequential"}}       # nothing decided over TCP: no section
    assert punch_profile(r) == punch_profile(r.to_json()) == punch_profile(r.profile()) == want
    assert punch_profile(want) == want
    assert profile_from_details(punch_profile(r), "udp").predictable


def test_a_flat_profile_is_udp_and_garbage_is_empty():
    assert punch_profile({"mapping": "endpoint-independent", "filtering": None}) == {
        "udp": {"mapping": "endpoint-independent"}}
    assert punch_profile(_result(Mapping.NO_NAT))["tcp"] == {"mapping": "no-nat"}
    assert punch_profile(None) == punch_profile("x") == punch_profile({"udp": "x"}) == {}
