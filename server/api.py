"""The signaling blueprint: ``/healthz``, ``/v1/info``, ``/v1/initiate`` (long-poll), ``/v1/checkin``.

Thin I/O around the pure :mod:`~stunturn_server.sansio.matching` logic: read and
validate the body (:func:`~stunturn_server.http.json_body` with the pure validators of
:mod:`~stunturn_server.sansio.validation`), read the client's observed address
(:func:`~stunturn_server.http.observed_address`), call the matcher with the injected
clock, wait in the mailbox.

No guessing (README "Security model"): failed attempts (initiate 408/409, check-in
404) spend tokens of a :class:`~stunturn_server.sansio.limits.FailureBudget`, per
source and per target IP (the pure ``FailureLimiter`` in this process, or its buckets in
the shared Redis: :mod:`stunturn_server.redis_limits`, chosen by the app factory); an
empty bucket answers 429 ``rate-limited`` with Retry-After. A second initiator for an occupied (rendezvous, target IP) learns of the
conflict (409) only when it comes from the same source as the waiting one; from any
other source it is held exactly like a waiter nobody answers (408 after its
timeout, counted in /healthz alike), so the answer is no oracle for "someone waits".
Per-app state lives in ``app.extensions["stunturn"]`` (a :class:`SignalingState`, made
by :func:`init_app`). Every failure is an :class:`~stunturn_server.http.ApiError`,
rendered by the app's one JSON error handler.
"""

from __future__ import annotations

import logging
import secrets
import threading
from dataclasses import dataclass, field
from typing import Callable

from flask import Blueprint, current_app, jsonify, request

from stunturn_diag import __version__
from stunturn_diag.sansio.netaddr import format_hostport

from . import turn_offer
from .config import ServerConfig
from .http import ApiError, app_context, json_body, observed_address
from .observe import observer
from .sansio import validation
from .sansio.limits import FailureBudget, FailureLimiter, LogThrottle, source_of
from .sansio.matching import Conflict, Mailbox, Matcher

#: a receiver took the waiter just as the initiator's wait ended: how long to await its match
LATE_DELIVERY_GRACE = 5.0

#: ``watch_hangup(environ, on_hangup) -> stop``: call ``on_hangup`` when the client goes away
HangupWatcher = Callable[[dict, Callable[[], None]], Callable[[], None]]


def no_hangup_watch(environ: dict, on_hangup: Callable[[], None]) -> Callable[[], None]:
    """Default watcher for servers that cannot expose the client socket: watches nothing."""
    return lambda: None


