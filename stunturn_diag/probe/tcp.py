"""TCP runner (RFC 5382): kernel sockets only, so it needs no root.

- Mapping and port preservation: STUN Binding over TCP (RFC 8489 section 6.2.2
  framing) from ONE local port (SO_REUSEADDR + SO_REUSEPORT) to the responder's
  primary, alternate-IP, alternate-IP+port and alternate-port TCP endpoints.
- Filtering and the unsolicited-SYN reaction: another local port listens (same
  SO_REUSEPORT trick) while holding a connection to the primary; the server's
  probe-assist route then connects to our mapped port from its other IP and from
  another port of its primary IP and reports connected / rst / icmp / timeout.
- Simultaneous open: the server starts a connect to our (predicted) mapped port
  from its alternate IP; we connect to that source at the same time. The SYNs
  cross in the NAT (RFC 5382 section 7.2 / RFC 793 simultaneous open).
"""

from __future__ import annotations

import os
import secrets
import select
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..errors import SignalingError, StunDecodeError
from ..stun import binding_request, decode, encode, message_length
from .endpoints import Address, Endpoints

SO_REUSEPORT = getattr(socket, "SO_REUSEPORT", 15)


@dataclass
class TcpRun:
    """Raw TCP evidence for the classifier."""

    local_map: Address | None = None
    mapped: dict[str, Address | None] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    filt_local: Address | None = None
    filt_mapped: Address | None = None
    assist: dict[str, dict] | None = None
    assist_error: str | None = None
    accepted: list[dict] = field(default_factory=list)
    simopen: dict | None = None
    skipped: list[dict] = field(default_factory=list)
    elapsed_ms: float = 0.0


def _reuse_socket(local: Address) -> socket.socket:
    fam = socket.AF_INET6 if ":" in local[0] else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, SO_REUSEPORT, 1)
    s.bind(local)
    return s


def _recv_exact(s: socket.socket, n: int, deadline: float) -> bytes:
    data = b""
    while len(data) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("STUN over TCP: no complete answer in time")
        s.settimeout(left)
        chunk = s.recv(n - len(data))
        if not chunk:
            raise ConnectionError("STUN over TCP: the server closed the connection")
        data += chunk
    return data


def stun_tcp(s: socket.socket, dest: Address, timeout: float) -> Address:
    """Connect ``s`` to ``dest`` and return XOR-MAPPED-ADDRESS from one Binding transaction."""
    deadline = time.monotonic() + timeout
    s.settimeout(timeout)
    s.connect(dest)
    req = binding_request(software="stunturn-diag probe")
    s.sendall(encode(req))
    head = _recv_exact(s, 20, deadline)
    body = _recv_exact(s, message_length(head) - 20, deadline)
    msg = decode(head + body)
    if msg.transaction_id != req.transaction_id:
        raise StunDecodeError("STUN over TCP: answer for another transaction")
    if msg.mapped_address is None:
        raise StunDecodeError(f"STUN over TCP: no mapped address (error {msg.error})")
    return msg.mapped_address


def _free_port(local_ip: str) -> Address:
    s = _reuse_socket((local_ip, 0))
    addr = s.getsockname()[:2]
    s.close()
    return addr


def _mapping_test(run: TcpRun, ep: Endpoints, local_ip: str, timeout: float) -> None:
    roles = {"primary": ep.primary, "alt-ip": ep.alt_ip, "alt-both": ep.alt_both, "alt-port": ep.alt_port}
    roles = {r: a for r, a in roles.items() if a is not None}
    local = _free_port(local_ip)
    run.local_map = local
    socks = {r: _reuse_socket(local) for r in roles}

    def one(role: str) -> None:
        try:
            run.mapped[role] = stun_tcp(socks[role], roles[role], timeout)
        except (OSError, StunDecodeError) as exc:
            run.mapped[role] = None
            run.errors[f"map.{role}"] = str(exc) or type(exc).__name__
    try:
        with ThreadPoolExecutor(len(roles)) as pool:
            list(pool.map(one, roles))
    finally:
        for s in socks.values():
            s.close()


def _accept_loop(listener: socket.socket, stop: threading.Event, accepted: list[dict], token: bytes) -> None:
    listener.setblocking(False)
    conns: list[tuple[socket.socket, Address]] = []
    while not stop.is_set():
        r, _, _ = select.select([listener] + [c for c, _ in conns], [], [], 0.02)
        for x in r:
            if x is listener:
                try:
                    c, peer = listener.accept()
                    conns.append((c, peer[:2]))
                except OSError:
                    pass
            else:
                peer = dict(conns)[x]
                try:
                    data = x.recv(64)
                except OSError:
                    data = b""
                accepted.append({"from": {"ip": peer[0], "port": peer[1]}, "token_ok": data == token})
                conns = [(c, p) for c, p in conns if c is not x]
                x.close()
    for c, peer in conns:
        accepted.append({"from": {"ip": peer[0], "port": peer[1]}, "token_ok": False})
        c.close()


def _filtering_test(run: TcpRun, ep: Endpoints, local_ip: str, assist, timeout: float,
                    connect_timeout_ms: int) -> None:
    local = _free_port(local_ip)
    run.filt_local = local
    listener = _reuse_socket(local)
    listener.listen(8)
    conn = _reuse_socket(local)
    stop = threading.Event()
    token = secrets.token_bytes(8)
    t = threading.Thread(target=_accept_loop, args=(listener, stop, run.accepted, token), daemon=True)
    t.start()
    try:
        try:
            run.filt_mapped = stun_tcp(conn, ep.primary, timeout)
        except (OSError, StunDecodeError) as exc:
            run.assist_error = f"no STUN answer over TCP: {exc}"
            return
        try:
            answer = assist({"port": run.filt_mapped[1], "from": ["alt-ip", "alt-port"], "attempts": 2,
                             "timeout_ms": connect_timeout_ms, "token": token.hex()})
            run.assist = {r["from"]: r for r in answer.get("results", [])}
        except SignalingError as exc:
            run.assist_error = str(exc)
        # give accepted connections a moment to deliver their token (bounded)
        end = time.monotonic() + 0.2
        while time.monotonic() < end and len(run.accepted) < sum(
                1 for r in (run.assist or {}).values() for a in r.get("attempts", [])
                if a.get("outcome") == "connected"):
            time.sleep(0.005)
    finally:
        stop.set()
        t.join(1.0)
        listener.close()
        conn.close()


def run_tcp(ep: Endpoints, local_ip: str, *, assist=None, timeout: float = 3.0,
            connect_timeout_ms: int = 400) -> TcpRun:
    """Run the TCP tests concurrently. ``assist(body) -> dict`` posts to the probe-assist route
    (None when the server has none: filtering and the SYN test are skipped, with the reason)."""
    started = time.monotonic()
    run = TcpRun()
    jobs = [lambda: _mapping_test(run, ep, local_ip, timeout)]
    if assist is not None:
        jobs.append(lambda: _filtering_test(run, ep, local_ip, assist, timeout, connect_timeout_ms))
    else:
        run.skipped.append({"test": "tcp.filtering", "reason": "the server offers no probe assist "
                                                              "(only our own server does)"})
    with ThreadPoolExecutor(len(jobs)) as pool:
        for f in [pool.submit(j) for j in jobs]:
            f.result()
    run.elapsed_ms = round((time.monotonic() - started) * 1000, 3)
    return run


def has_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0
