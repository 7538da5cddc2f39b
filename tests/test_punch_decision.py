"""Pure strategy choice (punch.decision) and target lists (punch.candidates)."""

from __future__ import annotations

import random

import pytest

from stunturn_diag.behaviour import Filtering, Mapping, PortAllocation
from stunturn_diag.errors import PunchError
from stunturn_diag.lab import CATALOGUE
from stunturn_diag.sansio.punch.candidates import build_targets, peer_addresses
from stunturn_diag.sansio.punch.decision import (BIRTHDAY_PORTS, BIRTHDAY_SOCKETS, PREDICT_WINDOW,
                                          NatProfile, decide, priming_gap, profile_from_details)
from stunturn_diag.sansio.punch.engine import OPEN_PEER_GAP, PRIME_GAP


def prof(name: str, birthday: bool = False) -> NatProfile:
    nat = dict(CATALOGUE[name].expected)
    nat["punch"] = {"birthday": birthday}
    return profile_from_details(nat, "udp")


FEASIBLE_UDP = [n for n in CATALOGUE if n != "udp-blocked"]


@pytest.mark.parametrize("a", FEASIBLE_UDP)
@pytest.mark.parametrize("b", FEASIBLE_UDP)
def test_plan_is_feasible_unless_random_meets_port_filtering(a, b):
    pa, pb = prof(a), prof(b)
    plan = decide(pa, pb)
    assert plan == decide(pa, pb)                         # deterministic
    assert plan.strategy == decide(pb, pa).strategy       # symmetric in the roles
    hopeless = (pa.random and not pb.open_filter) or (pb.random and not pa.open_filter) \
        or (pa.random and pb.dependent) or (pb.random and pa.dependent)
    assert plan.feasible is not hopeless
    if not plan.feasible:
        assert plan.explanation.startswith("relay-needed:") and "random" in plan.explanation


def test_both_random_is_never_feasible_even_with_birthday():
    plan = decide(prof("symmetric-random", True), prof("symmetric-random", True))
    assert plan.strategy == "relay-needed" and "both NATs" in plan.explanation


def test_birthday_needs_both_sides_to_allow_it():
    r, p = "symmetric-random", "port-restricted"
    assert decide(prof(r, True), prof(p, False)).strategy == "relay-needed"
    plan = decide(prof(r, True), prof(p, True))
    assert plan.strategy == "birthday" and plan.birthday_side == "initiator"
    assert decide(prof(p, True), prof(r, True)).birthday_side == "receiver"


def test_birthday_is_planned_for_udp_only():
    r, p = prof("symmetric-random", True), prof("port-restricted", True)
    plan = decide(r, p, protocol="tcp")
    assert plan.strategy == "relay-needed" and not plan.feasible
    assert "UDP only" in plan.explanation and "--birthday" not in plan.explanation
    assert decide(r, p, protocol="udp").strategy == "birthday"


def test_sequential_dependent_sides_get_predicted_windows():
    plan = decide(prof("symmetric-sequential"), prof("symmetric-sequential"))
    assert plan.strategy == "predict"
    assert plan.predict_initiator == plan.predict_receiver == PREDICT_WINDOW
    plan = decide(prof("symmetric-sequential"), prof("port-restricted"))
    assert (plan.strategy, plan.predict_initiator, plan.predict_receiver) == \
        ("predict", PREDICT_WINDOW, 0)
    # an open filter on the other side needs no prediction
    assert decide(prof("symmetric-sequential"), prof("full-cone")).strategy == "simultaneous"


def test_unknown_or_garbage_profiles_fall_back_to_simultaneous():
    for nat in (None, "x", {}, {"udp": "nope"}, {"udp": {"mapping": "sideways"}}):
        p = profile_from_details(nat, "udp")
        assert not p.known
        assert decide(p, prof("symmetric-random")).strategy == "simultaneous"


def test_same_public_ip_means_lan():
    assert decide(prof("symmetric-random"), prof("symmetric-random"),
                  same_public_ip=True).strategy == "lan"


def test_flat_profile_and_protocol_sections():
    flat = {"mapping": "address-and-port-dependent", "port_allocation": "random",
            "filtering": "address-and-port-dependent"}
    assert profile_from_details(flat, "udp").random
    nested = {"udp": {"mapping": "endpoint-independent"}, "tcp": flat}
    assert not profile_from_details(nested, "udp").dependent
    assert profile_from_details(nested, "tcp").random


def details(port=40000, shift=0, local=(), alt=None, birthday=False):
    punch = {"flows_after_stun": shift, "birthday": birthday}
    if alt:
        punch["alt"] = alt
    return {"srflx": {"ip": "203.0.113.18", "port": port},
            "local": [{"ip": ip, "port": p} for ip, p in local], "nat": {"punch": punch}}


def test_prediction_window_starts_after_the_peers_extra_flows():
    plan = decide(prof("symmetric-sequential"), prof("symmetric-sequential"))
    t = build_targets(plan, "initiator", details(20001, shift=1))
    assert t.targets[0] == ("203.0.113.18", 20003)
    assert len(t.targets) == PREDICT_WINDOW and t.prime == t.targets
    assert ("203.0.113.18", 20001) not in t.targets   # would waste one of our own mappings


def test_simultaneous_targets_the_reflexive_address_and_primes_it():
    t = build_targets(decide(prof("port-restricted"), prof("port-restricted")), "receiver",
                      details(5555))
    assert t.targets == t.prime == [("203.0.113.18", 5555)]


