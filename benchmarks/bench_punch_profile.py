#!/usr/bin/env python3
"""What punch's probe costs: the punch profile against the full tests, per lab NAT type (root).

For each NAT type (``--nats``) one lab, our server, and on the LAN host ``--repeat`` times
each: ``run_probe(url, punch_profile=True)`` (what ``punch`` runs) and the full tests
without the TTL walk (what it ran before), each for UDP only (a UDP initiator) and for
UDP + TCP (a receiver, a TCP initiator). Printed: the median and max of the probe's own
``elapsed_ms`` (endpoints from /v1/info included), the datagrams the UDP phase sent,
and the ground-truth fields the punch decision reads (mapping, filtering, port
allocation, reachable) that came out wrong (none expected).

    sudo python3 benchmarks/bench_punch_profile.py [--repeat 5] [--nats port-restricted,...]
"""

from __future__ import annotations

import json
import statistics
import sys

from _punch_bench import emit_json, parse_args

#: in a lab host: one probe, its elapsed time, packets and the decision's fields
PROBE = r"""
import json, sys
from stunturn_diag.probe import run_probe
url, mode, tcp = sys.argv[1], sys.argv[2], sys.argv[3] == "tcp"
kw = {"punch_profile": True} if mode == "punch" else {"ttl_walk": False}
r = run_probe(url, tcp=tcp, **kw)
j = r.to_json()
print(json.dumps({"elapsed_ms": r.elapsed_ms, "sent": j["timings"]["packets"]["sent"],
                  **{p: {k: j[p].get(k) for k in ("reachable", "mapping", "filtering",
                                                  "port_allocation")} for p in ("udp", "tcp")}}))
"""
FIELDS = ("reachable", "mapping", "filtering", "port_allocation")


def main() -> int:
    args = parse_args(__doc__, "bench_punch_profile", lambda ap: ap.add_argument(
        "--nats", default="port-restricted,symmetric-sequential,port-restricted-drop,udp-blocked"))
    if args is None:
        return 2
    from stunturn_diag.lab import CATALOGUE, Lab, LabSpec, SiteSpec
    from stunturn_diag.lab.pair_runner import HTTP_PORT, serve_in_lab

    rows = []
    for nat in args.nats.split(","):
        with Lab(LabSpec(sites={"a": SiteSpec(nat=CATALOGUE[nat])})) as lab:
            serve_in_lab(lab)
            url = f"http://{lab.server_ip}:{HTTP_PORT}"
            truth = lab.expected("a")
            for protos in ("udp", "tcp"):
                for mode in ("full", "punch"):
                    times, sent, wrong = [], [], set()
                    for _ in range(args.repeat):
                        r = lab.exec("a1", [sys.executable, "-c", PROBE, url, mode, protos],
                                     timeout=60)
                        got = json.loads(r.stdout.strip().splitlines()[-1])
                        times.append(got["elapsed_ms"])
                        sent.append(got["sent"])
                        for p in ("udp", "tcp") if protos == "tcp" else ("udp",):
                            wrong |= {f"{p}.{k}={got[p][k]}" for k in FIELDS
                                      if got[p][k] != truth[p][k]}
                    row = {"nat": nat, "protocols": "udp+tcp" if protos == "tcp" else "udp",
                           "mode": mode, "median_ms": round(statistics.median(times), 1),
                           "max_ms": round(max(times), 1), "udp_sent": statistics.median(sent),
                           "wrong": sorted(wrong)}
                    rows.append(row)
                    print(f"{nat:22s} {row['protocols']:8s} {mode:6s} median {row['median_ms']:6.1f} ms"
                          f"  max {row['max_ms']:6.1f} ms  UDP datagrams {row['udp_sent']:4g}"
                          f"  wrong: {', '.join(row['wrong']) or 'none'}", flush=True)
    if args.json:
        emit_json(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
