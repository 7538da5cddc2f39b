"""Success rate of the unprivileged TCP punch (kernel ISNs) with the other core busy (needs root).

Each attempt: a fresh lab with two port-restricted masquerades, the real server,
both peers running ``stunturn-diag punch`` as nobody (no CAP_NET_ADMIN: kernel
ISNs, no listener filter) through a real signaling round, as
``netns_tests/test_punch_unprivileged_lab.py`` does. Meanwhile a CPU burner (one
busy-looping process, started and ended by this script, bounded in time) keeps a
core busy. Prints each attempt's outcome (a failure's one-line errors), then
successes/N. ``--icmp-every-prime`` makes the core router answer every priming SYN
with an ICMP Time Exceeded (``icmp_ratelimit`` 0; by default Linux answers a few,
then about one a second), so that every priming socket dies and is replaced.

    sudo python3 benchmarks/bench_punch_kernel_isn.py [--attempts 20] [--no-burn] [--icmp-every-prime] [--protocol tcp] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the test kit: not installed

#: the longest a burner runs (it is also ended at the end of the run)
BURN_LIMIT_S = 1800.0
_BURN = ("import time\nend = time.monotonic() + {limit}\n"
         "while time.monotonic() < end:\n    pass\n")


def start_burner(limit: float) -> subprocess.Popen:
    """One process spinning on a core for at most ``limit`` seconds."""
    return subprocess.Popen([sys.executable, "-c", _BURN.format(limit=limit)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--attempts", type=int, default=20)
    ap.add_argument("--protocol", choices=["tcp", "udp"], default="tcp")
    ap.add_argument("--no-burn", action="store_true", help="leave the other core idle")
    ap.add_argument("--icmp-every-prime", action="store_true",
                    help="core router: no ICMP rate limit (every prime dies at once)")
    ap.add_argument("--verbose", action="store_true", help="print a failure's full stderr")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_punch_kernel_isn needs root (it builds network namespaces); run it "
              "with sudo", file=sys.stderr)
        return 2
    from stunturn_testkit.unprivileged import punch_two_masquerades

    attempts = max(1, min(args.attempts, 200))
    burner = None if args.no_burn else start_burner(BURN_LIMIT_S)
    results = []
    try:
        for n in range(1, attempts + 1):
            t0 = time.monotonic()
            run = punch_two_masquerades(args.protocol,
                                        icmp_ratelimit_ms=0 if args.icmp_every_prime else None)
            took = time.monotonic() - t0
            if run.ok:
                line = next((x for x in run.i_err.splitlines() if "connected" in x
                             or "over " in x), "")
                print(f"{n:3} ok    {took:5.1f}s  {line.strip()}", flush=True)
            else:
                print(f"{n:3} FAIL  {took:5.1f}s  " + " | ".join(run.reasons()), flush=True)
                if args.verbose:
                    print("--- initiator\n" + run.i_err + "--- receiver\n" + run.r_err,
                          flush=True)
            results.append({"ok": run.ok, "s": round(took, 2), "reasons": run.reasons()})
    finally:
        if burner is not None:
            burner.kill()
            burner.wait()
    ok = sum(r["ok"] for r in results)
    load = os.getloadavg()[0]
    print(f"{args.protocol} unprivileged (kernel ISNs), other core "
          f"{'idle' if args.no_burn else 'busy'}"
          f"{', ICMP for every prime' if args.icmp_every_prime else ''}: {ok}/{len(results)} connected "
          f"(load average {load:.1f})")
    if args.json:
        print(json.dumps({"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                          "protocol": args.protocol, "burn": not args.no_burn,
                          "icmp_every_prime": args.icmp_every_prime,
                          "ok": ok, "attempts": len(results), "runs": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
