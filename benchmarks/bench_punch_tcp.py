"""Time-to-connect of TCP hole punching per NAT pair in the lab (needs root).

For each pair: a fresh lab, the real STUN responder (TCP), both peers running
``stunturn_diag.punch.tcp_selftest`` (candidates swapped through a file). The
figure is each peer's time from the start of ``punch()`` to the nominated
connection (median over ``--repeat`` runs). ``--unprivileged`` drops CAP_NET_ADMIN
(kernel ISNs instead of pinned ones); ``--skew S`` starts the receiver S seconds late.

    sudo python3 benchmarks/bench_punch_tcp.py [--repeat 3] [--unprivileged] [--skew 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

PAIRS = [
    ("public", "port-restricted"),
    ("full-cone", "full-cone"),
    ("restricted-cone", "port-restricted"),
    ("port-restricted", "port-restricted"),
    ("port-restricted-drop", "port-restricted-drop"),
    ("restricted-cone-rst", "restricted-cone-rst"),
    ("eim-no-preservation", "port-restricted"),
    ("symmetric-random", "full-cone"),
    ("symmetric-sequential", "port-restricted"),
    ("symmetric-sequential", "symmetric-sequential"),
    ("lossy", "port-restricted"),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=8.0)
    ap.add_argument("--unprivileged", action="store_true")
    ap.add_argument("--skew", type=float, default=0.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_punch_tcp needs root (it builds network namespaces); run it with sudo",
              file=sys.stderr)
        return 2
    from stunturn_diag.lab import CATALOGUE, Lab, LabSpec
    from stunturn_diag.behaviour import Mapping, PortAllocation
    from stunturn_diag.punch.tcp_selftest import run_lab_pair

    def predict(peer: str) -> list[str]:
        n = CATALOGUE[peer]
        seq = n.mapping is Mapping.ADDRESS_AND_PORT_DEPENDENT and \
            n.port_allocation is PortAllocation.SEQUENTIAL
        return ["--predict", "8"] if seq else []

    rows = []
    print(f"{'initiator NAT':22} {'receiver NAT':22} {'init s':>7} {'recv s':>7} {'ok':>5}")
    for a, b in PAIRS:
        ti, tr, oks = [], [], 0
        for _ in range(args.repeat):
            with Lab(LabSpec.simple(a, b)) as lab:
                skew = ["--delay", str(args.skew)] if args.skew else []
                ra, rb = run_lab_pair(lab, "a1", "b1", timeout=args.timeout,
                                      extra_a=predict(b), extra_b=predict(a) + skew,
                                      unprivileged=args.unprivileged)
            if ra.get("ok") and rb.get("ok"):
                oks += 1
                ti.append(ra["connect_s"])
                tr.append(rb["connect_s"])
        row = {"initiator": a, "receiver": b, "runs": args.repeat, "ok": oks,
               "initiator_s": statistics.median(ti) if ti else None,
               "receiver_s": statistics.median(tr) if tr else None}
        rows.append(row)
        fmt = (lambda v: f"{v:7.3f}" if v is not None else "      -")
        print(f"{a:22} {b:22} {fmt(row['initiator_s'])} {fmt(row['receiver_s'])} "
              f"{oks:>2}/{args.repeat}", flush=True)
    if args.json:
        print(json.dumps({"unprivileged": args.unprivileged, "skew": args.skew, "pairs": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
