"""Time-to-connect of TCP hole punching per NAT pair in the lab (needs root).

For each pair: a fresh lab, the real STUN responder (TCP), both peers running
``stunturn_testkit.tcp_selftest`` (candidates swapped through a file). The
figure is each peer's time from the start of ``punch()`` to the nominated
connection (median over ``--repeat`` runs). ``--unprivileged`` drops CAP_NET_ADMIN
(kernel ISNs instead of pinned ones); ``--skew S`` starts the receiver S seconds late.

    sudo python3 benchmarks/bench_punch_tcp.py [--repeat 3] [--unprivileged] [--skew 1] [--json]
"""

from __future__ import annotations

import sys
from pathlib import Path

from _punch_bench import emit_json, measure, parse_args

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the test kit: not installed

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


def _options(ap) -> None:
    ap.add_argument("--timeout", type=float, default=8.0)
    ap.add_argument("--unprivileged", action="store_true")
    ap.add_argument("--skew", type=float, default=0.0)


def main() -> int:
    args = parse_args(__doc__, "bench_punch_tcp", _options)
    if args is None:
        return 2
    from stunturn_diag.lab import CATALOGUE, Lab, LabSpec
    from stunturn_diag.behaviour import Mapping, PortAllocation
    from stunturn_testkit.tcp_selftest import run_lab_pair

    def predict(peer: str) -> list[str]:
        n = CATALOGUE[peer]
        seq = n.mapping is Mapping.ADDRESS_AND_PORT_DEPENDENT and \
            n.port_allocation is PortAllocation.SEQUENTIAL
        return ["--predict", "8"] if seq else []

    def run_once(a: str, b: str):
        with Lab(LabSpec.simple(a, b)) as lab:
            skew = ["--delay", str(args.skew)] if args.skew else []
            ra, rb = run_lab_pair(lab, "a1", "b1", timeout=args.timeout,
                                  extra_a=predict(b), extra_b=predict(a) + skew,
                                  unprivileged=args.unprivileged)
        ok = bool(ra.get("ok") and rb.get("ok"))
        return ok, ra.get("connect_s"), rb.get("connect_s"), "simultaneous-open" if ok else "-"

    rows = measure(PAIRS, args.repeat, run_once, unit="s")
    if args.json:
        emit_json(rows, unprivileged=args.unprivileged, skew=args.skew)
    return 0

if __name__ == "__main__":
    sys.exit(main())
