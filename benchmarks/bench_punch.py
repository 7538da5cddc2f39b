"""Time-to-connect of UDP hole punching per NAT pair in the lab (needs root).

For each pair: a fresh lab, the real server, both peers through the library API
with their NAT profiles known. ``connect_ms`` is measured by each peer from the
moment the match released it to the authenticated channel. Prints one line per
pair (median over ``--repeat`` runs) and a JSON summary with ``--json``.

    sudo python3 benchmarks/bench_punch.py [--repeat 3] [--pairs all] [--json]
"""

from __future__ import annotations

import itertools
import sys

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
]


def main() -> int:
    args = parse_args(__doc__, "bench_punch", lambda ap: ap.add_argument(
        "--pairs", choices=["default", "all"], default="default",
        help="all = every feasible pair of the catalogue without loss"))
    if args is None:
        return 2
    from stunturn_diag.lab import CATALOGUE, Lab, LabSpec
    from stunturn_diag.punch.decision import decide, profile_from_details
    from stunturn_diag.punch.labkit import run_pair

    if args.pairs == "all":
        names = [n for n, spec in CATALOGUE.items() if not spec.udp_blocked and not spec.loss_percent]
        pairs = [(a, b) for a, b in itertools.combinations_with_replacement(sorted(names), 2)
                 if decide(profile_from_details(CATALOGUE[a].expected, "udp"),
                           profile_from_details(CATALOGUE[b].expected, "udp")).feasible]
    else:
        pairs = DEFAULT_PAIRS

    def run_once(a: str, b: str):
        with Lab(LabSpec.simple(a, b)) as lab:
            res = run_pair(lab, "a1", "b1", punch_timeout=5.0)
        return (res.ok, res.initiator.get("connect_ms"), res.receiver.get("connect_ms"),
                res.initiator.get("strategy", "-"))

    rows = measure(pairs, args.repeat, run_once, unit="ms")
    if args.json:
        emit_json(rows)
    return 0

if __name__ == "__main__":
    sys.exit(main())
