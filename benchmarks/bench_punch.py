"""Time-to-connect of UDP and TCP hole punching per NAT pair in the lab (needs root).

For each pair: a fresh lab, the real server, both peers through the library API
with their NAT profiles known (a real signaling round). ``connect_ms`` is measured
by each peer from the moment the match released it to the authenticated channel.
Prints one line per pair and protocol (median over ``--repeat`` runs) and a JSON
summary with ``--json``. A NAT name ending in ``+bgN`` is that NAT with a second
LAN host opening N new flows per second (``SiteSpec.background_flows_per_s``):
``symmetric-sequential+bg100`` is a sequential NAT whose one port counter moves on
at 100 ports/s besides the punch.

    sudo python3 benchmarks/bench_punch.py [--repeat 3] [--pairs all] [--protocol both] [--json]

``--from-matrix LOGDIR`` runs nothing: it reads a ``lab matrix`` run whose peers were
``python -m stunturn_diag.punch.labpeer`` (as the suite's punch matrix,
``netns_tests/test_punch_udp_matrix.py``): ``LOGDIR/results.jsonl`` and each pair's
``a.out``/``b.out``, one run per connected pair.

    python3 benchmarks/bench_punch.py --from-matrix stunturn-lab-logs [--json]
"""

from __future__ import annotations

import itertools
import json
import statistics
import sys
from pathlib import Path

from _punch_bench import emit_json, measure, parse_args

DEFAULT_PAIRS = [
    ("public", "full-cone"),
    ("full-cone", "full-cone"),
    ("restricted-cone", "port-restricted"),
    ("port-restricted", "port-restricted"),
    ("port-restricted-drop", "port-restricted"),
    ("symmetric-sequential", "port-restricted"),
    ("symmetric-sequential", "symmetric-sequential"),
    ("symmetric-random", "full-cone"),
    ("symmetric-random", "restricted-cone"),
    ("eim-no-preservation", "symmetric-sequential"),
    ("symmetric-sequential+bg20", "port-restricted"),
    ("symmetric-sequential+bg100", "port-restricted"),
    ("symmetric-sequential+bg100", "symmetric-sequential+bg100"),
]


def site(name: str):
    """A SiteSpec for ``NAME`` or ``NAME+bgRATE`` (background flows from a second host)."""
    from stunturn_diag.lab import CATALOGUE, SiteSpec
    base, _, bg = name.partition("+bg")
    if bg:
        return SiteSpec(nat=CATALOGUE[base], hosts=2, background_flows_per_s=float(bg))
    return SiteSpec(nat=CATALOGUE[base])


def from_matrix(logdir: Path, as_json: bool) -> int:
    """The figures of a `lab matrix` run (labpeer peers): one row per connected pair."""
    from stunturn_diag.lab.pair_runner import parse_peer_output

    lines = [json.loads(x) for x in (logdir / "results.jsonl").read_text().splitlines() if x]
    results = {(r["type_a"], r["type_b"]): r for r in lines if "pair" in r
               and r["outcome"] == "connected"}
    if not results:
        print(f"no connected pair in {logdir / 'results.jsonl'}", file=sys.stderr)
        return 1

    def run_once(a: str, b: str):
        r = results[(a, b)]
        ini, rec = (parse_peer_output(Path(r["commands"][role]["stdout"]).read_text(), "")
                    for role in ("a", "b"))
        ok = bool(ini.get("ok") and rec.get("ok"))
        return ok, ini.get("connect_ms"), rec.get("connect_ms"), ini.get("strategy", "-")

    protocol = next(iter(results.values()))["protocol"]
    print(f"protocol {protocol} (from {logdir}): ms from the match to the authenticated channel")
    rows = measure(list(results), 1, run_once, unit="ms")
    for row in rows:
        row["protocol"] = protocol
    if as_json:
        emit_json(rows)
    return 0


def main() -> int:
    def options(ap) -> None:
        ap.add_argument("--pairs", choices=["default", "all"], default="default",
                        help="all = every feasible pair of the catalogue without loss")
        ap.add_argument("--protocol", choices=["udp", "tcp", "both"], default="both")
        ap.add_argument("--from-matrix", metavar="LOGDIR",
                        help="read a `lab matrix` run of labpeer peers instead of running")

    args = parse_args(__doc__, "bench_punch", options, root_unless="from_matrix")
    if args is None:
        return 2
    if args.from_matrix:
        return from_matrix(Path(args.from_matrix), args.json)
    from stunturn_diag.lab import CATALOGUE, Lab, LabSpec
    from stunturn_diag.lab.pair_runner import run_pair
    from stunturn_diag.sansio.punch.decision import decide, profile_from_details

    if args.pairs == "all":
        names = [n for n, spec in CATALOGUE.items() if not spec.udp_blocked and not spec.loss_percent]
        pairs = [(a, b) for a, b in itertools.combinations_with_replacement(sorted(names), 2)
                 if decide(profile_from_details(CATALOGUE[a].expected, "udp"),
                           profile_from_details(CATALOGUE[b].expected, "udp")).feasible]
    else:
        pairs = DEFAULT_PAIRS

    all_rows = []
    for protocol in (["udp", "tcp"] if args.protocol == "both" else [args.protocol]):
        def run_once(a: str, b: str, protocol=protocol):
            with Lab(LabSpec(sites={"a": site(a), "b": site(b)})) as lab:
                res = run_pair(lab, "a1", "b1", punch_timeout=5.0, protocol=protocol)
            return (res.ok, res.initiator.get("connect_ms"), res.receiver.get("connect_ms"),
                    res.initiator.get("strategy", "-"))

        print(f"protocol {protocol}: ms from the match to the authenticated channel")
        rows = measure(pairs, args.repeat, run_once, unit="ms")
        for row in rows:
            row["protocol"] = protocol
        all_rows += rows
        medians = [v for r in rows for v in (r["initiator_ms"], r["receiver_ms"]) if v]
        if medians:
            print(f"protocol {protocol}: median over all pairs "
                  f"{statistics.median(medians):.1f} ms")
    if args.json:
        emit_json(all_rows)
    return 0

if __name__ == "__main__":
    sys.exit(main())
