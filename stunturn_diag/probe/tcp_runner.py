"""TCP runner (RFC 5382): kernel sockets only, so it needs no root.

- Mapping and port preservation: STUN Binding over TCP (RFC 8489 section 6.2.2
  framing) from ONE local port (SO_REUSEADDR + SO_REUSEPORT) to the responder's
  primary, alternate-IP, alternate-IP+port and alternate-port TCP endpoints.
- Filtering and the unsolicited-SYN reaction: another local port listens (same
  SO_REUSEPORT trick) while holding a connection to the primary; the server's
  probe-assist route then connects to our mapped port from its other IP and from
  another port of its primary IP and reports connected / rst / icmp / timeout.
- Simultaneous open: see :mod:`.simopen_runner` (our SYN crafted with Scapy, the server's
  watched by a BPF-filtered raw socket; root).

The orchestrator: the socket helpers it shares with the simultaneous-open runner are in
:mod:`.tcp_sockets`; the evidence it fills in is :class:`TcpEvidence`.
"""

from __future__ import annotations

import secrets
import select
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from stunturn_diag.sansio.assist_frame import assist_frame
from ..errors import SignalingError, StunDecodeError
from stunturn_diag.probe.simopen_runner import simopen_test
from stunturn_diag.sansio.synwait import syn_rto
from stunturn_diag.probe.tcp_sockets import (free_port, has_raw_socket_capability, reuse_socket, stun_tcp_from,
                                             SAME_PORT_SYNS)
from stunturn_diag.sansio.netaddr import Address
from stunturn_diag.sansio.probe.endpoints import Endpoints
from stunturn_diag.sansio.probe.evidence import TcpEvidence
from stunturn_diag.sansio.probe.plan import PUNCH_SKIP_REASON

class Held:
    """The runner's side of :class:`TcpEvidence`: the first allocation connection, kept open
    (it holds the primary mapping) until the mapping test has run. ``close()`` is idempotent."""

    def __init__(self, sock: socket.socket | None = None) -> None:
        self.sock = sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


#: seconds for one STUN-over-TCP exchange: covers SYN retransmissions at 1, 3 and 7 s
#: (all of 4 SYN round trips lost: ~0.1 % at 10 % loss each way)
TCP_TIMEOUT = 7.5
#: the first exchange decides whether TCP reaches the server at all: two retransmissions
FIRST_TIMEOUT = 3.5
#: the server's connect-back timeout (ms): 8 RTT, at least the floor the UDP engine gives
#: any silence (its ``final_wait_min``), for the full probe and the punch profile alike.
#: Our SYN-ACK comes from the kernel (the listener shares the mapped port), so our own
#: process's scheduling never delays it; 8 RTT covers the path. A filtering NAT that drops
#: the SYNs costs 1.5 x 100 ms (three attempts a quarter timeout apart): 150 ms, where a
#: 250 ms floor cost 375 ms (IPv6 behind a dropping stateful firewall, IPv4 drop NATs)
CONNECT_FLOOR_MS = 100
PUNCH_CONNECT_FLOOR_MS = CONNECT_FLOOR_MS
#: the probe-assist route's bounds (server/probe_assist.py)
CONNECT_MAX_MS = 2000


def connect_back_ms(rtt: float | None, floor_ms: int = CONNECT_FLOOR_MS) -> int:
    """How long the server waits for each connect back to our mapped port: 8 round trips
    (``rtt`` in seconds, 50 ms when unknown), at least ``floor_ms``, at most 2 s. Pure."""
    return int(min(CONNECT_MAX_MS, max(floor_ms, 8 * (rtt or 0.05) * 1000)))