@dataclass
class SignalingState:
    """Everything the signaling routes need, made by :func:`init_app`."""

    config: ServerConfig
    matcher: Matcher
    clock: Callable[[], float]
    watch_hangup: HangupWatcher = no_hangup_watch
    stun_endpoints: list[dict] | None = None  # actual endpoints when the STUN service runs
    stun_unavailable: list[str] = field(default_factory=list)
    stun6_endpoints: list[dict] | None = None  # dual stack: the IPv6 STUN service's endpoints
    #: mailboxes of the initiators waiting now (woken by :meth:`shutdown`)
    mailboxes: set[Mailbox] = field(default_factory=set)
    closing: bool = False
    #: failed attempts per source and per target IP (default: in this process, from the config)
    failures: FailureBudget | None = None
    #: initiators held apart (a second one for an occupied slot, from another source): counted
    #: in /healthz like real waiters, so the count is no oracle either
    held_apart: int = 0
    #: initiators waiting on this instance, capped by ``config.max_waiters``
    waiting_total: int = 0
    log_throttle: LogThrottle = field(default_factory=lambda: LogThrottle(lock=threading.Lock()))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.failures is None:
            cfg = self.config
            self.failures = FailureLimiter(source_burst=cfg.failure_burst, source_rate=cfg.failure_rate,
                                           target_burst=cfg.target_failure_burst,
                                           target_rate=cfg.target_failure_rate, lock=threading.Lock())

    def admit(self, source: str) -> object | str:
        """Count one more waiting initiator from ``source`` (across every instance sharing the
        store) and on this instance; a token for :meth:`release`, else the cap that refused:
        ``"source"`` (``max_waiters_per_ip``) or ``"total"`` (``max_waiters``)."""
        with self._lock:
            if self.waiting_total >= self.config.max_waiters:
                return "total"
            self.waiting_total += 1
        token = self.matcher.store.admit_source(source, self.config.max_waiters_per_ip)
        if token is None:
            with self._lock:
                self.waiting_total -= 1
            return "source"
        return token

    def release(self, source: str, token: object) -> None:
        """One waiting initiator from ``source`` is done."""
        with self._lock:
            self.waiting_total = max(0, self.waiting_total - 1)
        self.matcher.store.release_source(source, token)

    def hold_apart(self, delta: int) -> None:
        with self._lock:
            self.held_apart += delta

    def pairing_failure(self, event: str, source: str, message: str = "", **fields) -> None:
        """Count a failed attempt; log it once per event, source and minute, with how many
        it stands for (a guessing run cannot flood the log)."""
        count = self.log_throttle.note(f"{event} {source}", self.clock())
        if count is not None and count > 1:
            fields["like_it_since_last_line"] = count - 1
        observer().pairing(event, message, log_level=logging.INFO if count is not None else None,
                           **fields)

    def track(self, mailbox: Mailbox, waiting: bool) -> bool:
        """Add (``waiting``) or remove a waiting initiator's mailbox; ``True`` while the server runs."""
        with self._lock:
            if waiting:
                self.mailboxes.add(mailbox)
            else:
                self.mailboxes.discard(mailbox)
            return not self.closing

    def shutdown(self) -> None:
        """The server is stopping: wake every waiting initiator (it answers 503) and refuse new ones."""
        with self._lock:
            self.closing = True
            mailboxes = list(self.mailboxes)
        for mailbox in mailboxes:
            mailbox.interrupt()


bp = Blueprint("signaling", __name__)


def init_app(app, matcher: Matcher, *, failures: FailureBudget | None = None,
             watch_hangup: HangupWatcher | None = None,
             stun_endpoints: list[dict] | None = None, stun6_endpoints: list[dict] | None = None,
             stun_unavailable: list[str] | None = None) -> SignalingState:
    """Register the signaling routes on ``app`` with their :class:`SignalingState`."""
    context = app_context(app)
    state = SignalingState(config=context.config, matcher=matcher, clock=context.clock,
                           failures=failures, watch_hangup=watch_hangup or no_hangup_watch,
                           stun_endpoints=stun_endpoints, stun6_endpoints=stun6_endpoints,
                           stun_unavailable=list(stun_unavailable or []))
    app.extensions["stunturn"] = state
    app.register_blueprint(bp)
    return state


def signaling_state() -> SignalingState:
    return current_app.extensions["stunturn"]


@bp.get("/healthz")
def healthz():
    state = signaling_state()
    return jsonify({"ok": True, "waiting": state.matcher.store.waiting_count() + state.held_apart})


def _stun_info(state: SignalingState) -> dict:
    return _stun_family_info(state.config, state.stun_endpoints, state.stun_unavailable)


def _stun_family_info(cfg: ServerConfig, bound: list[dict] | None, unavailable: list[str]) -> dict:
    """The ``stun`` object of ``/v1/info`` for one family's configuration: ``bound`` are
    the endpoints its STUN service bound (None: the configured ones)."""
    unavailable = list(unavailable)
    if bound is not None:
        endpoints = bound
    elif cfg.stun_enabled:
        endpoints = [ep.as_dict() for ep in cfg.stun_endpoints()]
    else:
        endpoints = []
        unavailable.append("the STUN responder is disabled on this server")
    by_role = {ep["role"]: {"ip": ep["ip"], "port": ep["port"]} for ep in endpoints}
    behaviour = all(role in by_role for role in ("primary", "alt-port", "alt-ip", "alt-both"))
    if endpoints and not cfg.alt_ip:
        unavailable.append("no alternate IP configured (serve --alt-ip): RFC 5780 behaviour tests "
                           "(CHANGE-REQUEST, OTHER-ADDRESS) are unavailable; only the mapped address "
                           "can be learned")
    return {
        "enabled": bool(endpoints),
        "primary": by_role.get("primary"),
        "alt_port": by_role.get("alt-port"),
        "alt_ip": by_role.get("alt-ip"),
        "alt_both": by_role.get("alt-both"),
        "transports": ["udp", "tcp"] if endpoints else [],
        "behaviour_tests": behaviour,
        "unavailable": unavailable,
    }


