#!/usr/bin/env python3
"""Benchmark the signaling server: held long-polls, memory per waiter, pairing latency, check-in rate.

Starts ``stunturn-diag serve --no-stun`` on 127.0.0.1 in a subprocess (or targets
``--url``; memory is then read from ``--pid`` if given), opens N initiator
long-polls (raw HTTP, each from its own connection, kept open until the end), then
checks in receivers: first ``--latency-pairs`` one at a time (pairing latency: from
sending the receiver's check-in to the initiator's answer arriving), then
``--pairs`` from ``--concurrency`` parallel keep-alive connections (check-in rate; the
connections are spread evenly over the instances, connected and their requests built
before the clock starts). Client and server share this machine's cores, so the
figures are lower bounds.

The load generator is the measuring instrument and shares the cores, so it is kept
cheap: one thread, one ``epoll`` loop over non-blocking sockets (no greenlets),
pre-built request bytes, responses parsed for status and Content-Length only. Its CPU
time per check-in is printed (``client_cpu_ms_per_checkin``) beside the instances'
(``instance_cpu_ms_per_checkin``) and redis-server's (``redis_cpu_ms_per_checkin``):
on these shared cores that breakdown tells what caps the rate. (Until issue 11's
scale-out work the client was gevent greenlets, one per connection, at about twice the
client CPU per check-in, and in ``two`` mode only half its receiver connections got
work.)

``--mode`` picks what runs: ``memory`` (one instance, in-memory store; the default),
``redis`` (one instance on a Redis this script starts: a ``redis-server`` on a free
loopback port with a temporary directory, ended by PID), ``two`` (instances A and B on
that Redis: waiters spread over both, each receiver checks in at the instance that does
*not* hold its initiator) or ``all`` (the three in one run, plus the ratios). Memory per
1,000 waiters sums every server process and redis-server; ``server_cpu_ms_per_checkin``
is their CPU time over the check-in phase divided by the check-ins, the figure least
disturbed by other load on the machine (``checkins_per_server_cpu_second`` = per core);
``cpu_bound_checkins_per_second`` is the rate those CPU costs allow on this machine's
cores (each instance on one core at most; instances, redis-server and client on all of
them), and the ``*_cpu_bound`` ratios compare modes by it.

Servers run with their default limits (README "Security model"): initiators bind
127.0.x.y sources (40 per source, under ``--max-waiters-per-ip``) and every attempt
pairs, so the failed-attempt limiter never spends a token; 10000 waiters stay under
``max_waiters`` (20000) and ``max_connections`` (25000).

Bounded: every phase stops at ``--max-seconds`` overall; every subprocess is always
stopped. Loopback only. Prints one figure per line (``--json`` for one object).

    python3 benchmarks/bench_server.py --waiters 10000 --latency-pairs 500 --pairs 5000
    python3 benchmarks/bench_server.py --mode all --waiters 10000
"""

from __future__ import annotations

import argparse
import collections
import errno
import json
import os
import resource
import select
import signal
import socket
import statistics
import shutil
import subprocess
import tempfile
import time

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


def parse_responses(buf: bytes) -> tuple[list[int], bytes]:
    """The statuses of the complete HTTP/1.1 responses (Content-Length bodies) at the start
    of ``buf``, and what is left of it. Minimal on purpose: the load generator's cost per
    response is part of what shares the cores with the servers."""
    statuses = []
    while True:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return statuses, buf
        head = buf[:end].lower()
        at = head.find(b"\r\ncontent-length:")
        length = 0
        if at >= 0:
            stop = head.find(b"\r\n", at + 2)
            length = int(head[at + 17:stop if stop >= 0 else end])
        if len(buf) < end + 4 + length:
            return statuses, buf
        statuses.append(int(buf[9:12]))
        buf = buf[end + 4 + length:]


def get(address, path: str) -> dict:
    """One blocking GET (``/healthz``) outside the load."""
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(http_request("GET", path))
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            data += chunk
            end = data.find(b"\r\n\r\n")
            if end >= 0:
                statuses, rest = parse_responses(data)
                if statuses:
                    body = data[end + 4:len(data) - len(rest)]
                    return json.loads(body)


