#!/usr/bin/env python3
"""Benchmark the signaling server: held long-polls, memory per waiter, pairing latency, check-in rate.

Starts ``stunturn-diag serve --no-stun`` on 127.0.0.1 in a subprocess (or targets
``--url``; memory is then read from ``--pid`` if given), opens N initiator
long-polls (raw HTTP over gevent sockets, each from its own connection), then
checks in receivers: first ``--latency-pairs`` one at a time (pairing latency: from
sending the receiver's check-in to the initiator's answer arriving), then
``--pairs`` from ``--concurrency`` parallel connections (check-in rate). Client and
server share this machine's cores, so the figures are lower bounds.

``--mode`` picks what runs: ``memory`` (one instance, in-memory store; the default),
``redis`` (one instance on a Redis this script starts: a ``redis-server`` on a free
loopback port with a temporary directory, ended by PID), ``two`` (instances A and B on
that Redis: waiters spread over both, each receiver checks in at the instance that does
*not* hold its initiator) or ``all`` (the three in one run, plus the ratios). Memory per
1,000 waiters sums every server process and redis-server; ``server_cpu_ms_per_checkin``
is their CPU time over the check-in phase divided by the check-ins, the figure least
disturbed by other load on the machine (``checkins_per_server_cpu_second`` = per core).

Servers run with their default limits (README "Security model"): initiators bind
127.0.x.y sources (40 per source, under ``--max-waiters-per-ip``) and every attempt
pairs, so the failed-attempt limiter never spends a token; 10000 waiters stay under
``max_waiters`` (20000) and ``max_connections`` (25000).

Bounded: every phase stops at ``--max-seconds`` overall; every subprocess is always
stopped. Loopback only. Prints one figure per line (``--json`` for one object).

    python3 benchmarks/bench_server.py --waiters 10000 --latency-pairs 500 --pairs 2000
    python3 benchmarks/bench_server.py --mode all --waiters 10000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import shutil
import subprocess
import sys
import tempfile
import time

import gevent
import gevent.pool
from gevent import socket

from stunturn_diag.lab.pair_runner import ServeFailed, start_serve


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_kib(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def http_request(method: str, path: str, body: dict | None = None) -> bytes:
    data = json.dumps(body).encode() if body is not None else b""
    head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    return head.encode() + b"\r\n" + data


class Reader:
    """Reads HTTP/1.1 responses (Content-Length bodies) from one socket."""

    def __init__(self, sock) -> None:
        self.sock = sock
        self.buf = b""

    def response(self) -> tuple[int, bytes]:
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(self.buf) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buf += chunk
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, body


def get(address, path: str) -> dict:
    sock = socket.create_connection(address, timeout=10)
    try:
        sock.sendall(http_request("GET", path))
        return json.loads(Reader(sock).response()[1])
    finally:
        sock.close()


def serve_loopback(wait_timeout: float, *extra: str) -> tuple[subprocess.Popen, str]:
    try:
        proc, info = start_serve(subprocess.Popen, "127.0.0.1:0", "--no-stun", "--log-level",
                                 "WARNING", "--wait-timeout", str(wait_timeout),
                                 "--max-waiters-per-ip", "100000",
                                 "--max-connections-per-ip", "200000", *extra,
                                 stderr=subprocess.DEVNULL)
    except ServeFailed as exc:
        raise SystemExit(str(exc)) from None
    return proc, info["http_url"]


def stop(proc: subprocess.Popen, sig=signal.SIGINT) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_redis(workdir: str) -> tuple[subprocess.Popen, str]:
    """A redis-server on a free loopback port in ``workdir`` (no persistence)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (scripts/setup.sh installs it)")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", workdir,
                             "--save", "", "--appendonly", "no", "--maxclients", "1000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            gevent.sleep(0.05)
    stop(proc)
    raise SystemExit("redis-server did not start")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` so far (Linux /proc)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def key_for(i: int) -> str:
    """A distinct rendezvous identifier per pair (64 hex digits, as clients send; the
    server treats it as opaque, so no scrypt is needed here)."""
    return f"{i:064x}"


def address_of(url: str) -> tuple[str, int]:
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    return host, int(port)


def run_scenario(args, addresses: list[tuple[str, int]], pids: list[int]) -> dict:
    """Hold ``args.waiters`` initiators spread over ``addresses`` (waiter i on instance
    i % n), then check receivers in at instance (i + 1) % n: the other one when n == 2."""
    nofile = raise_nofile()
    if args.waiters + 200 > nofile:
        raise SystemExit(f"open-file limit {nofile} is too low for {args.waiters} waiters")
    deadline = time.monotonic() + args.max_seconds
    n = len(addresses)
    answers: dict[int, float] = {}
    refused: dict[int, int] = {}  # initiators answered at once with another status (503...)
    failures: list[str] = []
    sockets = []
    try:
        for address in addresses:
            get(address, "/healthz")
        rss_before = sum(rss_kib(pid) or 0 for pid in pids) if pids else None

        def initiator(i: int) -> None:
            try:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.bind((f"127.0.{1 + i // 250 % 200}.{1 + i % 250}", 0))  # spread source ports
                sock.connect(addresses[i % n])
                sockets.append(sock)
                sock.sendall(http_request("POST", "/v1/initiate", {
                    "rendezvous": key_for(i), "target_ip": "127.0.0.1", "protocol": "udp"}))
                status, _ = Reader(sock).response()
                if status == 200:
                    answers[i] = time.perf_counter()
                else:
                    refused[status] = refused.get(status, 0) + 1
            except (OSError, ValueError) as exc:
                refused[0] = refused.get(0, 0) + 1  # 0: no HTTP answer
                if len(failures) < 5:
                    failures.append(f"initiator {i}: {exc}")

        group = gevent.pool.Group()
        started = time.monotonic()
        for i in range(args.waiters):
            group.spawn(initiator, i)
            if i % 500 == 499:
                gevent.sleep(0)  # let connects proceed
        held = 0
        while time.monotonic() < deadline:
            held = sum(get(address, "/healthz")["waiting"] for address in addresses)
            if held + sum(refused.values()) >= args.waiters:
                break
            gevent.sleep(0.1)
        hold_seconds = time.monotonic() - started
        rss_held = sum(rss_kib(pid) or 0 for pid in pids) if pids else None

        sent: dict[int, float] = {}
        receiver_status: dict[int, int] = {}

        def receiver(indices: list[int], address, one_at_a_time: bool) -> None:
            if not indices:
                return
            sock = socket.create_connection(address, timeout=30)
            reader = Reader(sock)
            try:
                for i in indices:
                    if time.monotonic() > deadline:
                        return
                    sent[i] = time.perf_counter()
                    sock.sendall(http_request("POST", "/v1/checkin", {"rendezvous": key_for(i)}))
                    receiver_status[i] = reader.response()[0]
                    if one_at_a_time:
                        # unloaded latency: let the initiator's answer be read before the next pair
                        while i not in answers and time.monotonic() < deadline:
                            gevent.sleep(0.0005)
            finally:
                sock.close()

        def settle(indices) -> None:
            limit = min(time.monotonic() + 10, deadline + 10)
            want = sum(1 for i in indices if receiver_status.get(i) == 200)
            while time.monotonic() < limit and sum(1 for i in indices if i in answers) < want:
                gevent.sleep(0.01)

        def checkin_at(i: int):
            return addresses[(i + 1) % n]

        # phase 1: latency, one receiver at a time (server otherwise idle, all waiters held)
        latency_keys = list(range(min(args.latency_pairs, held)))
        for i in latency_keys:
            receiver([i], checkin_at(i), True)
        settle(latency_keys)
        latencies = sorted((answers[i] - sent[i]) * 1000 for i in latency_keys if i in answers)
        # phase 2: throughput, --concurrency receiver connections in parallel, spread over the
        # instances (each connection checks in the waiters held by the instance after its own)
        rest = list(range(len(latency_keys), min(len(latency_keys) + args.pairs, held)))
        jobs = []
        for r in range(args.concurrency):
            target = r % n
            mine = [i for i in rest[r // n::max(1, args.concurrency // n)] if (i + 1) % n == target]
            jobs.append((mine, addresses[target]))
        assigned = {i for mine, _ in jobs for i in mine}
        rest = [i for i in rest if i in assigned]
        cpu_before = cpu_seconds(pids)
        checkin_start = time.perf_counter()
        gevent.joinall([gevent.spawn(receiver, mine, address, False) for mine, address in jobs],
                       timeout=max(1.0, deadline - time.monotonic()))
        checkin_seconds = time.perf_counter() - checkin_start
        settle(rest)
        pairs_seconds = max((answers[i] for i in rest if i in answers), default=checkin_start) - checkin_start
        cpu_used = cpu_seconds(pids) - cpu_before
        loaded = sorted((answers[i] - sent[i]) * 1000 for i in rest if i in answers)
        matched = sum(1 for s in receiver_status.values() if s == 200)
        early_refused = dict(refused)
    finally:
        for sock in sockets:
            sock.close()

    def pct(values: list[float], p: float) -> float | None:
        if not values:
            return None
        return round(values[min(len(values) - 1, int(p / 100 * len(values)))], 2)

    per_1000 = None
    if rss_before is not None and rss_held is not None and held:
        per_1000 = round((rss_held - rss_before) / held * 1000 / 1024, 2)
    checked = sum(1 for i in rest if i in receiver_status)
    return {
        "instances": n,
        "waiters_requested": args.waiters,
        "waiters_held": held,
        "hold_seconds": round(hold_seconds, 2),
        "initiators_refused": {str(k): v for k, v in sorted(early_refused.items())},
        "server_rss_mib_before": round(rss_before / 1024, 1) if rss_before else None,
        "server_rss_mib_held": round(rss_held / 1024, 1) if rss_held else None,
        "server_rss_mib_per_1000_waiters": per_1000,
        "pairs_checked_in": len(receiver_status),
        "pairs_matched": matched,
        "pairing_latency_ms_p50": pct(latencies, 50),
        "pairing_latency_ms_p99": pct(latencies, 99),
        "pairing_latency_ms_mean": round(statistics.fmean(latencies), 2) if latencies else None,
        "latency_sample": len(latencies),
        "receiver_checkins_per_second": round(checked / checkin_seconds, 1)
        if checkin_seconds > 0 and checked else None,
        "pairs_per_second": round(sum(1 for i in rest if i in answers) / pairs_seconds, 1)
        if pairs_seconds > 0 else None,
        "server_cpu_ms_per_checkin": round(cpu_used * 1000 / checked, 3) if checked and pids else None,
        "checkins_per_server_cpu_second": round(checked / cpu_used, 1) if cpu_used > 0 and checked else None,
        "receiver_connections": args.concurrency,
        "pairing_latency_ms_p50_under_load": pct(loaded, 50),
        "pairing_latency_ms_p99_under_load": pct(loaded, 99),
        "client_errors": failures,
    }


def run_mode(args, mode: str, redis_url: str | None, redis_pid: int | None, secret: str | None) -> dict:
    extra = ("--redis", redis_url, "--secret-file", secret, "--redis-pool-size", str(args.redis_pool_size)
             ) if mode != "memory" else ()
    procs = []
    try:
        urls = []
        for _ in range(2 if mode == "two" else 1):
            proc, url = serve_loopback(args.wait_timeout, *extra)
            procs.append(proc)
            urls.append(url)
        pids = [p.pid for p in procs] + ([redis_pid] if redis_pid and mode != "memory" else [])
        result = run_scenario(args, [address_of(u) for u in urls], pids)
        result["mode"] = mode
        return result
    finally:
        for proc in procs:
            stop(proc)


def run(args) -> dict:
    if args.url:
        result = run_scenario(args, [address_of(args.url.rstrip("/"))], [args.pid] if args.pid else [])
        result["mode"] = "url"
        return result
    modes = ["memory", "redis", "two"] if args.mode == "all" else [args.mode]
    workdir = tempfile.mkdtemp(prefix="bench-server-")
    redis_proc = None
    try:
        redis_url, redis_pid, secret = args.redis, None, None
        if "redis" in modes or "two" in modes:
            secret = os.path.join(workdir, "secret")
            with open(secret, "w") as handle:
                handle.write(os.urandom(24).hex())
            if not redis_url:
                redis_proc, redis_url = start_redis(workdir)
                redis_pid = redis_proc.pid
        results = {mode: run_mode(args, mode, redis_url, redis_pid, secret) for mode in modes}
    finally:
        if redis_proc is not None:
            stop(redis_proc, signal.SIGTERM)
        shutil.rmtree(workdir, ignore_errors=True)
    if len(results) == 1:
        return next(iter(results.values()))

    def ratio(a: str, b: str, name: str = "receiver_checkins_per_second"):
        x, y = results[a].get(name), results[b].get(name)
        return round(x / y, 2) if x and y else None

    return {"runs": results, "ratios": {
        "two_vs_one_redis_checkins_per_second": ratio("two", "redis"),
        "one_redis_vs_memory_checkins_per_second": ratio("redis", "memory"),
        "two_vs_one_redis_pairs_per_second": ratio("two", "redis", "pairs_per_second"),
        "one_redis_vs_memory_checkins_per_server_cpu_second": ratio("redis", "memory",
                                                                    "checkins_per_server_cpu_second"),
    }}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["memory", "redis", "two", "all"], default="memory",
                        help="one in-memory instance, one instance on Redis, two on Redis, or all three")
    parser.add_argument("--redis", metavar="URL", help="use this Redis instead of starting one")
    parser.add_argument("--redis-pool-size", type=int, default=64, help="serve --redis-pool-size")
    parser.add_argument("--waiters", "-n", type=int, default=10000, help="initiator long-polls to hold")
    parser.add_argument("--latency-pairs", type=int, default=500,
                        help="pairs measured one at a time (pairing latency)")
    parser.add_argument("--pairs", type=int, default=2000,
                        help="pairs checked in by parallel receivers (check-in rate)")
    parser.add_argument("--concurrency", type=int, default=20, help="receiver connections in parallel")
    parser.add_argument("--wait-timeout", type=float, default=120.0, help="server long-poll timeout")
    parser.add_argument("--max-seconds", type=float, default=90.0, help="overall bound per mode")
    parser.add_argument("--url", help="benchmark a running server on loopback instead of starting one "
                        "(receivers check in from 127.0.0.1, so it must see them as such)")
    parser.add_argument("--pid", type=int, help="with --url: server PID to read memory and CPU from")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.waiters < 1 or args.pairs < 0 or args.latency_pairs < 0 or args.concurrency < 2:
        parser.error("--waiters >= 1, --concurrency >= 2, --pairs/--latency-pairs >= 0")
    result = run(args)
    if args.json:
        print(json.dumps(result))
    elif "runs" in result:
        for mode, figures in result["runs"].items():
            print(f"[{mode}]")
            for name, value in figures.items():
                print(f"  {name}: {value}")
        for name, value in result["ratios"].items():
            print(f"{name}: {value}")
    else:
        for name, value in result.items():
            print(f"{name}: {value}")


if __name__ == "__main__":
    main()
