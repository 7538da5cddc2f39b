"""Probe-assist routes: the server opens TCP connections back to the caller on request.

RFC 5780 section 3 has a server never open connections to a client, so TCP
filtering (RFC 5382 section 4.3) and what a NAT does with an unsolicited SYN
(section 4.3: drop / RST / ICMP) cannot be learned with STUN alone. This module
adds ``POST /v1/probe/tcp-connect``: the server connects from another source to the
caller's mapped port and reports what happened; and ``POST /v1/probe/tcp-simopen``:
the server connects, after a short delay, from a port it names at once (for the
caller's simultaneous-open test).

Safety (it makes the server send SYNs on request):

- the target IP is always the request's own source (``REMOTE_ADDR``); only the
  port is chosen by the caller, so it can only ever probe itself;
- only when the request's Host header names this server (:func:`host_allowed`:
  ``ServerConfig.allowed_hosts`` / ``serve --allowed-host``, else our own listen and
  STUN addresses; any IP literal when listening on a wildcard address) -> 403
  ``host-not-allowed``: a DNS-rebinding page in the caller's browser names its own
  host, so it cannot aim the server at the caller's local services;
- per source token bucket (IPv4 address / IPv6 /64, ``config.extra["probe_assist_burst"]``,
  default 10 requests; ``["probe_assist_rate"]`` refill per second, default 0.5) with the
  app's injected clock -> 429 when empty;
- bounded work per request: at most 2 sources x 3 attempts, connect timeout
  50..2000 ms; a source's attempts start ``timeout/4`` apart and stop at the first
  definitive answer (so an answering NAT costs one SYN, and one ICMP, per source);
  concurrent connects are capped per source (``["probe_assist_concurrency_per_source"]``,
  default 8: one full request of 6 and a simultaneous-open one) -> 429 ``busy``, and in
  all (``["probe_assist_concurrency"]``, default 32) -> 503 ``busy``, so one address
  cannot starve the others;
- nothing is sent on a connection but a fixed frame: a magic prefix and the caller's
  token in hex (:func:`stunturn_diag.sansio.assist_frame.assist_frame`), never caller-chosen bytes.

Outcome per attempt: ``connected``, ``rst`` (refused without an ICMP error),
``icmp`` (an ICMP error arrived: seen via ``IP_RECVERR``, which tells a NAT's
ICMP port-unreachable apart from a TCP RST that the kernel reports the same way),
``timeout`` (silently dropped) or ``error``.
"""

from __future__ import annotations

import errno
import ipaddress
import math
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from flask import current_app, jsonify, request

from stunturn_diag.sansio.assist_frame import MAX_TOKEN, assist_frame
from stunturn_diag.errors import ConfigError

from .limits import ConcurrencyLimiter, TokenBucket, source_of
from .validation import BadRequest

MAX_ATTEMPTS = 3
MAX_TIMEOUT_MS = 2000
MIN_TIMEOUT_MS = 50
SOURCES = ("alt-ip", "alt-port")
_IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
_IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
_MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)
_SO_EE_ORIGIN_ICMP, _SO_EE_ORIGIN_ICMP6 = 2, 3


@dataclass
class AssistState:
    bucket: TokenBucket
    slots: ConcurrencyLimiter
    clock: Callable[[], float]
    allowed_hosts: frozenset[str]
    any_ip_literal: bool
    stats: dict = field(default_factory=lambda: {"requests": 0, "limited": 0, "busy": 0, "connects": 0,
                                                 "wrong_host": 0})


def _setting(extra: dict, name: str, default: float) -> float:
    value = extra.get(f"probe_assist_{name}", default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"probe_assist_{name} must be a positive number, got {value!r}")
    return value


def init_app(app) -> None:
    """Create the app's probe-assist state from ``config.extra`` (``probe_assist_burst``,
    ``_rate``, ``_concurrency``); a bad value raises :class:`ConfigError` here, not per request."""
    shared = app.extensions["stunturn"]
    cfg = shared.config
    extra = cfg.extra or {}
    conc = int(_setting(extra, "concurrency", 32))
    if conc < 1:
        raise ConfigError(f"probe_assist_concurrency must be at least 1, got {conc}")
    per_source = min(conc, int(_setting(extra, "concurrency_per_source", 8)))
    if per_source < 1:
        raise ConfigError(f"probe_assist_concurrency_per_source must be at least 1, got {per_source}")
    ours = {_host_key(ip) for ip in (cfg.http_host, cfg.stun_ip, cfg.alt_ip, cfg.http_host6, cfg.alt_ip6)
            if ip}
    if any(ipaddress.ip_address(ip).is_loopback for ip in ours):
        ours.add("localhost")  # names this very machine: no page can rebind it
    app.extensions["stunturn_probe_assist"] = AssistState(
        TokenBucket(float(_setting(extra, "burst", 10)), float(_setting(extra, "rate", 0.5))),
        ConcurrencyLimiter(per_source, conc), shared.clock,
        frozenset(ours | {_host_key(h) for h in cfg.allowed_hosts}),
        any(ipaddress.ip_address(ip).is_unspecified for ip in (cfg.http_host, cfg.stun_ip)))