class Conn:
    """One non-blocking client connection in a :class:`Loop`: sends requests (kept until the
    socket takes them), hands each complete response's status to ``on_status``."""

    __slots__ = ("loop", "sock", "fd", "buf", "out", "connected", "on_status", "on_close", "tag")

    def __init__(self, loop: "Loop", sock, on_status, on_close, tag) -> None:
        self.loop, self.sock, self.fd = loop, sock, sock.fileno()
        self.buf = self.out = b""
        self.connected = False
        self.on_status, self.on_close, self.tag = on_status, on_close, tag

    def send(self, data: bytes) -> None:
        if self.out or not self.connected:
            self.out += data
            return
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self.close(exc)
            return
        if sent < len(data):
            self.out = data[sent:]
            self.loop.ep.modify(self.fd, select.EPOLLIN | select.EPOLLOUT)

    def ready(self, events: int) -> None:
        if events & select.EPOLLOUT:
            if not self.connected:
                error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error:
                    self.close(OSError(error, os.strerror(error)))
                    return
                self.connected = True
            out, self.out = self.out, b""
            self.loop.ep.modify(self.fd, select.EPOLLIN)
            if out:
                self.send(out)
        if events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
            try:
                chunk = self.sock.recv(65536)
            except BlockingIOError:
                return
            except OSError as exc:
                self.close(exc)
                return
            if not chunk:
                self.close(ConnectionError("server closed the connection"))
                return
            statuses, self.buf = parse_responses(self.buf + chunk if self.buf else chunk)
            for status in statuses:
                self.on_status(self, status)

    def close(self, reason: BaseException | None = None) -> None:
        if self.fd in self.loop.conns:
            del self.loop.conns[self.fd]
            self.loop.ep.unregister(self.fd)
            self.sock.close()
            if reason is not None and self.on_close is not None:
                self.on_close(self, reason)


class Loop:
    """The load generator: one thread, one ``epoll``, non-blocking sockets, no greenlets."""

    def __init__(self) -> None:
        self.ep = select.epoll()
        self.conns: dict[int, Conn] = {}

    def connect(self, address, on_status, on_close=None, tag=None, source: str | None = None) -> Conn:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if source:
            sock.bind((source, 0))
        conn = Conn(self, sock, on_status, on_close, tag)
        self.conns[conn.fd] = conn
        self.ep.register(conn.fd, select.EPOLLOUT)
        error = sock.connect_ex(address)
        if error not in (0, errno.EINPROGRESS):
            conn.close(OSError(error, os.strerror(error)))
        return conn

    def run(self, until, deadline: float, slice_: float = 0.1) -> bool:
        """Serve events until ``until()`` is true (True) or ``deadline`` (False)."""
        conns, poll = self.conns, self.ep.poll
        while not until():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            for fd, events in poll(min(left, slice_)):
                conn = conns.get(fd)
                if conn is not None:
                    conn.ready(events)
        return True

    def close(self) -> None:
        for conn in list(self.conns.values()):
            conn.close()
        self.ep.close()


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
            time.sleep(0.05)
    stop(proc)
    raise SystemExit("redis-server did not start")


#: initiator connects in flight at once while the waiters are being opened
CONNECT_BURST = 500


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


def client_cpu_seconds() -> float:
    """User + system CPU seconds of this benchmark process (the load generator) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_bound(instances: int, instance_cpu: float, all_cpu: float, checked: int) -> float | None:
    """The check-in rate the measured CPU costs allow with this machine's cores all busy:
    each instance runs on at most one core (one hub, the GIL), and instances, redis-server
    and this client together on at most ``os.cpu_count()``. Steadier under other load than
    the wall-clock rate, which is what another helper's load takes away."""
    if not checked or instance_cpu <= 0 or all_cpu <= 0:
        return None
    return round(min(instances * checked / instance_cpu, (os.cpu_count() or 1) * checked / all_cpu), 1)


