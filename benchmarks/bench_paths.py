"""Which path each NAT pair takes and how long it takes to connect: direct, portmap
(the gateway's PCP mapping, the lab's miniupnpd) or relay (coturn on the server host,
offered by `serve --turn-server`). Needs root.

For each pair: a fresh lab with coturn, the real server, both peers through the library
API with their NAT profiles known. ``connect_ms`` is each peer's time from the match to
the authenticated channel (for ``relay``: allocation, relayed-address exchange,
ChannelBind and the handshake through the relay; over TCP: the RFC 6062 allocation,
the exchange, Connect/ConnectionAttempt + ConnectionBind and the handshake). Target:
relay <= 100 ms in the lab. UDP pairs first, then TCP ones (``protocol`` in --json).

    sudo python3 benchmarks/bench_paths.py [--repeat 3] [--json]
"""

from __future__ import annotations

import sys

from _punch_bench import emit_json, measure, parse_args

#: a pair the direct attempt cannot know is hopeless (both profiles claim full cone):
#: the fallback after the attempt's deadline (punch_timeout below)
FALLBACK = ("symmetric-random", "symmetric-random")
FALLBACK_PUNCH_TIMEOUT = 1.0
#: TCP: a pair punched directly and one only the relay (RFC 6062 TCP allocations) joins
TCP_PAIRS = [("port-restricted", "full-cone"), ("symmetric-random", "port-restricted")]


def main() -> int:
    args = parse_args(__doc__, "bench_paths", lambda ap: ap.add_argument(
        "--fallback", action="store_true",
        help=f"also the fallback after a failed direct attempt ({FALLBACK_PUNCH_TIMEOUT:g} s)"))
    if args is None:
        return 2
    from stunturn_diag.lab.pair_runner import PATH_PAIRS, run_pair_with_relay

    pairs = [(a, b) for _path, a, b in PATH_PAIRS] + [("symmetric-random", "port-restricted")]

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
              f"{FALLBACK_PUNCH_TIMEOUT:g} s, the profiles claim full cone):")
        import json
        from stunturn_diag.lab import Lab, LabSpec
        from stunturn_diag.lab import pair_runner

        lie = json.dumps({"udp": {"mapping": "endpoint-independent",
                                  "filtering": "endpoint-independent"}})

        def run_fallback(a: str, b: str):
            with Lab(LabSpec.simple(a, b)) as lab:
                turn = pair_runner.start_turn(lab)
                try:
                    res = pair_runner.run_pair(lab, "a1", "b1", turn=turn, profile_json=lie,
                                          punch_timeout=FALLBACK_PUNCH_TIMEOUT)
                finally:
                    turn.stop()
            return (res.ok, res.initiator.get("connect_ms"), res.receiver.get("connect_ms"),
                    res.initiator.get("strategy", "-"))

        rows += [dict(r, protocol="udp")
                 for r in measure([FALLBACK], args.repeat, run_fallback, unit="ms")]
    if args.json:
        emit_json(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
