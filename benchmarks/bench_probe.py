#!/usr/bin/env python3
"""Benchmark `stunturn-diag probe`: time of a full diagnosis per NAT type of the lab.

For every catalogue NAT (or ``--nat NAME``, repeatable) a lab is built (root), our
server runs in its server namespace with both IPs, and the probe CLI runs ``--runs``
times on the LAN host. Printed per type: the probe's own ``elapsed_ms`` (median and
max: UDP + TCP + TTL walk, after endpoint discovery), the CLI wall time (adds Python
start-up and imports), and whether the verdicts equal the ground truth; next to it the
Vovida ``stun`` client's wall time (Debian stun-client, RFC 3489 tests I-III, UDP only)
run in the same lab against the same server (our STUN responder on the primary and
alternate addresses: ``stun SERVER_IP -v``), its verdict line, and the ratio
ours / theirs (target <= 0.5, ours doing UDP and TCP).

For comparison (``--compare``): coturn's ``turnutils_natdiscovery -m -f -H`` against
coturn in the same lab, and ``pystun3`` (RFC 3489) against our server. Figures
usually quoted for those tools: natdiscovery ~12 s, pystun3 8-16 s.

Bounded: every command has a timeout; labs are always torn down.

    sudo python3 benchmarks/bench_probe.py --runs 3 --compare

Dual stack (``--dual-stack``, issue 14): per lab NAT type with an IPv6 behaviour (default:
``port-restricted+v6=apdf`` with and without ``+v6-syn=rst``, ``symmetric-random+v6=apdf``;
``--v6-nat TOKEN`` repeatable),
the server serves both families and the probe CLI runs alternately with ``--no-ipv6``
(IPv4 only) and without it (IPv4 and IPv6 at once); printed: the median CLI wall times,
their ratio (target <= 1.2) and whether both families' verdicts equal the ground truth.

    sudo python3 benchmarks/bench_probe.py --dual-stack --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time

from stunturn_diag.lab import CATALOGUE, Lab, LabSpec, SiteSpec
from stunturn_diag.lab.pair_runner import ServeFailed, serve_in_lab, stun_answers

PORT = 8080


def _serve(lab: Lab, dual: bool = False) -> str:
    v6 = ["--ip6", lab.server_ip6, "--alt-ip6", lab.server_alt_ip6] if dual else []
    try:
        serve_in_lab(lab, http_port=PORT, wait_timeout=None, extra=v6)
    except ServeFailed as exc:
        raise SystemExit(str(exc)) from None
    return f"http://{lab.server_ip}:{PORT}"


def _wrong(expected: dict, got: dict) -> list[str]:
    """Ground-truth fields the probe got wrong."""
    bad = ["nat"] if expected["nat"] != got["nat"] else []
    return bad + [f"{p}.{k}={got[p].get(k)}" for p in ("udp", "tcp") for k, v in expected[p].items()
                  if got[p].get(k) != v]


def _timed(lab: Lab, argv: list[str], timeout: float = 120) -> tuple[float, subprocess.CompletedProcess]:
    t = time.monotonic()
    r = lab.exec("a1", argv, timeout=timeout)
    return time.monotonic() - t, r


def bench_nat(name: str, runs: int, compare: bool) -> dict:
    with Lab(LabSpec(sites={"a": SiteSpec(nat=CATALOGUE[name])})) as lab:
        url = _serve(lab)
        elapsed, wall, wrong = [], [], []
        for _ in range(runs):
            w, r = _timed(lab, ["python3", "-m", "stunturn_diag", "probe", url, "--json"])
            got = json.loads(r.stdout)
            elapsed.append(got["elapsed_ms"])
            wall.append(w * 1000)
            wrong += _wrong(lab.expected("a"), got)
        row = {"nat": name, "probe_ms_median": round(statistics.median(elapsed)),
               "probe_ms_max": round(max(elapsed)), "cli_wall_ms_median": round(statistics.median(wall)),
               "correct": not wrong, "wrong": wrong}
        row.update(_vovida(lab, runs))
        if row["vovida_ms_median"]:
            row["ratio"] = round(row["probe_ms_median"] / row["vovida_ms_median"], 2)
            row["cli_ratio"] = round(row["cli_wall_ms_median"] / row["vovida_ms_median"], 2)
        if compare:
            w, r = _timed(lab, ["pystun3", "-H", lab.server_ip, "-P", "3478"], timeout=60)
            row["pystun3_s"] = round(w, 1)
            row["pystun3_says"] = " ".join(r.stdout.split())[:80]
    if compare:
        row.update(_natdiscovery(name))
    return row


def _vovida(lab: Lab, runs: int) -> dict:
    """The Vovida STUN client (``stun``, Debian stun-client) from the same host against the same
    server: wall time (median of ``runs``) and its verdict line ("Primary: ...")."""
    times, said = [], ""
    for _ in range(runs):
        w, r = _timed(lab, ["stun", lab.server_ip, "-v"], timeout=60)
        times.append(w * 1000)
        said = next((line.strip() for line in r.stdout.splitlines() if line.startswith("Primary:")), said)
    return {"vovida_ms_median": round(statistics.median(times)), "vovida_says": said}


def _natdiscovery(name: str) -> dict:
    """coturn's natdiscovery (-m -f -H) against coturn in a fresh lab of the same type."""
    with Lab(LabSpec(sites={"a": SiteSpec(nat=CATALOGUE[name])})) as lab, \
            tempfile.TemporaryDirectory() as workdir:
        os.chmod(workdir, 0o777)
        lab.popen("srv", ["turnserver", "-n", "--listening-ip", lab.server_ip, "--listening-ip",
                          lab.server_alt_ip, "--relay-ip", lab.server_ip, "-p", "3478",
                          "--alt-listening-port", "3479", "--no-cli", "--no-tls", "--no-dtls", "--stun-only",
                          "--pidfile", f"{workdir}/t.pid", "--userdb", f"{workdir}/db"],
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(50):  # poll until coturn answers (bounded)
            if stun_answers(lab, "srv", (lab.server_ip, 3478), timeout=0.2):
                break
        # -m -f -H: mapping, filtering and hairpinning, like the probe's UDP part
        w, r = _timed(lab, ["turnutils_natdiscovery", "-m", "-f", "-H", lab.server_ip], timeout=120)
        w2, r2 = _timed(lab, ["python3", "-m", "stunturn_diag", "probe", "--stun", f"{lab.server_ip}:3478",
                              "--json"])
        got = json.loads(r2.stdout)
        said = [line for line in r.stdout.splitlines() if "NAT with" in line]
        return {"natdiscovery_s": round(w, 1), "natdiscovery_says": said,
                "probe_vs_coturn_ms": round(got["elapsed_ms"])}


def _serve_unthrottled(lab: Lab) -> str:
    """Our dual-stack server with the probe-assist rate and per-source concurrency limits raised
    (config.probe_assist), so back-to-back runs from one address are never answered 429 (the previous
    run's silent connect-backs may still be running), which would skew the times."""
    code = ("import json;from stunturn_server.config import ProbeAssistConfig, ServerConfig;"
            "from stunturn_server.runner import serve_forever;"
            f"serve_forever(ServerConfig(http_host={lab.server_ip!r}, http_port={PORT}, "
            f"alt_ip={lab.server_alt_ip!r}, http_host6={lab.server_ip6!r}, alt_ip6={lab.server_alt_ip6!r}, "
            "log_level='WARNING', probe_assist=ProbeAssistConfig(burst=1000, rate=1000, "
            "concurrency_per_source=32)), "
            "on_ready=lambda h: print(json.dumps({'http_url': h.http_url}), flush=True))")
    proc = lab.popen("srv", ["python3", "-c", code])
    if not select.select([proc.stdout], [], [], 20)[0]:
        raise SystemExit("server did not start")
    proc.stdout.readline()
    return f"http://{lab.server_ip}:{PORT}"


def bench_dual(token: str, runs: int) -> dict:
    """IPv4-only vs dual-stack probe CLI wall time in one lab (alternating, median of ``runs``)."""
    with Lab(LabSpec.simple(token, None)) as lab:
        url = _serve_unthrottled(lab)
        truth = lab.expected("a")
        only4, both, wrong, v6_ms, e4, e46 = [], [], [], [], [], []
        for _ in range(runs):
            w4, r4 = _timed(lab, ["python3", "-m", "stunturn_diag", "probe", url, "--json", "--no-ipv6"])
            w46, r46 = _timed(lab, ["python3", "-m", "stunturn_diag", "probe", url, "--json"])
            only4.append(w4 * 1000)
            both.append(w46 * 1000)
            got4, got = json.loads(r4.stdout), json.loads(r46.stdout)
            e4.append(got4["elapsed_ms"])
            e46.append(got["elapsed_ms"])
            wrong += _wrong(truth, got4) + _wrong(truth, got)
            six = got["ipv6"]
            if not six["reachable"]:
                wrong.append(f"ipv6 unreachable: {six['reason']}")
            else:
                v6_ms.append(six["elapsed_ms"])
                wrong += [f"ipv6.{w}" for w in _wrong(truth["ipv6"], six)]
        m4, m46 = statistics.median(only4), statistics.median(both)
        return {"nat": token, "ipv4_only_ms": round(m4), "dual_stack_ms": round(m46),
                "ratio": round(m46 / m4, 2), "ipv4_probe_ms_alone": round(statistics.median(e4)),
                "ipv4_probe_ms_beside_ipv6": round(statistics.median(e46)), "ipv6_probe_ms_median": round(statistics.median(v6_ms)) if v6_ms
                else None, "correct": not wrong, "wrong": wrong}


def main_dual(tokens: list[str], runs: int, as_json: bool) -> None:
    rows = [bench_dual(t, runs) for t in tokens]
    if as_json:
        print(json.dumps(rows))
        return
    print("probe CLI wall time, IPv4 only (--no-ipv6) vs IPv4 + IPv6 at once (median; target ratio <= 1.2)")
    for row in rows:
        print(f"{row['nat']:36s} IPv4 {row['ipv4_only_ms']:6d} ms  dual {row['dual_stack_ms']:6d} ms  "
              f"ratio {row['ratio']:.2f}  (probe elapsed: IPv4 alone {row['ipv4_probe_ms_alone']} ms, beside "
              f"IPv6 {row['ipv4_probe_ms_beside_ipv6']} ms; IPv6 {row['ipv6_probe_ms_median']} ms)  "
              f"correct={row['correct']}{' ' + str(row['wrong']) if row['wrong'] else ''}")
    sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nat", action="append", choices=list(CATALOGUE), help="NAT type (repeatable)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--compare", action="store_true", help="also time natdiscovery and pystun3")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--dual-stack", action="store_true", help="IPv4-only vs dual-stack probe time")
    ap.add_argument("--v6-nat", action="append", metavar="TOKEN",
                    help="lab NAT type with +v6=MODE for --dual-stack (repeatable)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    if args.dual_stack:
        main_dual(args.v6_nat or ["port-restricted+v6=apdf", "port-restricted+v6=apdf+v6-syn=rst",
                                  "symmetric-random+v6=apdf"],
                  max(1, min(args.runs, 20)), args.json)
        return
    rows = [bench_nat(n, max(1, min(args.runs, 20)), args.compare) for n in (args.nat or list(CATALOGUE))]
    if args.json:
        print(json.dumps(rows))
        return
    print("probe: full diagnosis per NAT type (UDP+TCP; median/max of the probe's elapsed_ms; CLI wall incl."
          " Python start-up) vs the Vovida stun client (UDP only, wall time; ratio = ours / theirs)")
    for row in rows:
        extra = ""
        if "natdiscovery_s" in row:
            extra = (f"\n{'':24s} probe vs coturn {row['probe_vs_coturn_ms']} ms; coturn natdiscovery "
                     f"{row['natdiscovery_s']} s {row['natdiscovery_says']}; pystun3 {row['pystun3_s']} s "
                     f"({row['pystun3_says']})")
        print(f"{row['nat']:24s} {row['probe_ms_median']:6d} ms (max {row['probe_ms_max']:5d})  "
              f"CLI {row['cli_wall_ms_median']:6d} ms  correct={row['correct']}"
              f"{' ' + str(row['wrong']) if row['wrong'] else ''}  | stun {row['vovida_ms_median']:6d} ms  "
              f"ratio {row.get('ratio')} (CLI {row.get('cli_ratio')})  [{row['vovida_says']}]{extra}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