def run_scenario(args, addresses: list[tuple[str, int]], server_pids: list[int],
                 redis_pid: int | None = None) -> dict:
    """Hold ``args.waiters`` initiators spread over ``addresses`` (waiter i on instance
    i % n), then check receivers in at instance (i + 1) % n: the other one when n == 2."""
    pids = server_pids + ([redis_pid] if redis_pid else [])
    nofile = raise_nofile()
    if args.waiters + 200 > nofile:
        raise SystemExit(f"open-file limit {nofile} is too low for {args.waiters} waiters")
    deadline = time.monotonic() + args.max_seconds
    n = len(addresses)
    answers: dict[int, float] = {}  # initiator i's 200 arrived (perf_counter)
    refused: dict[int, int] = {}  # initiators answered with another status (503...), 0: none
    failures: list[str] = []
    sent: dict[int, float] = {}
    receiver_status: dict[int, int] = {}
    loop = Loop()

    def note(what: str, reason: BaseException) -> None:
        if len(failures) < 5:
            failures.append(f"{what}: {reason}")

    answered: set[int] = set()

    def initiator_status(conn: Conn, status: int) -> None:
        answered.add(conn.tag)  # the connection stays open until the end, as a client's would
        if status == 200:
            answers[conn.tag] = time.perf_counter()
        else:
            refused[status] = refused.get(status, 0) + 1

    def initiator_closed(conn: Conn, reason: BaseException) -> None:
        if conn.tag not in answered:
            refused[0] = refused.get(0, 0) + 1
            note(f"initiator {conn.tag}", reason)

    def receiver_status_in(conn: Conn, status: int) -> None:
        receiver_status[conn.tag[0]] = status
        advance(conn)

    def advance(conn: Conn) -> None:
        """Send this receiver connection's next check-in (its tag: current index, queue of
        (index, request) and whether to close once it is empty)."""
        _, queue, close_when_done = conn.tag
        if not queue:
            if close_when_done:
                conn.close()
            return
        i, data = queue.popleft()
        conn.tag = (i, queue, close_when_done)
        sent[i] = time.perf_counter()
        conn.send(data)

    def checkin_bytes(i: int) -> bytes:
        return http_request("POST", "/v1/checkin", {"rendezvous": key_for(i)})

    try:
        for address in addresses:
            get(address, "/healthz")
        rss_before = sum(rss_kib(pid) or 0 for pid in pids) if pids else None
        started = time.monotonic()
        # connects go out in bursts of CONNECT_BURST (the listen backlogs stay short)
        next_i = 0
        held = 0
        while time.monotonic() < deadline:
            connecting = sum(1 for c in loop.conns.values() if not c.connected)
            while next_i < args.waiters and connecting < CONNECT_BURST:
                i = next_i
                next_i += 1
                connecting += 1
                conn = loop.connect(addresses[i % n], initiator_status, initiator_closed, i,
                                    source=f"127.0.{1 + i // 250 % 200}.{1 + i % 250}")  # spread sources
                conn.send(http_request("POST", "/v1/initiate", {
                    "rendezvous": key_for(i), "target_ip": "127.0.0.1", "protocol": "udp"}))
            loop.run(lambda: False, min(deadline, time.monotonic() + (0.01 if next_i < args.waiters else 0.1)))
            if next_i < args.waiters:
                continue
            held = sum(get(address, "/healthz")["waiting"] for address in addresses)
            if held + sum(refused.values()) >= args.waiters:
                break
        hold_seconds = time.monotonic() - started
        rss_held = sum(rss_kib(pid) or 0 for pid in pids) if pids else None
        early_refused = dict(refused)

        def receivers(jobs: list[tuple[list[int], tuple[str, int]]], close_when_done: bool = True) -> list[Conn]:
            """One keep-alive connection per job, connected, its check-in requests built (before
            any clock runs); :func:`advance` sends its first."""
            conns = [loop.connect(address, receiver_status_in, lambda c, r: note("receiver", r),
                                  (None, collections.deque((i, checkin_bytes(i)) for i in indices),
                                   close_when_done))
                     for indices, address in jobs if indices or not close_when_done]
            loop.run(lambda: all(c.connected or c.fd not in loop.conns for c in conns), deadline)
            return conns

        def settle(indices) -> None:
            """Wait (10 s at most) until every matched pair's initiator answer has come."""
            indices = set(indices)
            target = sum(1 for i in indices if receiver_status.get(i) == 200) + \
                sum(1 for i in answers if i not in indices)
            loop.run(lambda: len(answers) >= target, min(time.monotonic() + 10, deadline + 10))

        # phase 1: latency, one receiver at a time (server otherwise idle, all waiters held): the
        # next check-in goes out once the previous pair's initiator answer arrived
        latency_keys = list(range(min(args.latency_pairs, held)))
        one_by_one = receivers([([], address) for address in addresses], close_when_done=False)
        for i in latency_keys:
            conn = one_by_one[(i + 1) % n]  # the connection to checkin_at(i)
            conn.tag[1].append((i, checkin_bytes(i)))
            advance(conn)
            # both answers: the receiver's (before the next request on its connection) and, when
            # it matched, the initiator's
            loop.run(lambda: i in receiver_status and (i in answers or receiver_status[i] != 200), deadline)
        settle(latency_keys)
        for conn in one_by_one:
            conn.close()
        latencies = sorted((answers[i] - sent[i]) * 1000 for i in latency_keys if i in answers)
        # phase 2: throughput, --concurrency receiver connections in parallel, spread evenly over
        # the instances: connection r checks in at instance r % n, taking every
        # (connections at that instance)-th of the waiters checking in there
        rest = list(range(len(latency_keys), min(len(latency_keys) + args.pairs, held)))
        jobs = []
        for target in range(n):
            here = [i for i in rest if (i + 1) % n == target]
            count = len(range(target, args.concurrency, n))
            jobs += [(here[c::count], addresses[target]) for c in range(count)]
        conns = receivers(jobs)  # connected before the clock starts
        cpu_before = cpu_seconds(server_pids)
        redis_cpu_before = cpu_seconds([redis_pid]) if redis_pid else 0.0
        client_cpu_before = client_cpu_seconds()
        checkin_start = time.perf_counter()
        for conn in conns:
            advance(conn)
        loop.run(lambda: all(c.fd not in loop.conns for c in conns), deadline)
        checkin_seconds = time.perf_counter() - checkin_start
        settle(rest)
        pairs_seconds = max((answers[i] for i in rest if i in answers), default=checkin_start) - checkin_start
        client_cpu = client_cpu_seconds() - client_cpu_before
        server_cpu = cpu_seconds(server_pids) - cpu_before
        redis_cpu = cpu_seconds([redis_pid]) - redis_cpu_before if redis_pid else 0.0
        cpu_used = server_cpu + redis_cpu
        loaded = sorted((answers[i] - sent[i]) * 1000 for i in rest if i in answers)
        matched = sum(1 for s in receiver_status.values() if s == 200)
    finally:
        loop.close()

    def pct(values: list[float], p: float) -> float | None:
        if not values:
            return None
        return round(values[min(len(values) - 1, int(p / 100 * len(values)))], 2)

    def ms_per(seconds: float, count: int) -> float | None:
        return round(seconds * 1000 / count, 3) if count else None

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
        # the breakdown: the instances alone, redis-server alone, this client (load generator)
        "instance_cpu_ms_per_checkin": ms_per(server_cpu, checked) if server_pids else None,
        "redis_cpu_ms_per_checkin": ms_per(redis_cpu, checked) if redis_pid else None,
        "client_cpu_ms_per_checkin": ms_per(client_cpu, checked),
        "cpu_bound_checkins_per_second": cpu_bound(n, server_cpu, cpu_used + client_cpu, checked),
        "load_generator": "one thread, epoll, keep-alive, pre-built requests",
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
        result = run_scenario(args, [address_of(u) for u in urls], [p.pid for p in procs],
                              redis_pid if mode != "memory" else None)
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
        "two_vs_one_redis_cpu_bound": ratio("two", "redis", "cpu_bound_checkins_per_second"),
        "one_redis_vs_memory_cpu_bound": ratio("redis", "memory", "cpu_bound_checkins_per_second"),
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
    parser.add_argument("--pairs", type=int, default=5000,
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
