"""Flask app factory: one blueprint, one JSON error handler.

``create_app(config)`` works on its own (threads, Flask's test client); the gevent
runner (:mod:`stunturn_server.runner`) passes a gevent signal factory and a hang-up
watcher so thousands of long-polls wait cooperatively.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Callable

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from stunturn_diag.errors import StoreUnavailable

from . import observe, probe_assist, relay_api, turn_offer
from .api import ApiError, HangupWatcher, SignalingState, bp, no_hangup_watch
from .config import ServerConfig
from .matching import KeyHasher, Matcher
from .store import InMemoryStore, MatchStore, Signal

log = logging.getLogger("stunturn_server.app")


def _error_code(exc: HTTPException) -> str:
    """``"Method Not Allowed"`` -> ``"method-not-allowed"``."""
    return re.sub(r"[^a-z0-9]+", "-", (exc.name or "error").lower()).strip("-")


def handle_error(exc: Exception):
    """The one error handler: every failure becomes ``{"error": code, "message": text}``."""
    if isinstance(exc, StoreUnavailable):
        observe.observer().pairing("store-unavailable", str(exc), route=_endpoint())
        exc = ApiError(503, "store-unavailable", str(exc))
    if isinstance(exc, HTTPException):
        status = exc.code or 500
        body = {"error": getattr(exc, "error", None) or _error_code(exc),
                "message": exc.description or exc.name}
        body.update(getattr(exc, "extra", {}))
        response = jsonify(body)
        response.status_code = status
        for name, value in getattr(exc, "response_headers", {}).items():
            response.headers[name] = value
        if not isinstance(exc, ApiError):
            for name, value in exc.get_headers():
                if name.lower() not in ("content-type", "content-length"):
                    response.headers[name] = value
        return response
    log.exception("unexpected error while handling a request")
    response = jsonify({"error": "internal", "message": "internal server error; see the server log"})
    response.status_code = 500
    return response


def _endpoint() -> str:
    from flask import request

    return request.endpoint or "unrouted"


def make_store(config: ServerConfig, signal_factory: Callable[[], Signal] | None = None) -> MatchStore:
    """The match store ``config`` asks for: Redis with ``redis_url``, else in memory."""
    if config.redis_url:
        from .redis_store import RedisStore, secret_fingerprint

        return RedisStore(config, fingerprint=secret_fingerprint(config.key_secret))
    return InMemoryStore(signal_factory) if signal_factory else InMemoryStore()


def create_app(config: ServerConfig | None = None, *, store: MatchStore | None = None,
               signal_factory: Callable[[], Signal] | None = None,
               watch_hangup: HangupWatcher | None = None,
               clock: Callable[[], float] = time.monotonic,
               key_secret: bytes | None = None,
               stun_endpoints: list[dict] | None = None,
               stun6_endpoints: list[dict] | None = None,
               stun_unavailable: list[str] | None = None) -> Flask:
    """Build the signaling app.

    ``store`` defaults to what ``config`` asks for (:func:`make_store`, started here): a
    :class:`~stunturn_server.redis_store.RedisStore` with ``config.redis_url`` (inside a
    gevent hub: gunicorn ``-k gevent``), else an :class:`InMemoryStore` waking with
    ``signal_factory`` (``threading.Event`` unless given). ``stun_endpoints`` are the endpoints the STUN
    service actually bound (``/v1/info`` falls back to the configured ones), ``stun6_endpoints``
    those of the IPv6 service of a dual-stack server (``config.http_host6``).
    """
    config = config or ServerConfig()
    if store is None:
        # a store made here is started here (gunicorn's gevent worker, other WSGI servers);
        # the gevent runner passes its own and starts it inside its hub
        store = make_store(config, signal_factory)
        store.start()
    app = Flask("stunturn_server")
    # one byte over the limit so a streamed (chunked) body that is too large is seen as such
    app.config["MAX_CONTENT_LENGTH"] = config.max_body + 1
    app.json.sort_keys = True
    app.extensions["stunturn"] = SignalingState(
        config=config,
        matcher=Matcher(store, KeyHasher(key_secret if key_secret is not None else config.key_secret)),
        clock=clock,
        watch_hangup=watch_hangup or no_hangup_watch,
        stun_endpoints=stun_endpoints,
        stun6_endpoints=stun6_endpoints,
        stun_unavailable=list(stun_unavailable or []),
    )
    app.register_blueprint(bp)
    observe.init_app(app, store.waiting_count, serve_metrics=config.metrics_listen is None)
    app.register_blueprint(relay_api.bp)
    probe_assist.init_app(app)
    turn_offer.init_app(app)
    app.register_error_handler(Exception, handle_error)
    return app