def _families(state: SignalingState) -> dict:
    """``/v1/info`` ``families``: per IP family (``ipv4``, ``ipv6``) where to reach the
    server over it (``http``: ip, port) and its ``stun`` object; null when not served."""
    cfg, port = state.config, int(request.environ.get("SERVER_PORT") or state.config.http_port)
    out: dict = {}
    for name, version in (("ipv4", 4), ("ipv6", 6)):
        fam = cfg.family_config(version)
        if fam is None:
            out[name] = None
            continue
        bound = state.stun_endpoints if fam is cfg else state.stun6_endpoints
        out[name] = {"http": {"ip": fam.http_host, "port": port},
                     "stun": _stun_family_info(fam, bound, state.stun_unavailable if fam is cfg else [])}
    return out


@bp.get("/v1/info")
def info():
    state = signaling_state()
    return jsonify({"version": __version__, "wait_timeout": state.config.wait_timeout,
                    "stun": _stun_info(state), "families": _families(state),
                    "probe_assist": state.config.probe_assist.enabled,
                    "turn": turn_offer.info()})


@bp.post("/v1/initiate")
def initiate():
    """Long-poll: wait until the receiver named by ``target_ip`` checks in, or time out (408)."""
    state = signaling_state()
    req = json_body(validation.initiate_request)
    observed = observed_address()
    if state.closing:
        raise _shutting_down()
    source = source_of(observed[0])
    _check_failures(state, source, req.target_ip, observed)
    token = state.admit(source)
    if token in ("source", "total"):
        per_source = token == "source"
        limit = state.config.max_waiters_per_ip if per_source else state.config.max_waiters
        state.pairing_failure("refused" if per_source else "refused-total", source,
                              f"{limit} initiators {'from there' if per_source else 'in all'} already "
                              "waiting", from_=format_hostport(*observed), limit=limit)
        where = f"from {source}" if per_source else "in all"
        raise ApiError(429, "too-many-waiters", f"{limit} initiators {where} are already "
                       "waiting, the most this server allows; let some finish first", limit=limit,
                       headers={"Retry-After": "1"})
    try:
        return _wait_for_receiver(state, req, observed, source, token)
    finally:
        state.release(source, token)


def _check_failures(state: SignalingState, source: str, target: str, observed: tuple[str, int]) -> None:
    """429 ``rate-limited`` when ``source`` or ``target`` has used up its failed attempts."""
    wait = state.failures.retry_after(source, target, state.clock())
    if wait is None:
        return
    state.pairing_failure("rate-limited", source, from_=format_hostport(*observed), target=target,
                          retry_after=wait)
    raise ApiError(429, "rate-limited", f"too many failed pairing attempts from {source} or for "
                   f"{target}; retry in {wait:g}s (check the access key and the target IP)",
                   retry_after=wait, headers={"Retry-After": str(int(wait))})


def _shutting_down() -> ApiError:
    return ApiError(503, "shutting-down", "the signaling server is stopping; try again once it is back")


