"""TCP punch matrix over the lab catalogue: real kernel NATs, real STUN over TCP.

Each pair of NAT types gets a lab; in each LAN host ``python3 -m
stunturn_testkit.tcp_selftest`` learns its mapping from the server host's STUN
responder over TCP, swaps candidates with its peer through a file, punches
(simultaneous open, :mod:`stunturn_diag.punch.tcp`) and checks bytes both ways.
Pairs that can be punched in theory must connect; the others must fail by the
deadline with a reason naming the cause. The theory is written from the NAT specs
(RFC 5382 / RFC 4787 terms), independently of :mod:`stunturn_diag.sansio.punch.decision`.
"""

from __future__ import annotations

import itertools
import json
import shutil

import pytest

from stunturn_diag.behaviour import Filtering, Mapping, PortAllocation
from stunturn_diag.lab import CATALOGUE, Lab, LabSpec
from stunturn_testkit.tcp_selftest import run_lab_pair

pytestmark = pytest.mark.netns

NAMES = sorted(CATALOGUE)
PAIRS = list(itertools.combinations_with_replacement(NAMES, 2))
OK_TIMEOUT = 8.0      # punch deadline where success is expected
FAIL_FAST = 1.5       # punch deadline where failure is expected
PREDICT = 8           # ports aimed at above a sequential symmetric NAT's srflx port


def _dependent(n) -> bool:
    return n.mapping is Mapping.ADDRESS_AND_PORT_DEPENDENT


def _sequential(n) -> bool:
    return _dependent(n) and n.port_allocation is PortAllocation.SEQUENTIAL


def _admits_any_port(n) -> bool:
    return n.mapping is Mapping.NO_NAT or n.filtering in (Filtering.ENDPOINT_INDEPENDENT,
                                                          Filtering.ADDRESS_DEPENDENT)


def theory(a: str, b: str) -> bool:
    """Can a TCP simultaneous open (with port prediction) join hosts behind a and b?

    An endpoint-independent mapping faces the peer from its STUN-learnt port; a
    dependent one from a new port, which the peer can only aim at when allocation
    is sequential (prediction) or receive when its filter admits any port of the
    address (its listener accepts the SYN).
    """
    na, nb = CATALOGUE[a], CATALOGUE[b]
    if _dependent(na) and _dependent(nb):
        return _sequential(na) and _sequential(nb)
    for x, y in ((na, nb), (nb, na)):
        if _dependent(x):
            return _sequential(x) or _admits_any_port(y)
    return True


def _predict_args(peer_nat: str) -> list[str]:
    return ["--predict", str(PREDICT)] if _sequential(CATALOGUE[peer_nat]) else []


def assert_connected(ra: dict, rb: dict) -> None:
    assert ra["ok"] and rb["ok"], json.dumps([ra, rb])
    assert ra["got"] == "hello from b" and rb["got"] == "hello from a", json.dumps([ra, rb])
    # both ends describe the same connection
    assert ra["local_addr"][1] == ra["local_port"] and rb["local_addr"][1] == rb["local_port"]


@pytest.mark.parametrize("a,b", PAIRS, ids=[f"{a}--{b}" for a, b in PAIRS])
def test_tcp_punch_pair(a, b):
    expect = theory(a, b)
    with Lab(LabSpec.simple(a, b)) as lab:
        ra, rb = run_lab_pair(lab, "a1", "b1", timeout=OK_TIMEOUT if expect else FAIL_FAST,
                              extra_a=_predict_args(b), extra_b=_predict_args(a))
        if expect:
            assert_connected(ra, rb)
            assert ra["peer_addr"][0] == lab.site_public_ip("b"), ra
            assert rb["peer_addr"][0] == lab.site_public_ip("a"), rb
            return
    for side in (ra, rb):
        assert side["ok"] is False and side["stage"] == "punch", side
        assert side["reason"] in ("refused", "timeout"), side
        assert ("RST" if side["reason"] == "refused" else "dropped") in side["message"], side
        assert side["attempts"], side


@pytest.mark.parametrize("nat", ["port-restricted", "symmetric-random", "full-cone-no-hairpin",
                                 "port-restricted-hairpin"])
def test_tcp_punch_behind_the_same_nat(nat):
    """Two hosts behind one NAT reach each other through their LAN candidates."""
    with Lab(LabSpec.simple(nat, same_nat=True)) as lab:
        ra, rb = run_lab_pair(lab, "a1", "a2", timeout=OK_TIMEOUT)
        assert_connected(ra, rb)
        lan = {lab.host_ip("a1"), lab.host_ip("a2")}
        public = lab.site_public_ip("a")
        assert ra["peer_addr"][0] in lan | {public}, ra
        if not CATALOGUE[nat].hairpin:
            assert ra["peer_addr"][0] == lab.host_ip("a2"), ra
            assert rb["peer_addr"][0] == lab.host_ip("a1"), rb


