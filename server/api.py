"""The signaling blueprint: ``/healthz``, ``/v1/info``, ``/v1/initiate`` (long-poll), ``/v1/checkin``.

Thin I/O around the pure :mod:`matching` logic: read and validate the body, read
the client's observed address (``REMOTE_ADDR``/``REMOTE_PORT``; proxy headers are
not trusted), call the matcher with the injected clock, wait in the mailbox.
Per-app state lives in ``app.extensions["stunturn"]`` (a :class:`SignalingState`).
Every failure is an :class:`ApiError`, rendered by the app's one JSON error handler.
"""

from __future__ import annotations

import functools
import ipaddress
import threading
from dataclasses import dataclass, field
from typing import Callable

from flask import Blueprint, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from stunturn_diag import __version__

from . import probe_assist, turn_offer, validation
from .config import ServerConfig, format_address
from .matching import Conflict, Matcher
from .observe import observer
from .store import Mailbox

#: a receiver took the waiter just as the initiator's wait ended: how long to await its match
LATE_DELIVERY_GRACE = 5.0

#: ``watch_hangup(environ, on_hangup) -> stop``: call ``on_hangup`` when the client goes away
HangupWatcher = Callable[[dict, Callable[[], None]], Callable[[], None]]


def no_hangup_watch(environ: dict, on_hangup: Callable[[], None]) -> Callable[[], None]:
    """Default watcher for servers that cannot expose the client socket: watches nothing."""
    return lambda: None


class ApiError(HTTPException):
    """An API failure with a stable ``error`` code and extra JSON fields."""

    def __init__(self, status: int, error: str, message: str, **extra) -> None:
        super().__init__(description=message)
        self.code = status
        self.error = error
        self.extra = extra


@dataclass
class SignalingState:
    """Everything the routes need, created by :func:`stunturn_server.app.create_app`."""

    config: ServerConfig
    matcher: Matcher
    clock: Callable[[], float]
    watch_hangup: HangupWatcher = no_hangup_watch
    stun_endpoints: list[dict] | None = None  # actual endpoints when the STUN service runs
    stun_unavailable: list[str] = field(default_factory=list)
    #: mailboxes of the initiators waiting now (woken by :meth:`shutdown`)
    mailboxes: set[Mailbox] = field(default_factory=set)
    closing: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def admit(self, source: str) -> object | None:
        """Count one more waiting initiator from ``source`` (across every instance sharing the
        store); a token for :meth:`release`, or ``None`` when it is at the cap."""
        return self.matcher.store.admit_source(source, self.config.max_waiters_per_ip)

    def release(self, source: str, token: object) -> None:
        """One waiting initiator from ``source`` is done."""
        self.matcher.store.release_source(source, token)

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


@functools.lru_cache(maxsize=8192)
def source_of(ip: str) -> str:
    """What the per-source waiter cap counts: an IPv4 address, or an IPv6 address's /64
    (one host usually holds a whole /64, RFC 4291 section 2.5.1)."""
    address = ipaddress.ip_address(ip)
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


bp = Blueprint("signaling", __name__)
PROBE_ASSIST = bool(probe_assist.register(bp))


def signaling_state() -> SignalingState:
    return current_app.extensions["stunturn"]


def json_body(parse: Callable[[dict], object] | None = None):
    """The request's JSON object, or what ``parse`` makes of it; 415 for other media types,
    413 before reading an oversized body, 400 when the body or ``parse`` raises
    :class:`validation.BadRequest`."""
    if request.mimetype != "application/json":
        raise ApiError(415, "unsupported-media-type",
                       f"send the body as application/json (got {request.mimetype or 'no content type'!r})")
    limit = signaling_state().config.max_body
    length = request.content_length
    if length is not None and length > limit:
        raise ApiError(413, "payload-too-large", f"body of {length} bytes exceeds the {limit} byte limit")
    body = request.get_data(cache=False)  # werkzeug stops at MAX_CONTENT_LENGTH (chunked bodies)
    if len(body) > limit:
        raise ApiError(413, "payload-too-large", f"body exceeds the {limit} byte limit")
    try:
        obj = validation.parse_json_object(body)
        return parse(obj) if parse else obj
    except validation.BadRequest as exc:
        raise ApiError(400, "bad-request", str(exc)) from None


def observed_address() -> tuple[str, int]:
    """The client's address as this server sees it (no proxy headers trusted)."""
    environ = request.environ
    try:
        ip = canonical_remote(environ.get("REMOTE_ADDR") or "")
    except ValueError:
        raise ApiError(400, "no-client-address", "cannot tell the client's IP address") from None
    try:
        port = int(environ.get("REMOTE_PORT") or 0)
    except ValueError:
        port = 0
    return ip, port


#: canonical_ip of client addresses, parsed once per address rather than once per request
canonical_remote = functools.lru_cache(maxsize=8192)(validation.canonical_ip)