def alloc_test(run: TcpEvidence, ep: Endpoints, local_ip: str, timeout: float = TCP_TIMEOUT,
               count: int = 5, rtt_hint: float | None = None) -> Held:
    """Fresh mappings one after another (RFC 4787 section 4.2.1 applied to TCP): STUN over TCP
    from ``count`` fresh local ports to the primary. The first socket's port is reused by
    the mapping test, and its connection is kept open until then: the returned
    :class:`Held`, for :func:`run_tcp_rest` (``held=``) to close. ``rtt_hint``: a round trip
    to the server measured before (the signaling client's connect), for the first SYN's
    resend wait."""
    started = time.monotonic()
    held = Held()
    for i in range(count):
        local = free_port(local_ip)
        t = time.monotonic()
        s = None
        try:
            x = stun_tcp_from(local, ep.primary, min(timeout, FIRST_TIMEOUT) if i == 0 else timeout,
                              syn_rto(run.connect_rtt or rtt_hint), fresh_port_after=SAME_PORT_SYNS)
            s, mapped = x.sock, x.mapped
            local = s.getsockname()[:2]  # a fresh flow all the same, on another port after a lost SYN-ACK
            run.count(x)
            if not x.resends:  # connect + one exchange
                run.rtts.append(time.monotonic() - t)
        except (OSError, StunDecodeError) as exc:
            mapped = None
            run.errors[f"alloc.{i}"] = str(exc) or type(exc).__name__
        run.alloc.append((local, mapped))
        if i == 0:
            run.local_map, run.mapped["primary"] = local, mapped
            held.sock = s
            if mapped is None:  # TCP does not reach the server: do not wait five times
                break
        elif s is not None:
            s.close()
    run.phase_ms["allocation"] = round((time.monotonic() - started) * 1000, 3)
    run.elapsed_ms += run.phase_ms["allocation"]
    return held


def mapping_test(run: TcpEvidence, ep: Endpoints, timeout: float, held: Held | None = None) -> None:
    """RFC 5382 section 4.1: from the first allocation socket's local port (SO_REUSEPORT) to the
    alternate endpoints, concurrently, after the primary mapping exists (``held``: the
    primary connection, closed afterwards)."""
    roles = {"alt-ip": ep.alt_ip, "alt-both": ep.alt_both, "alt-port": ep.alt_port}
    roles = {r: a for r, a in roles.items() if a is not None}
    socks: dict[str, socket.socket] = {}
    rto = syn_rto(run.connect_rtt)

    def one(role: str) -> None:
        try:
            x = stun_tcp_from(run.local_map, roles[role], timeout, rto)
            socks[role], run.mapped[role] = x.sock, x.mapped
            run.count(x)
        except (OSError, StunDecodeError) as exc:
            run.mapped[role] = None
            run.errors[f"map.{role}"] = str(exc) or type(exc).__name__
    try:
        if run.local_map is None or run.mapped.get("primary") is None or not roles:
            return
        with ThreadPoolExecutor(len(roles)) as pool:
            list(pool.map(one, roles))
    finally:
        for s in socks.values():
            s.close()
        if held is not None:  # the primary connection held the mapping until now
            held.close()


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
                accepted.append({"from": {"ip": peer[0], "port": peer[1]}, "token_ok": data == assist_frame(token)})
                conns = [(c, p) for c, p in conns if c is not x]
                x.close()
    for c, peer in conns:
        accepted.append({"from": {"ip": peer[0], "port": peer[1]}, "token_ok": False})
        c.close()


_OUTCOME_RANK = {"connected": 0, "rst": 1, "icmp": 2, "timeout": 3, "error": 4, "unavailable": 5}