def _host_key(host: str) -> str:
    """A Host header value (or an address) without its port, lower case, IPs canonical."""
    host = host.strip().lower()
    if host.startswith("["):
        host = host[1:host.find("]")] if "]" in host else host[1:]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    host = host.rstrip(".")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def host_allowed(host: str, allowed: frozenset[str], any_ip_literal: bool) -> bool:
    """Does a request's Host header name this server? (DNS-rebinding guard, pure.)"""
    key = _host_key(host or "")
    if not key:
        return False
    if key in allowed:
        return True
    if any_ip_literal:
        try:
            ipaddress.ip_address(key)
            return True  # a page served from an IP literal is that host's own: no rebinding
        except ValueError:
            return False
    return False


def _assist_state() -> AssistState:
    return current_app.extensions["stunturn_probe_assist"]


def parse_request(body: dict) -> tuple[int, list[str], int, int, bytes]:
    """Validate ``{"port", "from"?, "attempts"?, "timeout_ms"?, "token"?}`` (:class:`BadRequest` if bad)."""
    allowed = {"port", "from", "attempts", "timeout_ms", "token"}
    unknown = set(body) - allowed
    if unknown:
        raise BadRequest(f"unknown fields: {sorted(unknown)}")
    port = body.get("port")
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise BadRequest("port must be an integer 1..65535 (your mapped TCP port)")
    sources = body.get("from", list(SOURCES))
    if (not isinstance(sources, list) or not sources or len(sources) > len(SOURCES)
            or any(s not in SOURCES for s in sources) or len(set(sources)) != len(sources)):
        raise BadRequest(f"from must be a non-empty list of distinct values from {list(SOURCES)}")
    attempts = body.get("attempts", 2)
    if not isinstance(attempts, int) or isinstance(attempts, bool) or not 1 <= attempts <= MAX_ATTEMPTS:
        raise BadRequest(f"attempts must be an integer 1..{MAX_ATTEMPTS}")
    timeout_ms = body.get("timeout_ms", 500)
    if (not isinstance(timeout_ms, (int, float)) or isinstance(timeout_ms, bool)
            or not MIN_TIMEOUT_MS <= timeout_ms <= MAX_TIMEOUT_MS):
        raise BadRequest(f"timeout_ms must be a number {MIN_TIMEOUT_MS}..{MAX_TIMEOUT_MS}")
    token = body.get("token", "")
    if (not isinstance(token, str) or len(token) > 2 * MAX_TOKEN or len(token) % 2
            or any(c not in "0123456789abcdef" for c in token)):
        raise BadRequest(f"token must be an even number (at most {2 * MAX_TOKEN}) of lowercase hex "
                         "characters")
    return port, sources, attempts, int(timeout_ms), bytes.fromhex(token)


def _icmp_error(sock) -> dict | None:
    """An ICMP error queued by IP_RECVERR (struct sock_extended_err), if any."""
    raw = getattr(sock, "_sock", sock)  # gevent wraps the kernel socket; ask it directly
    try:
        _, anc, _, _ = raw.recvmsg(1, 512, _MSG_ERRQUEUE | socket.MSG_DONTWAIT)
    except OSError:
        return None
    for _level, _type, data in anc:
        if len(data) >= 16:
            ee_errno, origin, etype, code = struct.unpack_from("=IBBB", data, 0)
            if origin in (_SO_EE_ORIGIN_ICMP, _SO_EE_ORIGIN_ICMP6):
                offender = None
                if len(data) >= 24 and struct.unpack_from("=H", data, 16)[0] == socket.AF_INET:
                    offender = socket.inet_ntoa(data[20:24])
                return {"type": etype, "code": code, "errno": ee_errno, "from": offender}
    return None