@pytest.mark.parametrize("nat", ["port-restricted", "port-restricted-drop",
                                 "restricted-cone-rst"])
def test_tcp_punch_survives_start_skew(nat):
    """The receiver starts 1 s late (beyond SETTLE): the initiator's first SYNs meet a
    NAT without a mapping (RST or silence); re-primed rounds still connect."""
    with Lab(LabSpec.simple(nat, nat)) as lab:
        ra, rb = run_lab_pair(lab, "a1", "b1", timeout=OK_TIMEOUT,
                              extra_b=["--delay", "1.0"])
        assert_connected(ra, rb)


def test_tcp_punch_through_carrier_grade_nat_needs_one_more_ttl():
    """Site a sits behind its NAT and a CGNAT: its priming SYN needs TTL 3."""
    spec = LabSpec.simple("port-restricted", "port-restricted", cgnat=("a",))
    with Lab(spec) as lab:
        ra, rb = run_lab_pair(lab, "a1", "b1", timeout=OK_TIMEOUT,
                              extra_a=["--prime-ttl", "3"])
        assert_connected(ra, rb)
        assert rb["peer_addr"][0] == lab.site_public_ip("a"), rb


@pytest.mark.parametrize("a,b", [("port-restricted", "port-restricted"),
                                 ("full-cone", "restricted-cone-rst"),
                                 ("port-restricted-drop", "eim-no-preservation"),
                                 ("symmetric-random", "full-cone")])
def test_tcp_punch_without_cap_net_admin(a, b):
    """Without TCP_REPAIR the ISNs are the kernel's: the priming socket is kept (TTL
    raised once its SYN left) so that the peer's SYN finds the socket whose SYN our NAT
    saw last; only the initiator replaces it with a fresh full-TTL SYN at the settle
    time (``tcp_machine.KERNEL_RECEIVER_KEEPS``), and refused rounds repeat. One attempt,
    no retry (before the receiver kept its prime, about 1 attempt in 7 failed here)."""
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) to drop CAP_NET_ADMIN")
    with Lab(LabSpec.simple(a, b)) as lab:
        ra, rb = run_lab_pair(lab, "a1", "b1", timeout=OK_TIMEOUT, unprivileged=True)
    assert_connected(ra, rb)


#: the receiver's start skew in the control below: far more than the lab's one-way delay
#: (well under 1 ms), so neither side's first SYN can cross the other's in flight, and
#: less than tcp_machine.SETTLE (12 ms), so the TTL-2 prime still opens both NATs before
#: either full-TTL SYN arrives
CONTROL_SKEW = "0.005"


@pytest.mark.parametrize("ttl", ["0", "64", "2"],
                         ids=["no-prime", "prime-reaches-peer-nat", "low-ttl-prime"])
def test_plain_masquerade_needs_the_low_ttl_prime(ttl):
    """Control: between two plain masquerades (RST from the box, conntrack collision)
    a SYN that reaches the peer's NAT before the peer's own SYN left is answered by
    RST there. The setup is exact: one round each (``--max-connects 1``, no retry) and
    the receiver CONTROL_SKEW late, so without the low-TTL prime (no prime, or a
    "prime" at full TTL) the initiator's first SYN meets a NAT that has not punched
    yet and is refused, and so is the receiver's at the initiator's NAT; with the
    TTL-2 prime the same single round connects. (With retries the naive punch is a
    race that the retried rounds sometimes won: 2 of 10 runs with no skew, 2 of 10
    with this skew. That is not what this control is about.)"""
    one = ["--max-connects", "1"]
    with Lab(LabSpec.simple("port-restricted", "port-restricted")) as lab:
        ra, rb = run_lab_pair(lab, "a1", "b1", timeout=OK_TIMEOUT if ttl == "2" else FAIL_FAST,
                              extra_a=["--prime-ttl", ttl, *one],
                              extra_b=["--prime-ttl", ttl, "--delay", CONTROL_SKEW, *one])
    if ttl == "2":
        assert_connected(ra, rb)
        return
    for side in (ra, rb):
        assert side["ok"] is False and side["reason"] == "refused", side
        assert "ECONNREFUSED" in json.dumps(side["attempts"]), side
