"""UDP punch matrix over the lab catalogue: real kernel NATs, real server, real peers,
a real TURN relay offered.

Every unordered pair of NAT types is punched with both sides' NAT profile known
(as after a probe), through ``stunturn-diag lab matrix --relay`` (the real CLI, as a
subprocess: coturn on the server host of each pair's lab): the server command is
``serve`` offering that relay, the peers are
:mod:`stunturn_diag.punch.labpeer` (our punch library, the key from the runner's
``STUNTURN_LAB_KEY``), each exiting 0 only when data went both ways. The runner's
theory column (``stunturn_diag.sansio.lab.theory``: the catalogue's ground truth through
the punch's own decision) sets each pair's expectation; :func:`theory` below, written
from the NAT specs (RFC 4787) independently of :mod:`stunturn_diag.sansio.punch.decision`,
must agree with it pair by pair. Pairs that can be punched must connect directly,
authenticate and exchange data both ways; the pairs that cannot (relay-needed) must
connect through the relay at once, each side naming why direct was not possible
(``relay_reason``); pairs with a site that has no UDP at all connect through the relay
too, the blocked side reaching it over TCP for a UDP relayed address (RFC 8656 section
3.1; ``relay_reason`` ``udp-blocked: ...``), read from each peer's JSON line in the
pair's log folder (without a relay those pairs fail with ``stun-failed`` /
``protocol-unavailable``: tests/test_punch_api.py and the no-relay runs of
netns_tests/test_punch_defaults.py). A small extra chunk has a gateway that maps ports
(``+portmap``/``+upnp``): those pairs take the port mapping, not the relay. The catalogue runs in a few chunks (one ``lab matrix`` call
each, parallel under xdist); a failing chunk names its failing pairs.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest

from stunturn_diag.behaviour import Filtering, Mapping, PortAllocation
from stunturn_diag.lab import CATALOGUE, Lab, LabSpec
from stunturn_diag.lab.ci.plan import make_pair
from stunturn_diag.lab.pair_runner import parse_peer_output, run_pair
from stunturn_testkit import punch_matrix

from test_lab_ci_run import _cli, _json_lines

pytestmark = pytest.mark.netns

NAMES = sorted(CATALOGUE)
PAIRS = list(itertools.combinations_with_replacement(NAMES, 2))
FAIL_FAST = 1.5   # punch timeout where failure is expected
LAB_SERVER_IP = "198.51.100.10"     # the server host: serve and coturn (its relayed addresses)
#: labs at a time per `lab matrix` call: under xdist the workers already run chunks side by side
JOBS = int(os.environ.get("STUNTURN_MATRIX_JOBS") or (1 if os.environ.get("PYTEST_XDIST_WORKER")
                                                       else 2))


def theory(a: str, b: str) -> str | None:
    """None if the pair can be punched, else why not (``udp-blocked``: a site has no
    UDP, so the relay over TCP; ``relay-needed``: the NATs rule punching out)."""
    na, nb = CATALOGUE[a], CATALOGUE[b]
    if na.udp_blocked or nb.udp_blocked:     # no UDP mapping on that side to punch with
        return "udp-blocked"

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


def runner_reason(entry: dict) -> str | None:
    """The failure reason our peers should report for a pair, from the runner's UDP
    theory entry (``{"possible", "strategy", "explanation"}``); None: punchable."""
    if entry["possible"]:
        return None
    if entry["strategy"] == "blocked":        # with the relay reached over TCP instead
        return "udp-blocked" if entry.get("relay_over_tcp") else "blocked"
    return entry["strategy"]                  # relay-needed


def _chunks() -> dict[str, list[tuple[str, str]]]:
    """The catalogue's pairs by the runner's theory: each chunk shares its peers' timeouts."""
    by_reason: dict[str | None, list[tuple[str, str]]] = {}
    for a, b in PAIRS:
        by_reason.setdefault(runner_reason(make_pair(a, b).theory["udp"]), []).append((a, b))
    punchable = by_reason.pop(None)
    out = {f"punchable-{i + 1}": punchable[i::4] for i in range(4)}
    out["relay-needed"] = by_reason.pop("relay-needed")
    out["blocked"] = by_reason.pop("udp-blocked")
    assert not by_reason, by_reason
    return out


CHUNKS = _chunks()
#: (punch timeout, initiator's pairing wait, receiver's wait) per chunk: the relayed
#: chunks need no punch time (both sides go to the relay at the match)
TIMINGS = {"relay-needed": (FAIL_FAST, 15.0, 15.0), "blocked": (FAIL_FAST, 15.0, 15.0)}


def _brief(side: dict) -> dict:
    """What a failing pair's message needs of one peer's JSON line."""
    return {k: side.get(k) for k in ("ok", "reason", "strategy", "relayed", "relay_reason",
                                     "message", "connect_ms")}


