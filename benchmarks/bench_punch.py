"""Time-to-connect of UDP hole punching per NAT pair in the lab (needs root).

For each pair: a fresh lab, the real server, both peers through the library API
with their NAT profiles known. ``connect_ms`` is measured by each peer from the
moment the match released it to the authenticated channel. Prints one line per
pair (median over ``--repeat`` runs) and a JSON summary with ``--json``.

    sudo python3 benchmarks/bench_punch.py [--repeat 3] [--pairs all] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time

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
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pairs", choices=["default", "all"], default="default",
                    help="all = every feasible pair of the catalogue without loss")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_punch needs root (it builds network namespaces); run it with sudo",
              file=sys.stderr)
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
    rows = []
    print(f"{'initiator NAT':24} {'receiver NAT':24} {'strategy':13} "
          f"{'init ms':>8} {'recv ms':>8} {'ok':>5}")
    for a, b in pairs:
        ini_ms, rec_ms, oks, strategy = [], [], 0, "-"
        for _ in range(args.repeat):
            with Lab(LabSpec.simple(a, b)) as lab:
                res = run_pair(lab, "a1", "b1", punch_timeout=5.0)
            if res.ok:
                oks += 1
                ini_ms.append(res.initiator["connect_ms"])
                rec_ms.append(res.receiver["connect_ms"])
                strategy = res.initiator["strategy"]
        row = {"initiator": a, "receiver": b, "strategy": strategy, "runs": args.repeat,
               "ok": oks,
               "initiator_ms": statistics.median(ini_ms) if ini_ms else None,
               "receiver_ms": statistics.median(rec_ms) if rec_ms else None}
        rows.append(row)
        fmt = (lambda v: f"{v:8.1f}" if v is not None else f"{'-':>8}")
        print(f"{a:24} {b:24} {strategy:13} {fmt(row['initiator_ms'])} "
              f"{fmt(row['receiver_ms'])} {oks:>2}/{args.repeat}", flush=True)
    if args.json:
        print(json.dumps({"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                          "pairs": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