def _filtering_test(run: TcpEvidence, ep: Endpoints, local_ip: str, assist, timeout: float,
                    connect_timeout_ms: int, loss_seen=None) -> None:
    # our mapped port first (a lost SYN-ACK moves it to a fresh port), then the listener
    # beside it on that port (SO_REUSEPORT), before the server is asked to connect back
    try:
        x = stun_tcp_from(free_port(local_ip), ep.primary, timeout, syn_rto(run.connect_rtt),
                          fresh_port_after=SAME_PORT_SYNS)
    except (OSError, StunDecodeError) as exc:
        run.assist_error = f"no STUN answer over TCP: {exc}"
        return
    conn, run.filt_mapped = x.sock, x.mapped
    run.count(x)
    local = run.filt_local = conn.getsockname()[:2]
    listener = None
    try:
        listener = reuse_socket(local)
        listener.listen(8)
    except OSError as exc:
        if listener is not None:
            listener.close()
        conn.close()
        run.assist_error = f"cannot listen on our local port {local[1]}: {exc.strerror or exc}"
        return
    stop = threading.Event()
    token = secrets.token_bytes(8)
    t = threading.Thread(target=_accept_loop, args=(listener, stop, run.accepted, token), daemon=True)
    t.start()
    try:
        roles = ["alt-ip", "alt-port"]
        results: dict[str, dict] = {}
        for round_ in range(2):
            try:
                answer = assist({"port": run.filt_mapped[1], "from": roles, "attempts": 3,
                                 "timeout_ms": min(CONNECT_MAX_MS, connect_timeout_ms * (round_ + 1)),
                                 "token": token.hex()})
            except SignalingError as exc:
                run.assist_error = str(exc)
                break
            for r in answer.get("results", []):
                prev = results.get(r["from"])
                if prev is not None:  # merge rounds: the best outcome wins, all attempts kept
                    r = dict(r, attempts=prev.get("attempts", []) + r.get("attempts", []),
                             outcome=min((prev["outcome"], r["outcome"]), key=_OUTCOME_RANK.get))
                results[r["from"]] = r
            # silence (timeout) is only a verdict when the path is loss-free; otherwise ask again
            roles = [n for n, r in results.items() if r.get("outcome") == "timeout"]
            if not roles or not (loss_seen and loss_seen()):
                break
        run.assist = results or None
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


def run_tcp_rest(run: TcpEvidence, ep: Endpoints, local_ip: str, *, assist=None, simopen=None,
                 ttl_for_simopen=None, timeout: float = TCP_TIMEOUT, loss_seen=None,
                 punch_profile: bool = False, held: Held | None = None) -> None:
    """After :func:`alloc_test`: mapping, filtering and simultaneous open, concurrently
    (``held``: what :func:`alloc_test` returned).

    ``assist(body)`` / ``simopen(body)`` post to the probe-assist routes (None when the
    server has none); ``ttl_for_simopen()`` returns the TTL that passes our NAT but not
    the next router (None when unknown) and may block until the TTL walk is done.
    ``punch_profile``: mapping and filtering only (what the punch decision reads), with
    the connect-back timeout's lower floor (:data:`PUNCH_CONNECT_FLOOR_MS`)."""
    started = time.monotonic()
    rtt = run.rtt or 0.05
    connect_ms = connect_back_ms(rtt, PUNCH_CONNECT_FLOOR_MS if punch_profile
                                    else CONNECT_FLOOR_MS)

    def any_loss() -> bool:  # TCP's own retransmissions, or the UDP engine's
        return run.loss_seen or bool(loss_seen and loss_seen())

    jobs = [("mapping", lambda: mapping_test(run, ep, timeout, held))]
    if assist is not None:
        jobs.append(("filtering", lambda: _filtering_test(run, ep, local_ip, assist, timeout, connect_ms,
                                                          any_loss)))
    else:
        run.skipped.append({"test": "tcp.filtering", "reason": "the server offers no probe assist "
                                                              "(only our own server does)"})
    if punch_profile:
        run.skipped.append({"test": "tcp.simultaneous_open", "reason": PUNCH_SKIP_REASON})
    elif simopen is None:
        run.skipped.append({"test": "tcp.simultaneous_open", "reason": "the server offers no probe assist"})
    elif not has_raw_socket_capability():
        run.skipped.append({"test": "tcp.simultaneous_open",
                            "reason": "needs root (raw sockets, CAP_NET_RAW): the low-TTL SYN is sent on a raw socket (the "
                                      "kernel aborts a connect when the ICMP time-exceeded comes back) and "
                                      "a raw socket watches for the server's SYN"})
    else:
        jobs.append(("simultaneous_open",
                     lambda: simopen_test(run, ep, local_ip, simopen, ttl_for_simopen, timeout, rtt,
                                           any_loss)))

    def timed(name, job):
        def go():
            t = time.monotonic()
            try:
                job()
            finally:
                run.phase_ms[name] = round((time.monotonic() - t) * 1000, 3)
        return go
    with ThreadPoolExecutor(len(jobs)) as pool:
        for f in [pool.submit(timed(n, j)) for n, j in jobs]:
            f.result()
    run.elapsed_ms += round((time.monotonic() - started) * 1000, 3)
