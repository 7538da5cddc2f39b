"""Observability: one log line and one counter per pairing event, and ``GET /metrics``.

:class:`Observer` owns a per-app Prometheus registry (several apps in one process do
not collide). Routes report pairing events through :meth:`Observer.pairing`, which
logs one line (text, or a JSON object with ``--log-format json``; see
:mod:`stunturn_server.logs`) and counts it; the key is never logged, only the slot's
short keyed label. ``/metrics`` is its own blueprint (:data:`metrics_bp`), served on
the main port or, with ``ServerConfig.metrics_listen``, by a separate listener.

Several worker processes (``gunicorn -k gevent -w N``, see
:mod:`stunturn_server.gunicorn_conf`): with ``PROMETHEUS_MULTIPROC_DIR`` set before
prometheus_client is imported, every worker writes its figures to its own files there
and a scrape of any worker renders all of them summed (prometheus_client's multiprocess
mode); ``stunturn_waiters`` is then a ``livesum`` gauge that each worker sets whenever its
count changes (:meth:`Observer.waiting_changed`), and the files of a dead worker's live
gauges are removed by the ``child_exit`` hook. Otherwise (``serve``: one process) the
figures are the process's own.
"""

from __future__ import annotations

import logging
from typing import Callable

from flask import Blueprint, Response, current_app, request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger("stunturn_server.pairing")

#: pairing event -> (counter attribute, label value or None)
_COUNTED = {
    "waiting": ("initiates", None),
    "matched": ("checkins", "matched"),
    "no-initiator": ("checkins", "no-initiator"),
    "timeout": ("timeouts", None),
    "hangup": ("hangups", None),
    "conflict": ("conflicts", None),
    "refused": ("limits", "waiters-per-source"),
    "refused-total": ("limits", "waiters-total"),
    "rate-limited": ("limits", "failed-attempts"),
    "stopped": ("stopped", None),
    "store-unavailable": ("store_errors", None),
}

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_WAIT_BUCKETS = (0.01, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600)


class _Callbacks:
    """A collector reading figures that live elsewhere (STUN service counters, refusals)."""

    def __init__(self) -> None:
        self.stun_stats: Callable[[], dict] | None = None
        self.connections_refused: Callable[[], int] | None = None

    def describe(self):
        return []

    def collect(self):
        stats = self.stun_stats() if self.stun_stats else None
        if stats is not None:
            requests = CounterMetricFamily("stunturn_stun_requests", "STUN requests received",
                                           labels=["kind"])
            requests.add_metric(["all"], stats.get("requests", 0))
            requests.add_metric(["classic"], stats.get("classic_requests", 0))
            yield requests
            drops = CounterMetricFamily("stunturn_stun_drops", "STUN datagrams or messages dropped, "
                                        "by reason", labels=["reason"])
            for name, value in sorted(stats.items()):
                if name.startswith("dropped_"):
                    drops.add_metric([name[len("dropped_"):]], value)
            yield drops
            other = CounterMetricFamily("stunturn_stun_events", "other STUN service counters",
                                        labels=["event"])
            for name, value in sorted(stats.items()):
                if not name.startswith("dropped_") and name not in ("requests", "classic_requests",
                                                                    "tcp_open"):
                    other.add_metric([name], value)
            yield other
            yield GaugeMetricFamily("stunturn_stun_tcp_open", "STUN TCP connections open now",
                                    value=stats.get("tcp_open", 0))
        if self.connections_refused is not None:
            refused = CounterMetricFamily("stunturn_limits_hit_connections", "connections refused "
                                          "over max_connections_per_ip (429 too-many-connections)")
            refused.add_metric([], self.connections_refused())
            yield refused