def check_pair(a: str, b: str, res: dict) -> list[str]:
    """What is wrong with one pair's `lab matrix` result (empty: nothing)."""
    expect = theory(a, b)
    problems = []
    if runner_reason(res["theory"]["udp"]) != expect:
        problems.append(f"runner theory {res['theory']['udp']} != spec theory {expect}")
    logdir = Path(res["logdir"])
    ini, rec = (parse_peer_output((logdir / f"{r}.out").read_text(),
                                  (logdir / f"{r}.err").read_text()) for r in ("a", "b"))
    try:
        if expect is None:
            assert res["status"] == "passed" and res["outcome"] == "connected", \
                (res["outcome"], res.get("path_error"), _brief(ini), _brief(rec))
            assert ini["ok"] and rec["ok"], (ini, rec)
            assert ini["strategy"] == rec["strategy"]
            assert all(s["got"] and s["acked"] for s in (ini, rec)), (ini, rec)
            assert ini["peer"]["ip"] == ini["target"] or ini["strategy"] == "lan"
            assert res["expect_path"] == "direct" and not res["path_error"], res
            assert not ini["relayed"] and not rec["relayed"], (ini, rec)
            return problems
        if expect not in ("relay-needed", "udp-blocked"):
            raise AssertionError(f"unexpected theory {expect}")
        # relayed at once because the plan rules punching out (no direct attempt)
        assert res["status"] == "passed" and res["outcome"] == "connected", res["outcome"]
        assert res["expect_path"] == "relay" and not res["path_error"], res
        for side in (ini, rec):
            assert side["ok"] and side["strategy"] == "relay" and side["relayed"], side
            assert side["got"] and side["acked"], side
            assert side["relay"] == side["local"] and side["relay"]["ip"] == LAB_SERVER_IP
            why = side["relay_reason"]
            if expect == "relay-needed":
                assert why.startswith("relay-needed:") and "random port" in why, side
            else:
                # both name the side(s) without UDP; that side reached the relay over TCP
                assert why.startswith("udp-blocked:") and "over TCP" in why, side
                for role, name in (("initiator", a), ("receiver", b)):
                    assert (f"the {role}'s" in why) == CATALOGUE[name].udp_blocked, side
        if expect == "udp-blocked":
            for side, name in ((ini, a), (rec, b)):       # no UDP mapping where UDP is blocked
                assert (side["mapped"] is None) == CATALOGUE[name].udp_blocked, side
        assert ini["peer"] == rec["relay"] and rec["peer"] == ini["relay"], (ini, rec)
    except (AssertionError, KeyError) as exc:
        problems.append(f"{type(exc).__name__}: {exc}"[:1500])
    return problems


def _run_matrix(tmp_path, pairs, timings) -> tuple[list[dict], dict, object]:
    """One `lab matrix --relay` call over ``pairs``: its results, summary and process."""
    punch_timeout, ini_wait, rec_wait = timings
    plan = punch_matrix.plan(pairs, punch_timeout=punch_timeout, waits=(ini_wait, rec_wait),
                             jobs=JOBS)
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    proc = _cli(tmp_path, "matrix", "--plan", "plan.json", "--json", "--logdir", "logs",
                "--junit", "junit.xml", timeout=60 * len(pairs))
    results, summary = _json_lines(proc.stdout)
    assert [r["pair"] for r in results] == [f"{a}--{b}" for a, b in pairs], proc.stderr
    return results, summary, proc


@pytest.mark.parametrize("chunk", list(CHUNKS))
def test_udp_punch_matrix(tmp_path, chunk):
    pairs = CHUNKS[chunk]
    results, summary, proc = _run_matrix(tmp_path, pairs,
                                         TIMINGS.get(chunk, (6.0, 15.0, 15.0)))
    bad = {}
    for (a, b), res in zip(pairs, results):
        problems = check_pair(a, b, res)
        if problems:
            bad[res["pair"]] = problems
    assert not bad, "failing pairs:\n" + "\n".join(f"  {p}: {'; '.join(v)}"
                                                  for p, v in bad.items())
    assert proc.returncode == 0 and summary["ok"], (summary, proc.stderr[-2000:])


#: the catalogue's pairs put udp-blocked last (the receiver); these block the initiator
BLOCKED_INITIATORS = [("udp-blocked", "port-restricted"), ("udp-blocked", "symmetric-random")]


def test_udp_matrix_relays_a_blocked_initiator_over_tcp(tmp_path):
    """The initiator without UDP does not stop at stun-failed: it pairs with its relay
    reached over TCP, the receiver relays over UDP, both at the match."""
    results, summary, proc = _run_matrix(tmp_path, BLOCKED_INITIATORS, TIMINGS["blocked"])
    bad = {res["pair"]: problems for (a, b), res in zip(BLOCKED_INITIATORS, results)
           if (problems := check_pair(a, b, res))}
    assert not bad, bad
    assert proc.returncode == 0 and summary["ok"], (summary, proc.stderr[-2000:])


#: a gateway that maps ports turns relay-needed pairs into portmap ones (the relay stays unused)
PORTMAP_PAIRS = [("symmetric-random+portmap", "symmetric-random"),
                 ("symmetric-random", "port-restricted+upnp")]


def test_udp_matrix_takes_the_port_mapping_where_the_gateway_offers_one(tmp_path):
    results, summary, proc = _run_matrix(tmp_path, PORTMAP_PAIRS, (6.0, 15.0, 15.0))
    for res in results:
        assert res["status"] == "passed" and res["expect_path"] == "portmap", res
        assert {p["path"] for p in res["paths"].values()} == {"portmap"}, res["paths"]
        assert all(p["relay_reason"] is None for p in res["paths"].values()), res["paths"]
    assert proc.returncode == 0 and summary["ok"], (summary, proc.stderr[-2000:])


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
