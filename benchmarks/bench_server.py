#!/usr/bin/env python3
"""Benchmark the signaling server: held long-polls, memory per waiter, pairing latency, check-in rate.

Starts ``stunturn-diag serve --no-stun`` on 127.0.0.1 in a subprocess (or targets
``--url``; memory is then read from ``--pid`` if given), opens N initiator
long-polls (raw HTTP over gevent sockets, each from its own connection), then
checks in receivers: first ``--latency-pairs`` one at a time (pairing latency: from
sending the receiver's check-in to the initiator's answer arriving), then
``--pairs`` from ``--concurrency`` parallel connections (check-in rate). Client and
server share this machine's cores, so the figures are lower bounds.

Bounded: every phase stops at ``--max-seconds`` overall; the server subprocess is
always stopped. Loopback only. Prints one figure per line (``--json`` for one object).

    python3 benchmarks/bench_server.py --waiters 10000 --latency-pairs 500 --pairs 2000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time

import gevent
import gevent.pool
from gevent import socket


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


def start_server(wait_timeout: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "stunturn_diag", "serve", "127.0.0.1:0", "--no-stun",
                             "--json", "--log-level", "WARNING", "--wait-timeout", str(wait_timeout)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise SystemExit("the server did not start")
    return proc, json.loads(line)["http_url"]


def key_for(i: int) -> str:
    """A distinct rendezvous identifier per pair (64 hex digits, as clients send; the
    server treats it as opaque, so no scrypt is needed here)."""
    return f"{i:064x}"


def run(args) -> dict:
    nofile = raise_nofile()
    if args.waiters + 200 > nofile:
        raise SystemExit(f"open-file limit {nofile} is too low for {args.waiters} waiters")
    deadline = time.monotonic() + args.max_seconds
    proc = None
    if args.url:
        url, pid = args.url.rstrip("/"), args.pid
    else:
        proc, url = start_server(args.wait_timeout)
        pid = proc.pid
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    address = (host, int(port))
    answers: dict[int, float] = {}
    failures: list[str] = []
    sockets = []
    try:
        get(address, "/healthz")
        rss_before = rss_kib(pid)

        def initiator(i: int) -> None:
            try:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.bind((f"127.0.{1 + i // 250 % 200}.{1 + i % 250}", 0))  # spread source ports
                sock.connect(address)
                sockets.append(sock)
                sock.sendall(http_request("POST", "/v1/initiate", {
                    "rendezvous": key_for(i), "target_ip": "127.0.0.1", "protocol": "udp"}))
                status, _ = Reader(sock).response()
                if status == 200:
                    answers[i] = time.perf_counter()
            except (OSError, ValueError) as exc:
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
            held = get(address, "/healthz")["waiting"]
            if held >= args.waiters:
                break
            gevent.sleep(0.1)
        hold_seconds = time.monotonic() - started
        rss_held = rss_kib(pid)

        sent: dict[int, float] = {}
        receiver_status: dict[int, int] = {}

        def receiver(indices: list[int]) -> None:
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
                    if len(indices) > 1 and concurrency_one:
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

        # phase 1: latency, one receiver at a time (server otherwise idle, all waiters held)
        latency_keys = list(range(min(args.latency_pairs, held)))
        concurrency_one = True
        receiver(latency_keys)
        settle(latency_keys)
        latencies = sorted((answers[i] - sent[i]) * 1000 for i in latency_keys if i in answers)
        # phase 2: throughput, --concurrency receiver connections in parallel
        concurrency_one = False
        rest = list(range(len(latency_keys), min(len(latency_keys) + args.pairs, held)))
        per_receiver = [rest[r::args.concurrency] for r in range(args.concurrency)]
        checkin_start = time.perf_counter()
        gevent.joinall([gevent.spawn(receiver, idx) for idx in per_receiver],
                       timeout=max(1.0, deadline - time.monotonic()))
        checkin_seconds = time.perf_counter() - checkin_start
        settle(rest)
        loaded = sorted((answers[i] - sent[i]) * 1000 for i in rest if i in answers)
        matched = sum(1 for s in receiver_status.values() if s == 200)
    finally:
        for sock in sockets:
            sock.close()
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def pct(values: list[float], p: float) -> float | None:
        if not values:
            return None
        return round(values[min(len(values) - 1, int(p / 100 * len(values)))], 2)

    per_1000 = None
    if rss_before is not None and rss_held is not None and held:
        per_1000 = round((rss_held - rss_before) / held * 1000 / 1024, 2)
    return {
        "waiters_requested": args.waiters,
        "waiters_held": held,
        "hold_seconds": round(hold_seconds, 2),
        "server_rss_mib_before": round(rss_before / 1024, 1) if rss_before else None,
        "server_rss_mib_held": round(rss_held / 1024, 1) if rss_held else None,
        "server_rss_mib_per_1000_waiters": per_1000,
        "pairs_checked_in": len(receiver_status),
        "pairs_matched": matched,
        "pairing_latency_ms_p50": pct(latencies, 50),
        "pairing_latency_ms_p99": pct(latencies, 99),
        "pairing_latency_ms_mean": round(statistics.fmean(latencies), 2) if latencies else None,
        "latency_sample": len(latencies),
        "receiver_checkins_per_second": round(len(rest) / checkin_seconds, 1)
        if checkin_seconds > 0 and rest else None,
        "receiver_connections": args.concurrency,
        "pairing_latency_ms_p50_under_load": pct(loaded, 50),
        "pairing_latency_ms_p99_under_load": pct(loaded, 99),
        "client_errors": failures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--waiters", "-n", type=int, default=10000, help="initiator long-polls to hold")
    parser.add_argument("--latency-pairs", type=int, default=500,
                        help="pairs measured one at a time (pairing latency)")
    parser.add_argument("--pairs", type=int, default=2000,
                        help="pairs checked in by parallel receivers (check-in rate)")
    parser.add_argument("--concurrency", type=int, default=20, help="receiver connections in parallel")
    parser.add_argument("--wait-timeout", type=float, default=120.0, help="server long-poll timeout")
    parser.add_argument("--max-seconds", type=float, default=90.0, help="overall bound")
    parser.add_argument("--url", help="benchmark a running server on loopback instead of starting one "
                        "(receivers check in from 127.0.0.1, so it must see them as such)")
    parser.add_argument("--pid", type=int, help="with --url: server PID to read memory from")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.waiters < 1 or args.pairs < 0 or args.latency_pairs < 0 or args.concurrency < 1:
        parser.error("--waiters and --concurrency must be >= 1, --pairs/--latency-pairs >= 0")
    result = run(args)
    if args.json:
        print(json.dumps(result))
    else:
        for name, value in result.items():
            print(f"{name}: {value}")


if __name__ == "__main__":
    main()
