"""Probe-assist routes (their own blueprint): the server opens TCP connections back to the caller.

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
- per source token bucket (IPv4 address / IPv6 /64, ``ProbeAssistConfig.burst``, default
  10 requests; ``.rate`` refill per second, default 0.5) with the app's injected clock
  -> 429 when empty;
- bounded work per request: at most 2 sources x 3 attempts, connect timeout
  50..2000 ms; a source's attempts start ``timeout/4`` apart and stop at the first
  definitive answer (so an answering NAT costs one SYN, and one ICMP, per source);
  concurrent connects are capped per source (``.concurrency_per_source``, default 8: one
  full request of 6 and a simultaneous-open one) -> 429 ``busy``, and in all
  (``.concurrency``, default 32) -> 503 ``busy``, so one address cannot starve the others;
- nothing is sent on a connection but a fixed frame: a magic prefix and the caller's
  token in hex (:func:`stunturn_diag.sansio.assist_frame.assist_frame`), never caller-chosen bytes.

Outcome per attempt: ``connected``, ``rst`` (refused without an ICMP error),
``icmp`` (an ICMP error arrived: seen via ``IP_RECVERR``, which tells a NAT's
ICMP port-unreachable apart from a TCP RST that the kernel reports the same way),
``timeout`` (silently dropped) or ``error``.

The routes are registered by ``create_app`` only when ``ServerConfig.probe_assist.enabled``
(:func:`init_app`). The limits, Host check and plan are pure
(:mod:`stunturn_server.sansio.probe_assist`), the bodies are checked by
:mod:`stunturn_server.sansio.validation`, the sockets live in
:mod:`stunturn_server.probe_assist_runner`.
"""


from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

from flask import Blueprint, current_app, jsonify, request

from . import probe_assist_runner as io
from .http import ApiError, app_context, json_body, observed_address
from .sansio.limits import source_of
from .sansio.probe_assist import AssistLimits, HostCheck, connect_plan, simopen_source, summarise
from .sansio.validation import connect_back_request, simopen_request

STATE_KEY = "stunturn_probe_assist"
bp = Blueprint("probe_assist", __name__)


@dataclass
class AssistState:
    """The app's probe-assist state (``app.extensions["stunturn_probe_assist"]``)."""

    limits: AssistLimits
    hosts: HostCheck
    clock: Callable[[], float]
    stats: dict = field(default_factory=lambda: {"requests": 0, "limited": 0, "busy": 0, "connects": 0,
                                                 "wrong_host": 0})


def init_app(app) -> None:
    """Register the probe-assist routes on ``app`` with their state, from
    ``config.probe_assist`` (a :class:`~stunturn_server.config.ProbeAssistConfig`)."""
    context = app_context(app)
    cfg = context.config
    settings = cfg.probe_assist
    app.extensions[STATE_KEY] = AssistState(
        AssistLimits(burst=settings.burst, rate=settings.rate, per_source=settings.per_source,
                     total=settings.concurrency, new_lock=threading.Lock),
        HostCheck.of((cfg.http_host, cfg.stun_ip, cfg.alt_ip, cfg.http_host6, cfg.alt_ip6),
                     (cfg.http_host, cfg.stun_ip), settings.allowed_hosts),
        context.clock)
    app.register_blueprint(bp)


def _assist_state() -> AssistState:
    return current_app.extensions[STATE_KEY]


_BUSY = "the server is running too many probe connections; retry shortly"


