"""Pure parts of the port-mapped path: the plan (strategy portmap), the targets, and
which mapping protocol a probe report allows."""

from __future__ import annotations

import pytest

from stunturn_diag.behaviour import Filtering, Mapping, PortAllocation
from stunturn_diag.sansio.punch.candidates import build_targets
from stunturn_diag.sansio.punch.decision import NatProfile, decide, profile_from_details
from stunturn_diag.punch.portmap_path import usable_method

RANDOM = NatProfile(Mapping.ADDRESS_AND_PORT_DEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT,
                    PortAllocation.RANDOM)
PORT_RESTRICTED = NatProfile(Mapping.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT,
                             PortAllocation.PRESERVING)
MAPPED = {"ip": "203.0.113.2", "port": 40000}


def _with_portmap(p: NatProfile) -> NatProfile:
    return NatProfile(p.mapping, p.filtering, p.allocation, p.birthday_ok, portmap=True)


def test_a_mapping_replaces_relay_needed_and_names_the_side_reached():
    assert decide(RANDOM, PORT_RESTRICTED).strategy == "relay-needed"
    for ini, rec, side in ((_with_portmap(RANDOM), PORT_RESTRICTED, "initiator"),
                           (PORT_RESTRICTED, _with_portmap(RANDOM), "receiver"),
                           (_with_portmap(RANDOM), _with_portmap(RANDOM), "receiver"),
                           (RANDOM, _with_portmap(RANDOM), "receiver")):
        plan = decide(ini, rec)
        assert (plan.strategy, plan.feasible, plan.portmap_side) == ("portmap", True, side)
        assert "relay" in plan.explanation       # what it would have been


def test_a_mapping_changes_nothing_where_punching_works_or_over_tcp():
    assert decide(_with_portmap(PORT_RESTRICTED), PORT_RESTRICTED).strategy == "simultaneous"
    assert decide(_with_portmap(RANDOM), PORT_RESTRICTED, protocol="tcp").strategy == "relay-needed"


def test_details_carry_the_mapping_and_targets_follow_the_plan():
    peer = {"srflx": {"ip": "203.0.113.2", "port": 5555},
            "nat": {"udp": {"mapping": "address-and-port-dependent",
                            "filtering": "address-and-port-dependent",
                            "port_allocation": "random"}, "punch": {"portmap": MAPPED}}}
    assert profile_from_details(peer["nat"], "udp").portmap is True
    assert profile_from_details({"punch": {"portmap": {"ip": "x"}}}, "udp").portmap is False
    plan = decide(PORT_RESTRICTED, profile_from_details(peer["nat"], "udp"))
    assert plan.portmap_side == "receiver"
    # the initiator sends to the mapped address (not the reflexive one), no priming
    t = build_targets(plan, "initiator", peer)
    assert t.targets == [("203.0.113.2", 40000)] and t.prime == []
    # the receiver only answers
    assert build_targets(plan, "receiver", {"srflx": {"ip": "198.51.100.7", "port": 1}}).targets == []


@pytest.mark.parametrize("block, method", [
    ({"pcp": True, "nat_pmp": True, "upnp": True, "usable": True}, "pcp"),
    ({"pcp": False, "nat_pmp": True, "upnp": True, "usable": True}, "nat-pmp"),
    ({"pcp": False, "nat_pmp": False, "upnp": True, "usable": True}, "upnp"),
    ({"pcp": True, "nat_pmp": True, "upnp": True, "usable": False}, None),   # behind a CGNAT
    ({"pcp": True, "usable": None}, None),
    (None, None),
])
def test_the_mapping_protocol_comes_from_the_probe_report(block, method):
    assert usable_method({"udp": {}, "port_mapping": block}) == method