@bp.get("/healthz")
def healthz():
    return jsonify({"ok": True, "waiting": signaling_state().matcher.store.waiting_count()})


def _stun_info(state: SignalingState) -> dict:
    cfg = state.config
    unavailable = list(state.stun_unavailable)
    if state.stun_endpoints is not None:
        endpoints = state.stun_endpoints
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


@bp.get("/v1/info")
def info():
    state = signaling_state()
    return jsonify({"version": __version__, "wait_timeout": state.config.wait_timeout,
                    "stun": _stun_info(state), "probe_assist": PROBE_ASSIST,
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
    token = state.admit(source)
    if token is None:
        limit = state.config.max_waiters_per_ip
        observer().pairing("refused", f"{limit} initiators from there already waiting",
                           from_=format_address(*observed), limit=limit)
        raise ApiError(429, "too-many-waiters", f"{limit} initiators from {source} are already "
                       "waiting, the most this server allows; let some finish first", limit=limit)
    try:
        return _wait_for_receiver(state, req, observed)
    finally:
        state.release(source, token)


def _shutting_down() -> ApiError:
    return ApiError(503, "shutting-down", "the signaling server is stopping; try again once it is back")


def _wait_for_receiver(state: SignalingState, req: validation.InitiateRequest,
                       observed: tuple[str, int]):
    timeout = min(req.timeout or state.config.wait_timeout, state.config.wait_timeout)
    started = state.clock()
    try:
        reg = state.matcher.register(req.rendezvous, req.target_ip, req.protocol, observed=observed,
                                     details=req.details, now=started, timeout=timeout)
    except Conflict as exc:
        observer().pairing("conflict", key=exc.slot.label, target=req.target_ip,
                           from_=format_address(*observed))
        raise ApiError(409, "conflict", "another initiator is already waiting for this access key and "
                       "target IP; wait for it to finish or use another key") from None
    slot = reg.waiter.slot
    obs = observer()
    obs.pairing("waiting", key=slot.label, target=slot.target_ip, from_=format_address(*observed),
                protocol=req.protocol, timeout=timeout)
    hung_up = False

    def on_hangup() -> None:
        nonlocal hung_up
        hung_up = True
        reg.mailbox.interrupt()

    stop_watch = state.watch_hangup(request.environ, on_hangup)
    running = state.track(reg.mailbox, True)
    try:
        match = reg.mailbox.wait(timeout) if running else None
        if match is None and not state.matcher.leave(reg.waiter):
            # a receiver took the entry at the last moment: its match is being delivered
            match = reg.mailbox.wait(LATE_DELIVERY_GRACE)
    finally:
        state.track(reg.mailbox, False)
        stop_watch()
        try:
            state.matcher.leave(reg.waiter)
        finally:
            reg.mailbox.close()
    waited = round(state.clock() - started, 3)
    if match is not None:
        obs.initiator_wait.observe(waited)
        return jsonify(turn_offer.with_credentials(match.initiator_answer()))
    if hung_up:
        obs.pairing("hangup", key=slot.label, target=slot.target_ip, from_=format_address(*observed),
                    waited=waited)
        raise ApiError(408, "client-gone", "the client closed the connection while waiting",
                       waited=waited)
    if state.closing:
        obs.pairing("stopped", "server stopping", key=slot.label, target=slot.target_ip,
                    from_=format_address(*observed), waited=waited)
        raise _shutting_down()
    obs.pairing("timeout", key=slot.label, target=slot.target_ip, from_=format_address(*observed),
                waited=waited)
    raise ApiError(408, "timeout", f"no receiver from {slot.target_ip} checked in with this access key "
                   f"within {timeout:g}s; start the receiver (checkin) while the initiator waits",
                   waited=waited)


@bp.post("/v1/checkin")
def checkin():
    """Immediate: match the initiator waiting for this key and the caller's observed IP, or 404."""
    state = signaling_state()
    req = json_body(validation.checkin_request)
    observed = observed_address()
    started = state.clock()
    match = state.matcher.checkin(req.rendezvous, observed=observed, details=req.details,
                                  now=started)
    obs = observer()
    if match is None:
        label = state.matcher.slot(req.rendezvous, observed[0]).label
        obs.pairing("no-initiator", key=label, from_=format_address(*observed))
        raise ApiError(404, "no-initiator", f"no initiator is waiting for this access key and your IP "
                       f"{observed[0]}; start the initiator first (it must name {observed[0]} as "
                       f"target_ip) and check in while it waits")
    obs.pairing_latency.observe(state.clock() - started)
    obs.matches.inc()
    obs.pairing("matched", key=match.initiator.slot.label, match=match.match_id,
                initiator=format_address(*match.initiator.observed), receiver=format_address(*observed),
                protocol=match.protocol)
    return jsonify(turn_offer.with_credentials(match.receiver_answer()))
