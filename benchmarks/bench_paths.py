"""Which path each NAT pair takes and how long it takes to connect: direct, portmap
(the gateway's PCP mapping, the lab's miniupnpd) or relay (coturn on the server host,
offered by `serve --turn-server`). Needs root.

For each pair: a fresh lab with coturn, the real server, both peers through the library
API with their NAT profiles known. ``connect_ms`` is each peer's time from the match to
the authenticated channel (for ``relay``: allocation, relayed-address exchange,
ChannelBind and the handshake through the relay; over TCP: the RFC 6062 allocation,
the exchange, Connect/ConnectionAttempt + ConnectionBind and the handshake). Target:
relay <= 100 ms in the lab. UDP pairs first (the last two with a ``udp-blocked`` side,
relayed through a UDP allocation it reaches over TCP), then TCP ones (``protocol`` in
--json).

With ``--matrix`` it instead runs the whole catalogue (105 pairs per protocol; ``--proto``
picks one) through ``lab matrix --relay`` (our punch as the matrix program:
``stunturn_testkit.punch_matrix``) and prints per pair the path taken (direct / portmap /
relay / none), whether it was the theory's, each peer's ``connect_ms`` and, for relayed
pairs, why direct was not possible; then per protocol and path the median and largest
``connect_ms``.

    sudo python3 benchmarks/bench_paths.py [--repeat 3] [--json]
    sudo python3 benchmarks/bench_paths.py --matrix [--proto udp|tcp] [--jobs 2] [--json]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the test kit: not installed

from _punch_bench import emit_json, measure, parse_args

#: a pair the direct attempt cannot know is hopeless (both profiles claim full cone):
#: the fallback after the attempt's deadline (punch_timeout below)
FALLBACK = ("symmetric-random", "symmetric-random")
FALLBACK_PUNCH_TIMEOUT = 1.0
#: TCP: a pair punched directly and one only the relay (RFC 6062 TCP allocations) joins
TCP_PAIRS = [("port-restricted", "full-cone"), ("symmetric-random", "port-restricted")]
#: UDP blocked on one side: its UDP relayed address through TURN over TCP (RFC 8656 3.1)
BLOCKED_PAIRS = [("udp-blocked", "port-restricted"), ("port-restricted", "udp-blocked")]


def _options(ap) -> None:
    ap.add_argument("--fallback", action="store_true",
                    help=f"also the fallback after a failed direct attempt "
                         f"({FALLBACK_PUNCH_TIMEOUT:g} s)")
    ap.add_argument("--matrix", action="store_true",
                    help="the whole catalogue through `lab matrix --relay` instead")
    ap.add_argument("--proto", choices=["udp", "tcp"], default=None,
                    help="--matrix: only this protocol")
    ap.add_argument("--jobs", type=int, default=2, help="--matrix: labs at a time")


def _ms(values: list[float]) -> str:
    return f"median {statistics.median(values):.1f} ms, max {max(values):.1f} ms" \
        if values else "-"


def run_catalogue(protocols: list[str], jobs: int, as_json: bool) -> int:
    """Every catalogue pair per protocol through `lab matrix --relay`: path and time."""
    import itertools
    import shutil
    import tempfile

    from stunturn_diag.lab import CATALOGUE
    from stunturn_diag.lab.ci import plan as plan_mod
    from stunturn_diag.lab.ci.runner import run_matrix
    from stunturn_testkit import punch_matrix

    pairs = list(itertools.combinations_with_replacement(sorted(CATALOGUE), 2))
    rows, failed = [], 0
    for protocol in protocols:
        matrix = plan_mod.plan_from(punch_matrix.plan(
            pairs, protocol=protocol, punch_timeout=8.0 if protocol == "tcp" else 6.0,
            jobs=jobs))
        logdir = tempfile.mkdtemp(prefix=f"bench-paths-{protocol}-")
        started = time.monotonic()
        outcome = run_matrix(matrix, logdir=logdir)
        took = time.monotonic() - started
        print(f"{protocol.upper()}: {len(pairs)} pairs in {took:.0f} s")
        if outcome["summary"]["ok"]:
            shutil.rmtree(logdir, ignore_errors=True)
        else:
            print(f"  (logs of this run kept in {logdir})")
        by_path: dict[str, list[float]] = {}
        for res in outcome["results"]:
            sides = [res["paths"].get(r) or {} for r in ("a", "b")]
            path = sides[0].get("path") or "none"
            ms = [s.get("connect_ms") for s in sides]
            why = next((s["relay_reason"] for s in sides if s.get("relay_reason")), "")
            mark = "ok" if res["status"] in ("passed", "skipped") else "FAILED"
            failed += mark != "ok"
            print(f"  {res['pair']:<48} {path:<7} (expected {res['expect_path'] or 'none'}) "
                  f"{mark:<6} " + " / ".join(f"{m:.1f}" if m is not None else "-" for m in ms)
                  + " ms" + (f"  [{why[:70]}]" if why else ""))
            if all(m is not None for m in ms):
                by_path.setdefault(path, []).extend(ms)
            rows.append({"protocol": protocol, "pair": res["pair"], "path": path,
                         "expect_path": res["expect_path"], "status": res["status"],
                         "connect_ms": ms, "relay_reason": why or None})
        for path, values in sorted(by_path.items()):
            print(f"  {protocol.upper()} {path}: {len(values) // 2} pairs, connect_ms {_ms(values)}")
    if as_json:
        emit_json(rows)
    return 1 if failed else 0


def main() -> int:
    args = parse_args(__doc__, "bench_paths", _options)
    if args is None:
        return 2
    if args.matrix:
        return run_catalogue([args.proto] if args.proto else ["udp", "tcp"], args.jobs,
                             args.json)
    from stunturn_diag.lab.pair_runner import PATH_PAIRS, run_pair_with_relay

    pairs = [(a, b) for _path, a, b in PATH_PAIRS] + [("symmetric-random", "port-restricted")]
    pairs += BLOCKED_PAIRS

    def run_once(a: str, b: str, protocol: str = "udp"):
        res = run_pair_with_relay(a, b, punch_timeout=5.0, protocol=protocol)
        ok = res.ok and res.data_both_ways
        return (ok, res.initiator.get("connect_ms"), res.receiver.get("connect_ms"),
                res.initiator.get("strategy", "-"))

    rows = [dict(r, protocol="udp") for r in measure(pairs, args.repeat, run_once, unit="ms")]
    print("TCP:")
    rows += [dict(r, protocol="tcp") for r in measure(
        TCP_PAIRS, args.repeat, lambda a, b: run_once(a, b, "tcp"), unit="ms")]
    if args.fallback:
        print(f"fallback after a failed direct attempt (punch timeout "
              f"{FALLBACK_PUNCH_TIMEOUT:g} s, the profiles lie):")
        import json
        from stunturn_diag.lab import Lab, LabSpec
        from stunturn_diag.lab import pair_runner

        lies = {"simultaneous": json.dumps({"udp": {"mapping": "endpoint-independent",
                                                    "filtering": "endpoint-independent"}}),
                # a predict plan allocates on the relay only after its attempt failed
                # (the allocation would take a port of the counted sequence)
                "predict": json.dumps({"udp": {"mapping": "address-and-port-dependent",
                                               "filtering": "address-and-port-dependent",
                                               "port_allocation": "sequential"}})}

        def run_fallback(a: str, b: str, lie: str):
            with Lab(LabSpec.simple(a, b)) as lab:
                turn = pair_runner.start_turn(lab)
                try:
                    res = pair_runner.run_pair(lab, "a1", "b1", turn=turn, profile_json=lie,
                                          punch_timeout=FALLBACK_PUNCH_TIMEOUT)
                finally:
                    turn.stop()
            return (res.ok, res.initiator.get("connect_ms"), res.receiver.get("connect_ms"),
                    res.initiator.get("strategy", "-"))

        for planned, lie in lies.items():
            print(f"  the plan: {planned}")
            rows += [dict(r, protocol="udp", planned=planned) for r in measure(
                [FALLBACK], args.repeat, lambda a, b: run_fallback(a, b, lie), unit="ms")]
    if args.json:
        emit_json(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
