"""UDP punch matrix over the lab catalogue: real kernel NATs, real server, real peers.

Every unordered pair of NAT types is punched with both sides' NAT profile known
(as after a probe). Pairs that can be punched in theory must connect,
authenticate and exchange data both ways; the others must fail within the punch
timeout with a reason naming the cause. The theory below is written from the
NAT specs (RFC 4787), independently of :mod:`stunturn_diag.punch.decision`.
"""

from __future__ import annotations

import itertools

import pytest

from stunturn_diag.behaviour import Filtering, Mapping, PortAllocation
from stunturn_diag.lab import CATALOGUE, Lab, LabSpec
from stunturn_diag.punch.labkit import run_pair

pytestmark = pytest.mark.netns

NAMES = sorted(CATALOGUE)
PAIRS = list(itertools.combinations_with_replacement(NAMES, 2))
FAIL_FAST = 1.5   # punch timeout where failure is expected


def theory(a: str, b: str) -> str | None:
    """None if the pair can be punched, else the failure reason we expect."""
    na, nb = CATALOGUE[a], CATALOGUE[b]
    if na.udp_blocked:      # the initiator (a) cannot learn its mapping: it never waits
        return "stun-failed"
    if nb.udp_blocked:      # the receiver checks in without UDP: both learn it at once
        return "protocol-unavailable"

    def random(n):
        return n.mapping is Mapping.ADDRESS_AND_PORT_DEPENDENT and \
            n.port_allocation is PortAllocation.RANDOM

    def dependent(n):
        return n.mapping is Mapping.ADDRESS_AND_PORT_DEPENDENT

    def admits_any_port(n):
        return n.mapping is Mapping.NO_NAT or n.filtering in (Filtering.ENDPOINT_INDEPENDENT,
                                                              Filtering.ADDRESS_DEPENDENT)
    for x, y in ((na, nb), (nb, na)):
        if random(x) and (dependent(y) or not admits_any_port(y)):
            return "relay-needed"
    return None


@pytest.mark.parametrize("a,b", PAIRS, ids=[f"{a}--{b}" for a, b in PAIRS])
def test_udp_punch_pair(a, b):
    expect = theory(a, b)
    with Lab(LabSpec.simple(a, b)) as lab:
        res = run_pair(lab, "a1", "b1", punch_timeout=FAIL_FAST if expect else 6.0,
                       pair_wait=4.0 if expect in ("stun-failed", "protocol-unavailable")
                       else 15.0)
    ini, rec = res.initiator, res.receiver
    if expect is None:
        assert res.ok, (ini, rec)
        assert ini["strategy"] == rec["strategy"]
        assert res.data_both_ways, (ini, rec)
        assert ini["peer"]["ip"] == lab.site_public_ip("b") or ini["strategy"] == "lan"
        return
    assert not ini["ok"] and not rec["ok"]
    if expect == "stun-failed":
        # the blocked initiator cannot even learn its mapping; its peer is never matched
        assert ini["reason"] == "stun-failed", ini
        assert rec["reason"] in ("stun-failed", "no-initiator"), rec
    elif expect == "protocol-unavailable":
        # matched, and both name the cause (the initiator did not wait out its 4 s:
        # that would be pairing-timeout)
        for side in (ini, rec):
            assert side["reason"] == "protocol-unavailable" and "UDP" in side["message"], side
    else:
        for side in (ini, rec):
            assert side["reason"] == "relay-needed", side
            assert "random port" in side["message"] and "relay" in side["message"]
            assert side["attempts"], side


@pytest.mark.parametrize("a,b", [("symmetric-random", "port-restricted"),
                                 ("port-restricted-drop", "symmetric-random")])
def test_birthday_attempt_reaches_a_random_nat_behind_a_port_filter(a, b):
    """Opt-in on both sides: extra sockets on the random side, a bounded spray on the other.

    Probabilistic by nature (about 98 % per attempt with 256 sockets x 1024 ports over
    the 64 K port range): up to three attempts, each in a fresh lab.
    """
    for _ in range(3):
        with Lab(LabSpec.simple(a, b)) as lab:
            res = run_pair(lab, "a1", "b1", punch_timeout=6.0, birthday=True)
        if res.ok:
            break
    assert res.ok, (res.initiator, res.receiver)
    assert res.initiator["strategy"] == res.receiver["strategy"] == "birthday"
    assert res.data_both_ways