def test_lan_targets_locals_first_without_priming():
    plan = decide(NatProfile(), NatProfile(), same_public_ip=True)
    t = build_targets(plan, "initiator", details(5555, local=[("192.168.1.11", 4444)]))
    assert t.targets == [("192.168.1.11", 4444), ("203.0.113.18", 5555)] and t.prime == []


def test_birthday_sides():
    plan = decide(prof("symmetric-random", True), prof("port-restricted", True))
    sprayer = build_targets(plan, "receiver", details(7000), rng=random.Random(1))
    assert len(sprayer.spray) == BIRTHDAY_PORTS and len(set(sprayer.spray)) == BIRTHDAY_PORTS
    assert ("203.0.113.18", 7000) not in sprayer.spray
    random_side = build_targets(plan, "initiator", details(7000))
    assert random_side.extra_sockets == BIRTHDAY_SOCKETS and random_side.hold > 0


def test_alt_protocol_addresses_are_used_for_that_protocol():
    d = details(1000, alt={"tcp": {"srflx": {"ip": "203.0.113.18", "port": 2000}, "local": []}})
    assert peer_addresses(d, "udp")[0] == ("203.0.113.18", 1000)
    assert peer_addresses(d, "tcp")[0] == ("203.0.113.18", 2000)


@pytest.mark.parametrize("bad", [None, {}, {"srflx": {"ip": 5, "port": "x"}},
                                 {"srflx": {"ip": "1.2.3.4", "port": 70000}}])
def test_peer_without_address_is_a_clear_punch_error(bad):
    plan = decide(NatProfile(), NatProfile())
    with pytest.raises(PunchError) as err:
        build_targets(plan, "initiator", bad)
    assert err.value.reason == "no-peer-address"


@pytest.mark.parametrize("blocked", [("initiator",), ("receiver",), ("initiator", "receiver")])
def test_a_side_whose_udp_only_relays_sends_both_to_the_relay(blocked):
    """A side without UDP (no STUN answer) but with the relay over TCP
    (``nat.punch.relay_only``): no punching, both sides relay, the reason named."""
    open_nat = {"udp": {"mapping": "endpoint-independent", "filtering": "endpoint-independent"}}
    nat = {role: dict(open_nat, punch={"relay_only": {"udp": "no STUN answer"}}
                      if role in blocked else {}) for role in ("initiator", "receiver")}
    plan = decide(profile_from_details(nat["initiator"], "udp"),
                  profile_from_details(nat["receiver"], "udp"), same_public_ip=True)
    assert plan.strategy == "relay-needed" and not plan.feasible
    assert tuple(r.value for r in plan.blocked) == blocked
    assert plan.explanation.startswith("udp-blocked:") and "over TCP" in plan.explanation
    assert all(role in plan.explanation for role in blocked)
    # TCP is not affected by a UDP relay_only
    tcp = decide(profile_from_details(nat["initiator"], "tcp"),
                 profile_from_details(nat["receiver"], "tcp"), protocol="tcp")
    assert not tcp.blocked


@pytest.mark.parametrize("mapping,filtering,short", [
    (Mapping.NO_NAT, None, True),
    (Mapping.ENDPOINT_INDEPENDENT, Filtering.ENDPOINT_INDEPENDENT, True),
    (Mapping.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_DEPENDENT, False),
    (Mapping.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT, False),
    (Mapping.ADDRESS_AND_PORT_DEPENDENT, Filtering.ENDPOINT_INDEPENDENT, False),
    (None, None, False),
])
def test_the_long_priming_gap_is_kept_for_peers_an_early_hello_can_harm(mapping, filtering,
                                                                         short):
    """Only a peer without a NAT, or one whose EIM mapping admits anyone (full cone),
    gets the short gap; a filtering NAT, a per-destination mapping and an unknown
    profile keep the long one (the peer may start late and its NAT move its mapping)."""
    assert OPEN_PEER_GAP < PRIME_GAP
    gap = priming_gap(NatProfile(mapping=mapping, filtering=filtering))
    assert gap == (OPEN_PEER_GAP if short else PRIME_GAP)


@pytest.mark.parametrize("name,short", [("port-restricted", False),       # moves (no firewall)
                                        ("port-restricted-drop", True),   # its firewall drops
                                        ("restricted-cone", True),
                                        ("symmetric-sequential", False),  # APDM: undecidable
                                        ("full-cone", True), ("public", True)])
def test_a_probed_mapping_that_stays_put_gets_the_short_gap(name, short):
    """The catalogue's ground truth (as a full probe reports it) through the punch
    profile: ``mapping_moves_on_unsolicited`` false is enough for the short gap; the
    quick punch probe's profile (no move test) keeps the long one."""
    from stunturn_diag.sansio.probe.profile import punch_profile

    profile = profile_from_details(punch_profile(CATALOGUE[name].expected), "udp")
    assert priming_gap(profile) == (OPEN_PEER_GAP if short else PRIME_GAP)
    quick = dict(CATALOGUE[name].expected["udp"], mapping_moves_on_unsolicited=None)
    if not (profile.mapping is Mapping.NO_NAT or profile.filtering is Filtering.ENDPOINT_INDEPENDENT):
        assert priming_gap(profile_from_details({"udp": quick}, "udp")) == PRIME_GAP
