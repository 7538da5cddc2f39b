"""Flask app factory: the signaling blueprint, the relay exchange, ``/metrics``, probe-assist
when configured, one JSON error handler.

``create_app(config)`` works on its own (threads, Flask's test client); the gevent
runner (:mod:`stunturn_server.runner`) passes a gevent signal factory and a hang-up
watcher so thousands of long-polls wait cooperatively.

Layers (``tests/test_server_layers.py`` holds them): this factory wires the route modules
(:mod:`.api`, :mod:`.relay_api`, :mod:`.probe_assist`, :mod:`.observe`, :mod:`.turn_offer`),
which share :mod:`.http` and call the pure core in :mod:`.sansio`; no route module imports
another's routes.
"""

from __future__ import annotations

import secrets
import time
from typing import Callable

from flask import Flask

from . import api, observe, probe_assist, relay_api, turn_offer
from .api import HangupWatcher
from .config import ServerConfig
from .http import CONTEXT_KEY, AppContext, handle_error
from .sansio.limits import FailureBudget
from .sansio.matching import KeyHasher, Matcher, MatchStore
from .store import InMemoryStore, Signal


def make_store(config: ServerConfig, signal_factory: Callable[[], Signal] | None = None) -> MatchStore:
    """The match store ``config`` asks for: Redis with ``redis_url``, else in memory."""
    if config.redis_url:
        from .redis_store import RedisStore, secret_fingerprint

        return RedisStore(config, fingerprint=secret_fingerprint(config.key_secret))
    return InMemoryStore(signal_factory) if signal_factory else InMemoryStore()


def failure_limiter(config: ServerConfig, store: MatchStore) -> FailureBudget | None:
    """The failed-attempt limiter (README "Security model"): with a Redis store its buckets
    are in that Redis, one budget for every instance sharing it
    (:class:`~stunturn_server.redis_limits.RedisFailureLimiter`); else None, and the
    signaling state builds the in-process one from the same config."""
    if config.redis_url:
        from .redis_store import RedisStore

        if isinstance(store, RedisStore):
            from .redis_limits import RedisFailureLimiter

            return RedisFailureLimiter(store, secret=config.key_secret,
                                       source_burst=config.failure_burst,
                                       source_rate=config.failure_rate,
                                       target_burst=config.target_failure_burst,
                                       target_rate=config.target_failure_rate)
    return None


def key_hasher(secret: bytes | None) -> KeyHasher:
    """The rendezvous hasher under ``secret``, or under a random one of this process
    (one instance only: instances sharing a store must share the secret)."""
    return KeyHasher(secret if secret is not None else secrets.token_bytes(32))


def new_id() -> str:
    """A waiter or match id: 64 random bits in hex."""
    return secrets.token_hex(8)


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
    those of the IPv6 service of a dual-stack server (``config.http_host6``). The probe-assist
    routes are there when ``config.probe_assist.enabled`` (the default).
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
    app.extensions[CONTEXT_KEY] = AppContext(config, store, clock)
    matcher = Matcher(store, key_hasher(key_secret if key_secret is not None else config.key_secret),
                      new_id=new_id)
    api.init_app(app, matcher, failures=failure_limiter(config, store), watch_hangup=watch_hangup,
                 stun_endpoints=stun_endpoints,
                 stun6_endpoints=stun6_endpoints, stun_unavailable=stun_unavailable)
    observe.init_app(app, store.waiting_count, serve_metrics=config.metrics_listen is None)
    app.register_blueprint(relay_api.bp)
    if config.probe_assist.enabled:
        probe_assist.init_app(app)
    turn_offer.init_app(app)
    app.register_error_handler(Exception, handle_error)
    return app
