"""Shared driver of the punch benchmarks (bench_punch.py, bench_punch_tcp.py).

Arguments and the root check, then per NAT pair: ``--repeat`` runs, each in a fresh
lab, the median of each peer's figure, one printed line per pair and an optional
JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Callable

#: run_once(initiator_nat, receiver_nat) -> (ok, initiator figure, receiver figure, strategy)
RunOnce = Callable[[str, str], tuple[bool, float | None, float | None, str]]


def parse_args(doc: str, name: str,
               add_options: Callable[[argparse.ArgumentParser], None] | None = None,
               root_unless: str | None = None) -> argparse.Namespace | None:
    """Common options (``--repeat``, ``--json``) plus the script's own; None without root
    (unless option ``root_unless`` is given: it reads results, it builds no lab)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    if add_options:
        add_options(ap)
    args = ap.parse_args()
    if os.geteuid() != 0 and not (root_unless and getattr(args, root_unless)):
        print(f"{name} needs root (it builds network namespaces); run it with sudo",
              file=sys.stderr)
        return None
    return args


def measure(pairs: list[tuple[str, str]], repeat: int, run_once: RunOnce, *,
            unit: str = "ms") -> list[dict]:
    """Run every pair ``repeat`` times; print and return one row per pair (medians)."""
    width = 8
    fmt = (lambda v: f"{v:{width}.{1 if unit == 'ms' else 3}f}" if v is not None
           else f"{'-':>{width}}")
    print(f"{'initiator NAT':24} {'receiver NAT':24} {'strategy':17} "
          f"{'init ' + unit:>{width}} {'recv ' + unit:>{width}} {'ok':>5}")
    rows = []
    for a, b in pairs:
        ini, rec, oks, strategy = [], [], 0, "-"
        for _ in range(repeat):
            ok, ti, tr, used = run_once(a, b)
            if ok:
                oks += 1
                ini.append(ti)
                rec.append(tr)
                strategy = used
        row = {"initiator": a, "receiver": b, "strategy": strategy, "runs": repeat, "ok": oks,
               f"initiator_{unit}": statistics.median(ini) if ini else None,
               f"receiver_{unit}": statistics.median(rec) if rec else None}
        rows.append(row)
        print(f"{a:24} {b:24} {strategy:17} {fmt(row[f'initiator_{unit}'])} "
              f"{fmt(row[f'receiver_{unit}'])} {oks:>2}/{repeat}", flush=True)
    return rows


def emit_json(rows: list[dict], **extra) -> None:
    print(json.dumps({"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra,
                      "pairs": rows}))
