"""TCP punch matrix with the relay offered: the real punch (signaling, STUN over TCP,
simultaneous open, RFC 6062 relay), through ``stunturn-diag lab matrix --relay --proto tcp``.

Unlike :mod:`test_punch_tcp_matrix` (the test kit's selftest: file-swapped candidates,
no server, no relay) each pair here runs ``serve`` with coturn's TCP allocations on the
server host and two :mod:`stunturn_diag.punch.labpeer` peers. Every pair must connect,
over the path the runner's theory names (``direct`` where a TCP punch is planned,
``relay`` where it is ``relay-needed``), both peers on the same path, bytes both ways;
relayed peers name the plan's reason.

All 105 catalogue pairs run, in chunks (one ``lab matrix`` call each, parallel under
xdist; :data:`CHUNKS`): the relay-needed pairs, and the direct ones in four slices.
``STUNTURN_TCP_RELAY_MATRIX=subset`` runs only :data:`SUBSET` (one chunk: every TCP plan
class of the catalogue with different filters, plus a site without UDP), for a quick
check while developing.
"""

from __future__ import annotations

import itertools
import json
import os
import warnings

import pytest

from stunturn_diag.lab import CATALOGUE
from stunturn_diag.lab.ci.plan import make_pair
from stunturn_testkit import punch_matrix

from test_lab_ci_run import _cli, _json_lines

pytestmark = pytest.mark.netns

ALL = list(itertools.combinations_with_replacement(sorted(CATALOGUE), 2))
#: labs at a time per `lab matrix` call, under xdist too: a pair's time is mostly process
#: starts and waits, not CPU (105 pairs: ~130 s of CPU in 220 s at two at a time)
JOBS = int(os.environ.get("STUNTURN_MATRIX_JOBS") or 2)


def _strategy(a: str, b: str) -> str:
    return make_pair(a, b).theory["tcp"]["strategy"]


#: the CI subset: each TCP plan class of the catalogue with different filters (RST,
#: silent drop, ICMP), mappings and a site without UDP
SUBSET = [("full-cone", "symmetric-random"), ("port-restricted-drop", "restricted-cone-rst"),
          ("port-restricted-icmp", "restricted-cone"), ("port-restricted", "udp-blocked"),
          ("port-restricted", "symmetric-sequential"),
          ("symmetric-sequential", "symmetric-sequential"),
          ("symmetric-random", "symmetric-random"), ("port-restricted", "symmetric-random"),
          ("port-restricted-drop", "symmetric-random")]
assert {_strategy(a, b) for a, b in SUBSET} == {_strategy(a, b) for a, b in ALL}
assert set(SUBSET) <= set(ALL)


def _chunks() -> dict[str, list[tuple[str, str]]]:
    """The pairs by plan class: the relay-needed ones (relayed at the match), the direct
    ones (simultaneous open, predicted ports) in four slices."""
    if os.environ.get("STUNTURN_TCP_RELAY_MATRIX") == "subset":
        return {"subset": SUBSET}
    direct = [(a, b) for a, b in ALL if _strategy(a, b) != "relay-needed"]
    out = {f"direct-{i + 1}": direct[i::4] for i in range(4)}
    out["relay-needed"] = [(a, b) for a, b in ALL if _strategy(a, b) == "relay-needed"]
    return out


CHUNKS = _chunks()
assert sorted(p for pairs in CHUNKS.values() for p in pairs) == sorted(
    SUBSET if "subset" in CHUNKS else ALL)


def _run(tmp_path, pairs: list[tuple[str, str]]) -> tuple[list[dict], dict, object]:
    plan = punch_matrix.plan(pairs, protocol="tcp", punch_timeout=8.0, jobs=JOBS)
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    proc = _cli(tmp_path, "matrix", "--plan", "plan.json", "--json", "--logdir", "logs",
                timeout=60 * len(pairs))
    results, summary = _json_lines(proc.stdout)
    assert [r["pair"] for r in results] == [f"{a}--{b}" for a, b in pairs], proc.stderr
    return results, summary, proc


def _problems(a: str, b: str, res: dict) -> list[str]:
    want = "relay" if _strategy(a, b) == "relay-needed" else "direct"
    paths = res["paths"]
    problems = []
    if res["status"] != "passed" or res["expect_path"] != want:
        problems.append(f"{res['status']} ({res['outcome']}), expected {want}: "
                        f"{res['path_error']}")
    if {p and p["path"] for p in paths.values()} != {want}:
        problems.append(f"paths {paths}")
    if want == "relay" and not all(p and (p["relay_reason"] or "").startswith(
            "relay-needed:") for p in paths.values()):
        problems.append(f"relay reasons {paths}")
    return problems


def _rescued(res: dict) -> bool:
    """Both peers connected through the relay after their direct attempt failed."""
    return res["outcome"] == "connected" and all(
        p and p["path"] == "relay" and (p["relay_reason"] or "").startswith(
            "the direct attempt failed") for p in res["paths"].values())


@pytest.mark.parametrize("chunk", list(CHUNKS))
def test_tcp_punch_matrix_with_the_relay_offered(tmp_path, chunk):
    """Each pair on its expected path. A direct pair whose TCP punch failed and was
    rescued by the relay runs once more in a fresh lab (at most once, named in a
    warning) and must then be direct; any other problem fails at once."""
    pairs = CHUNKS[chunk]
    results, summary, proc = _run(tmp_path / "first", pairs)
    bad = {res["pair"]: (a, b, _problems(a, b, res)) for (a, b), res in zip(pairs, results)}
    again = [(a, b) for (a, b), res in zip(pairs, results)
             if bad[res["pair"]][2] and _rescued(res)]
    if again:
        first = {res["pair"]: res for res in results}
        for (a, b), res in zip(again, _run(tmp_path / "again", again)[0]):
            warnings.warn(f"{res['pair']}: re-run once after its direct TCP punch failed and "
                          f"the relay rescued it ({first[res['pair']]['paths']}); "
                          f"re-run: {res['status']}, paths {res['paths']}")
            bad[res["pair"]] = (a, b, _problems(a, b, res))
    bad = {pid: problems for pid, (_a, _b, problems) in bad.items() if problems}
    assert not bad, "failing pairs:\n" + "\n".join(f"  {p}: {'; '.join(v)}"
                                                  for p, v in bad.items())
    assert again or (proc.returncode == 0 and summary["ok"]), (summary, proc.stderr[-2000:])