def _admit(parse: Callable[[dict], object]):
    """Common front of both routes: count, check the Host header (403), validate the body
    (400), take the caller's observed IP - the only target ever used - and spend a token of
    its source's bucket (429). Returns (state, parsed body, caller IP, its source, config)."""
    st = _assist_state()
    st.stats["requests"] += 1
    if not st.hosts.allows(request.host):
        st.stats["wrong_host"] += 1
        raise ApiError(403, "host-not-allowed", f"probe-assist answers only requests whose Host names "
                       f"this server, not {request.host[:100]!r}; use the server's address, or start it "
                       "with --allowed-host NAME for the name you use")
    parsed = json_body(parse)
    ip, _ = observed_address()
    source = source_of(ip)
    wait = st.limits.admit(source, st.clock())
    if wait is not None:
        st.stats["limited"] += 1
        raise ApiError(429, "rate-limited", "too many probe-assist requests from this address; "
                       f"retry in {wait:d}s", headers={"Retry-After": str(wait)})
    # a dual-stack server answers an IPv6 caller from its IPv6 addresses (ServerConfig.for_peer)
    return st, parsed, ip, source, app_context().config.for_peer(ip)


def _acquire(st: AssistState, source: str, n: int) -> None:
    """Take ``n`` connect places for ``source``: 429 ``busy`` over its own share, 503 ``busy``
    when the server's are all in use (nothing is taken then)."""
    refused = st.limits.acquire(source, n)
    if refused is None:
        return
    st.stats["busy"] += 1
    if refused == "source":
        raise ApiError(429, "busy", "your address already runs as many probe connections as it may; "
                       "let them finish first", headers={"Retry-After": "1"})
    raise ApiError(503, "busy", _BUSY, headers={"Retry-After": "1"})


@bp.post("/v1/probe/tcp-connect")
def tcp_connect():
    """``POST /v1/probe/tcp-connect``: connect back to the caller's mapped port."""
    st, req, ip, source, cfg = _admit(connect_back_request)
    plan = connect_plan(req.sources, ip, cfg.alt_ip, cfg.stun_ip)
    sources = [(role, src) for role, src in plan if src is not None]
    n = req.attempts * len(sources)
    _acquire(st, source, n)
    timeout = req.timeout_ms / 1000
    try:
        groups = [[lambda sm, src=src: io.connect_once(src, (ip, req.port), timeout, req.token, sm)
                   for _ in range(req.attempts)] for _role, src in sources]
        raw = dict(zip([role for role, _ in sources],
                       io.run_staggered(groups, max(0.02, req.timeout_ms / 4000))))
        st.stats["connects"] += sum(len(r) for r in raw.values())
    finally:
        st.limits.release(source, n)
    return jsonify({"target": {"ip": ip, "port": req.port}, "results": summarise(plan, raw)})


@bp.post("/v1/probe/tcp-simopen")
def tcp_simopen():
    """``POST /v1/probe/tcp-simopen``: reserve a source port on the alternate IP, answer with
    it at once, and ``delay_ms`` later connect from it to the caller's port. The caller
    meanwhile sends a SYN to that source that dies after its NAT (low TTL): the server's
    SYN then crosses it inside the NAT (TCP simultaneous open, RFC 5382 section 4.2)."""
    st, req, ip, source, cfg = _admit(simopen_request)
    src_ip = simopen_source(ip, cfg.alt_ip, cfg.stun_ip)
    if src_ip is None:
        raise ApiError(409, "unavailable", "no source address of your address family")
    _acquire(st, source, 1)
    try:
        s = io.reserve_port(src_ip, ip)  # EMFILE too: the slot is given back
    except OSError as exc:
        st.limits.release(source)
        raise ApiError(503, "busy", f"cannot reserve a source port: {exc.strerror or exc}") from None
    bound = s.getsockname()[:2]
    try:
        io.connect_later(s, (ip, req.port), req.delay_ms / 1000, req.timeout_ms / 1000, req.token,
                         lambda: st.limits.release(source))
    except RuntimeError:  # no thread to be had: nothing was sent, give socket and slot back
        s.close()
        st.limits.release(source)
        raise ApiError(503, "busy", _BUSY) from None
    st.stats["connects"] += 1
    return jsonify({"target": {"ip": ip, "port": req.port}, "source": {"ip": bound[0], "port": bound[1]},
                    "delay_ms": req.delay_ms})