def connect_once(source_ip: str, target: tuple[str, int], timeout: float, token: bytes,
                 socket_module=socket) -> dict:
    """One bounded connect attempt from ``(source_ip, ephemeral)`` to ``target``."""
    fam = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
    s = socket_module.socket(fam, socket.SOCK_STREAM)
    started = time.monotonic()
    result: dict = {"source": None}
    try:
        if fam == socket.AF_INET:
            s.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)
        else:
            s.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)
        s.bind((source_ip, 0))
        result["source"] = {"ip": s.getsockname()[0], "port": s.getsockname()[1]}
        s.settimeout(timeout)
        try:
            s.connect(target)
            result["outcome"] = "connected"
            if token:
                try:
                    s.sendall(assist_frame(token))
                except OSError:
                    pass
        except (socket.timeout, TimeoutError):
            result["outcome"] = "timeout"
        except OSError as exc:
            icmp = _icmp_error(s)
            if icmp is not None:
                result.update(outcome="icmp", icmp=icmp)
            elif exc.errno == errno.ECONNREFUSED:
                result["outcome"] = "rst"
            elif exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
                result["outcome"] = "icmp"
            elif exc.errno == errno.ETIMEDOUT:
                result["outcome"] = "timeout"
            else:
                result.update(outcome="error", error=errno.errorcode.get(exc.errno or 0, str(exc)))
    except OSError as exc:
        result.update(outcome="error", error=errno.errorcode.get(exc.errno or 0, str(exc)))
    finally:
        s.close()
    result["elapsed_ms"] = round((time.monotonic() - started) * 1000, 3)
    return result


def _source_ip(role: str, cfg) -> str | None:
    if role == "alt-ip":
        return cfg.alt_ip
    return cfg.stun_ip  # "alt-port": the primary IP from a port other than the STUN port


#: outcomes that settle a source: further attempts from it would only repeat the answer
_DEFINITIVE = ("connected", "rst", "icmp")


def _run_staggered(groups: list[list[Callable]], stagger: float) -> list[list[dict]]:
    """Run each group's connect attempts one ``stagger`` apart, the groups concurrently;
    a group stops starting attempts once one of them is definitive (connected / RST /
    ICMP). So a lost SYN is covered by the next attempt, while a NAT that answers costs
    one SYN per source: routers rate-limit ICMP errors per destination (Linux: a burst
    of 6, then 1/s), and three answered SYNs per run would starve a quick re-run.
    Greenlets, with gevent's sockets: cooperative under the gevent server, a plain
    (hub-per-thread) socket elsewhere."""
    import gevent
    from gevent import socket as gsocket

    def settled(started) -> bool:
        return any(g.ready() and g.successful() and (g.value or {}).get("outcome") in _DEFINITIVE
                   for g in started)

    def run_group(jobs: list[Callable]) -> list:
        started: list = []
        for k, job in enumerate(jobs):
            if k:
                end = time.monotonic() + stagger
                while time.monotonic() < end and not settled(started):  # bounded by stagger
                    gevent.sleep(min(0.005, max(0.0, end - time.monotonic())))
                if settled(started):
                    break
            started.append(gevent.spawn(job, gsocket))
        gevent.joinall(started)
        return [g.value if g.successful() else {"outcome": "error", "error": "internal"} for g in started]
    runners = [gevent.spawn(run_group, jobs) for jobs in groups]
    gevent.joinall(runners)
    return [r.value if r.successful() else [{"outcome": "error", "error": "internal"}] for r in runners]


_BUSY = "the server is running too many probe connections; retry shortly"
_RANK = {"connected": 0, "rst": 1, "icmp": 2, "timeout": 3, "error": 4, "unavailable": 5}


def _admit(parse: Callable[[dict], tuple]):
    """Common front of both routes: count, check the Host header (403), validate the body
    (400), take the caller's observed IP - the only target ever used - and spend a token of
    its source's bucket (429). Returns (state, parsed body, caller IP, its source, config)."""
    from .api import ApiError, json_body, observed_address, signaling_state  # late: api imports this module

    st = _assist_state()
    st.stats["requests"] += 1
    if not host_allowed(request.host, st.allowed_hosts, st.any_ip_literal):
        st.stats["wrong_host"] += 1
        raise ApiError(403, "host-not-allowed", f"probe-assist answers only requests whose Host names "
                       f"this server, not {request.host[:100]!r}; use the server's address, or start it "
                       "with --allowed-host NAME for the name you use")
    parsed = json_body(parse)
    ip, _ = observed_address()
    source = source_of(ip)
    wait = st.bucket.retry_after(source, st.clock())
    if not st.bucket.take(source, st.clock()):
        st.stats["limited"] += 1
        raise ApiError(429, "rate-limited", "too many probe-assist requests from this address; "
                       f"retry in {max(1, math.ceil(wait)):d}s",
                       headers={"Retry-After": str(max(1, math.ceil(wait)))})
    # a dual-stack server answers an IPv6 caller from its IPv6 addresses (ServerConfig.for_peer)
    return st, parsed, ip, source, signaling_state().config.for_peer(ip)


def _acquire(st: AssistState, source: str, n: int) -> None:
    """Take ``n`` connect places for ``source``: 429 ``busy`` over its own share, 503 ``busy``
    when the server's are all in use (nothing is taken then)."""
    from .api import ApiError

    refused = st.slots.acquire(source, n)
    if refused is None:
        return
    st.stats["busy"] += 1
    if refused == "source":
        raise ApiError(429, "busy", "your address already runs as many probe connections as it may; "
                       "let them finish first", headers={"Retry-After": "1"})
    raise ApiError(503, "busy", _BUSY, headers={"Retry-After": "1"})