def _wait_for_receiver(state: SignalingState, req: validation.InitiateRequest,
                       observed: tuple[str, int], source: str, admission: object):
    timeout = min(req.timeout or state.config.wait_timeout, state.config.wait_timeout)
    started = state.clock()
    waiter = None
    obs = observer()
    try:
        reg = state.matcher.register(req.rendezvous, req.target_ips or req.target_ip, req.protocol,
                                     observed=observed,
                                     details=req.details, now=started, timeout=timeout,
                                     admission=admission)
    except Conflict as exc:
        slot = exc.slot
        occupant = state.matcher.store.occupant(slot, started)
        if occupant is not None and source_of(occupant[0]) == source:  # its own source: tell it
            state.failures.failed(source, req.target_ip, started)
            state.pairing_failure("conflict", source, key=slot.label, target=req.target_ip,
                                  from_=format_hostport(*observed))
            raise ApiError(409, "conflict", "another initiator from your address is already waiting "
                           "for this access key and target IP; wait for it to finish or use another "
                           "key") from None
        # anyone else: held like a waiter nobody answers, in a mailbox of its own (no oracle)
        mailbox = state.matcher.store.open_mailbox(secrets.token_hex(8))
        state.hold_apart(1)
    else:
        waiter, mailbox, slot = reg.waiter, reg.mailbox, reg.waiter.slot
    obs.pairing("waiting", key=slot.label, target=slot.target_ip, from_=format_hostport(*observed),
                protocol=req.protocol, timeout=timeout, log_level=logging.DEBUG)
    hung_up = False

    def on_hangup() -> None:
        nonlocal hung_up
        hung_up = True
        mailbox.interrupt()

    stop_watch = state.watch_hangup(request.environ, on_hangup)
    running = state.track(mailbox, True)
    obs.waiting_changed()
    try:
        match = mailbox.wait(timeout) if running else None
        if match is None and waiter is not None and not state.matcher.leave(waiter):
            # a receiver took the entry at the last moment: its match is being delivered
            match = mailbox.wait(LATE_DELIVERY_GRACE)
    finally:
        state.track(mailbox, False)
        stop_watch()
        try:
            if waiter is not None:
                state.matcher.leave(waiter)
        finally:
            if waiter is None:
                state.hold_apart(-1)
            mailbox.close()
            obs.waiting_changed()
    waited = round(state.clock() - started, 3)
    if match is not None:
        obs.initiator_wait.observe(waited)
        return jsonify(turn_offer.with_credentials(match.initiator_answer()))
    if hung_up:
        obs.pairing("hangup", key=slot.label, target=slot.target_ip, from_=format_hostport(*observed),
                    waited=waited, log_level=logging.DEBUG)
        raise ApiError(408, "client-gone", "the client closed the connection while waiting",
                       waited=waited)
    if state.closing:
        obs.pairing("stopped", "server stopping", key=slot.label, target=slot.target_ip,
                    from_=format_hostport(*observed), waited=waited)
        raise _shutting_down()
    state.failures.failed(source, slot.target_ip, state.clock())
    state.pairing_failure("timeout", source, key=slot.label, target=slot.target_ip,
                          from_=format_hostport(*observed), waited=waited)
    raise ApiError(408, "timeout", f"no receiver from {slot.target_ip} checked in with this access key "
                   f"within {timeout:g}s; start the receiver (checkin) while the initiator waits",
                   waited=waited)


@bp.post("/v1/checkin")
def checkin():
    """Immediate: match the initiator waiting for this key and the caller's observed IP, or 404."""
    state = signaling_state()
    req = json_body(validation.checkin_request)
    observed = observed_address()
    source = source_of(observed[0])
    _check_failures(state, source, observed[0], observed)
    started = state.clock()
    match = state.matcher.checkin(req.rendezvous, observed=observed, details=req.details,
                                  now=started)
    obs = observer()
    if match is None:
        state.failures.failed(source, observed[0], started)
        label = state.matcher.slot(req.rendezvous, observed[0]).label
        state.pairing_failure("no-initiator", source, key=label, from_=format_hostport(*observed))
        raise ApiError(404, "no-initiator", f"no initiator is waiting for this access key and your IP "
                       f"{observed[0]}; start the initiator first (it must name {observed[0]} as "
                       f"target_ip) and check in while it waits")
    obs.pairing_latency.observe(state.clock() - started)
    obs.matches.inc()
    obs.pairing("matched", key=match.initiator.slot.label, match=match.match_id,
                initiator=format_hostport(*match.initiator.observed), receiver=format_hostport(*observed),
                protocol=match.protocol)
    return jsonify(turn_offer.with_credentials(match.receiver_answer()))
