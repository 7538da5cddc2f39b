"""What every blueprint shares: JSON errors, JSON bodies, the client's observed address.

- :class:`ApiError`: an API failure with a stable ``error`` code, extra JSON fields and
  response headers; :func:`handle_error` is the app's one error handler, rendering it (and
  any other failure) as ``{"error": code, "message": text, ...}``;
- :func:`json_body`: the request's JSON object (415 / 413 / 408 / 400), parsed by one of
  the pure validators of :mod:`stunturn_server.sansio.validation`;
- :func:`observed_address`: the client's address as this server sees it;
- :class:`AppContext` / :func:`app_context`: the configuration, match store and clock of
  the running app (set by :func:`stunturn_server.app.create_app`).
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from typing import Callable

from flask import current_app, jsonify, request
from werkzeug.exceptions import ClientDisconnected, HTTPException

from stunturn_diag.errors import StoreUnavailable

from . import observe
from .config import ServerConfig
from .sansio import validation
from .sansio.matching import MatchStore

log = logging.getLogger("stunturn_server.app")
CONTEXT_KEY = "stunturn.context"


@dataclass(frozen=True)
class AppContext:
    """What every blueprint of one app may read."""

    config: ServerConfig
    store: MatchStore
    clock: Callable[[], float]


def app_context(app=None) -> AppContext:
    """The :class:`AppContext` of ``app`` (default: the app handling this request)."""
    return (app or current_app).extensions[CONTEXT_KEY]


class ApiError(HTTPException):
    """An API failure with a stable ``error`` code and extra JSON fields."""

    def __init__(self, status: int, error: str, message: str, *, headers: dict | None = None,
                 **extra) -> None:
        super().__init__(description=message)
        self.code = status
        self.error = error
        self.extra = extra
        #: extra response headers (e.g. Retry-After), set by the app's error handler
        self.response_headers = dict(headers or {})


def _error_code(exc: HTTPException) -> str:
    """``"Method Not Allowed"`` -> ``"method-not-allowed"``."""
    return re.sub(r"[^a-z0-9]+", "-", (exc.name or "error").lower()).strip("-")


def handle_error(exc: Exception):
    """The one error handler: every failure becomes ``{"error": code, "message": text}``."""
    if isinstance(exc, StoreUnavailable):
        observe.observer().pairing("store-unavailable", str(exc), route=request.endpoint or "unrouted")
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


def json_body(parse: Callable[[dict], object] | None = None):
    """The request's JSON object, or what ``parse`` makes of it; 415 for other media types,
    413 before reading an oversized body, 400 when the body or ``parse`` raises
    :class:`validation.BadRequest`."""
    if request.mimetype != "application/json":
        raise ApiError(415, "unsupported-media-type",
                       f"send the body as application/json (got {request.mimetype or 'no content type'!r})")
    limit = app_context().config.max_body
    length = request.content_length
    if length is not None and length > limit:
        raise ApiError(413, "payload-too-large", f"body of {length} bytes exceeds the {limit} byte limit")
    try:
        body = request.get_data(cache=False)  # werkzeug stops at MAX_CONTENT_LENGTH (chunked bodies)
    except (OSError, ClientDisconnected):  # the whole-request deadline passed, or the client left
        raise ApiError(408, "request-timeout", "the request body did not arrive in time; send the "
                       "whole request at once", headers={"Connection": "close"}) from None
    if len(body) > limit:
        raise ApiError(413, "payload-too-large", f"body exceeds the {limit} byte limit")
    try:
        obj = validation.parse_json_object(body)
        return parse(obj) if parse else obj
    except validation.BadRequest as exc:
        raise ApiError(400, "bad-request", str(exc)) from None


#: canonical_ip of client addresses, parsed once per address rather than once per request
canonical_remote = functools.lru_cache(maxsize=8192)(validation.canonical_ip)


def observed_address() -> tuple[str, int]:
    """The client's address as this server sees it: ``REMOTE_ADDR``/``REMOTE_PORT``, which
    the gevent runner sets from a trusted proxy's word (:mod:`stunturn_server.sansio.proxy`)."""
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