def tcp_connect():
    """``POST /v1/probe/tcp-connect``: connect back to the caller's mapped port."""
    st, (port, sources, attempts, timeout_ms, token), ip, source, cfg = _admit(parse_request)
    plan = []
    for role in sources:
        src = _source_ip(role, cfg)
        if src is not None and ipaddress.ip_address(src).version != ipaddress.ip_address(ip).version:
            src = None
        plan.append((role, src))
    n = sum(attempts for _, src in plan if src is not None)
    _acquire(st, source, n)
    try:
        groups, roles = [], []
        for role, src in plan:
            if src is None:
                continue
            groups.append([lambda sm, src=src: connect_once(src, (ip, port), timeout_ms / 1000, token, sm)
                           for _ in range(attempts)])
            roles.append(role)
        raw = dict(zip(roles, _run_staggered(groups, max(0.02, timeout_ms / 4000))))
        st.stats["connects"] += sum(len(r) for r in raw.values())
    finally:
        st.slots.release(source, n)
    results = []
    for role, src in plan:
        if src is None:
            results.append({"from": role, "outcome": "unavailable", "attempts": [],
                            "reason": "the server has no alternate IP" if role == "alt-ip"
                            else "address family mismatch"})
            continue
        tries = raw[role]
        best = min(tries, key=lambda r: _RANK.get(r.get("outcome"), 9))
        results.append({"from": role, "outcome": best.get("outcome"), "attempts": tries})
    return jsonify({"target": {"ip": ip, "port": port}, "results": results})


def parse_simopen(body: dict) -> tuple[int, int, int, bytes]:
    """Validate ``{"port", "delay_ms"?, "timeout_ms"?, "token"?}`` (:class:`BadRequest` if bad)."""
    unknown = set(body) - {"port", "delay_ms", "timeout_ms", "token"}
    if unknown:
        raise BadRequest(f"unknown fields: {sorted(unknown)}")
    port, _, _, timeout_ms, token = parse_request({k: v for k, v in body.items() if k != "delay_ms"})
    delay = body.get("delay_ms", 100)
    if not isinstance(delay, (int, float)) or isinstance(delay, bool) or not 0 <= delay <= 1000:
        raise BadRequest("delay_ms must be a number 0..1000")
    return port, int(delay), timeout_ms, token


def tcp_simopen():
    """``POST /v1/probe/tcp-simopen``: reserve a source port on the alternate IP, answer with
    it at once, and ``delay_ms`` later connect from it to the caller's port. The caller
    meanwhile sends a SYN to that source that dies after its NAT (low TTL): the server's
    SYN then crosses it inside the NAT (TCP simultaneous open, RFC 5382 section 4.2)."""
    from .api import ApiError

    st, (port, delay_ms, timeout_ms, token), ip, source, cfg = _admit(parse_simopen)
    src_ip = cfg.alt_ip or cfg.stun_ip
    if ipaddress.ip_address(src_ip).version != ipaddress.ip_address(ip).version:
        raise ApiError(409, "unavailable", "no source address of your address family")
    _acquire(st, source, 1)
    fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
    s: socket.socket | None = None
    try:
        s = socket.socket(fam, socket.SOCK_STREAM)  # EMFILE too: the slot is given back
        s.bind((src_ip, 0))
        source = s.getsockname()[:2]
    except OSError as exc:
        if s is not None:
            s.close()
        st.slots.release(source)
        raise ApiError(503, "busy", f"cannot reserve a source port: {exc.strerror or exc}") from None

    def later() -> None:  # an OS thread: blocking calls here never stall the gevent hub
        try:
            time.sleep(delay_ms / 1000)
            s.settimeout(timeout_ms / 1000)
            s.connect((ip, port))
            if token:
                s.sendall(assist_frame(token))
        except OSError:
            pass
        finally:
            s.close()
            st.slots.release(source)
    try:
        threading.Thread(target=later, name="probe-simopen", daemon=True).start()
    except RuntimeError:  # no thread to be had: nothing was sent, give socket and slot back
        s.close()
        st.slots.release(source)
        raise ApiError(503, "busy", _BUSY) from None
    st.stats["connects"] += 1
    return jsonify({"target": {"ip": ip, "port": port}, "source": {"ip": source[0], "port": source[1]},
                    "delay_ms": delay_ms})


def register(bp) -> bool:
    """Add the probe-assist routes to ``bp``; returns True (reported by ``/v1/info``)."""
    bp.add_url_rule("/v1/probe/tcp-connect", "probe_tcp_connect", tcp_connect, methods=["POST"])
    bp.add_url_rule("/v1/probe/tcp-simopen", "probe_tcp_simopen", tcp_simopen, methods=["POST"])
    return True