def multiprocess() -> bool:
    """Whether prometheus_client keeps its figures in ``PROMETHEUS_MULTIPROC_DIR`` files
    (decided once, when it was imported)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


class Observer:
    """Counters, histograms and the pairing-event log of one app."""

    def __init__(self, waiting: Callable[[], int]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.multiprocess = multiprocess()
        self._waiting = waiting
        self.waiters = Gauge("stunturn_waiters", "initiators waiting on this instance now (several "
                             "workers: on all of them)", registry=r, multiprocess_mode="livesum")
        if not self.multiprocess:
            self.waiters.set_function(waiting)
        self.initiates = Counter("stunturn_initiates", "initiators that started waiting", registry=r)
        self.checkins = Counter("stunturn_checkins", "receiver check-ins by result", ["result"], registry=r)
        self.matches = Counter("stunturn_matches", "pairs matched (counted where the receiver checked in)",
                               registry=r)
        self.timeouts = Counter("stunturn_timeouts", "initiators answered 408 timeout", registry=r)
        self.hangups = Counter("stunturn_hangups", "initiators that hung up while waiting", registry=r)
        self.conflicts = Counter("stunturn_conflicts", "initiators refused 409 conflict", registry=r)
        self.stopped = Counter("stunturn_stopped", "initiators answered 503 while the server stopped",
                               registry=r)
        self.store_errors = Counter("stunturn_store_unavailable", "requests answered 503 "
                                    "store-unavailable (Redis unreachable or too slow)", registry=r)
        self.limits = Counter("stunturn_limits_hit", "requests refused by a limit", ["limit"], registry=r)
        self.pairing_latency = Histogram("stunturn_pairing_latency_seconds", "server time of a matching "
                                         "check-in: from its arrival until the match is delivered to the "
                                         "initiator's mailbox", buckets=_LATENCY_BUCKETS, registry=r)
        self.initiator_wait = Histogram("stunturn_initiator_wait_seconds", "how long matched initiators "
                                        "waited for their receiver", buckets=_WAIT_BUCKETS, registry=r)
        self.responses = Counter("stunturn_http_responses", "HTTP answers by route and status "
                                 "(probe-assist actions are the probe_assist.* routes)", ["route", "status"],
                                 registry=r)
        self.callbacks = _Callbacks()
        r.register(self.callbacks)

    def pairing(self, event: str, message: str = "", *, log_level: int | None = logging.INFO,
                **fields) -> None:
        """Count ``event`` and log it at ``log_level`` (``None``: count only):
        ``pair <event> k=v ...`` (+ ``message``), or as JSON fields (``event`` plus
        ``fields``) with the JSON formatter. Never pass the key."""
        counter, label = _COUNTED.get(event, (None, None))
        if counter is not None:
            metric = getattr(self, counter)
            (metric.labels(label) if label else metric).inc()
        if log_level is not None and log.isEnabledFor(log_level):
            text = " ".join(f"{name.rstrip('_')}={value}" for name, value in fields.items())
            log.log(log_level, "pair %s %s%s", event, text, f": {message}" if message else "",
                     extra={"event": f"pair-{event}", "fields": {k.rstrip("_"): v for k, v in fields.items()}})

    def waiting_changed(self) -> None:
        """An initiator started or stopped waiting here: in multiprocess mode write this
        worker's count (a function gauge is only read in its own process)."""
        if self.multiprocess:
            self.waiters.set(self._waiting())

    def render(self) -> bytes:
        if not self.multiprocess:
            return generate_latest(self.registry)
        from prometheus_client.multiprocess import MultiProcessCollector

        self.waiting_changed()
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # every worker's files, this one's included
        registry.register(self.callbacks)  # figures of this process only (none under gunicorn)
        return generate_latest(registry)


def observer() -> Observer:
    return current_app.extensions["stunturn.observer"]


metrics_bp = Blueprint("metrics", __name__)


@metrics_bp.get("/metrics")
def metrics():
    return Response(observer().render(), mimetype=CONTENT_TYPE_LATEST)


def init_app(app, waiting: Callable[[], int], *, serve_metrics: bool = True) -> Observer:
    """Attach an :class:`Observer` to ``app`` (and ``/metrics`` unless served elsewhere)."""
    obs = Observer(waiting)
    app.extensions["stunturn.observer"] = obs
    if serve_metrics:
        app.register_blueprint(metrics_bp)

    @app.after_request
    def count_response(response):
        obs.responses.labels(request.endpoint or "unrouted", str(response.status_code)).inc()
        return response

    return obs


def metrics_app(obs: Observer):
    """A WSGI app serving only ``GET /metrics`` of ``obs`` (the ``--metrics-listen`` listener)."""
    def app(environ, start_response):
        if environ.get("PATH_INFO") != "/metrics" or environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"only GET /metrics here\n"]
        data = obs.render()
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(data)))])
        return [data]

    return app
