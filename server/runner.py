"""Run the server: gevent WSGI (thousands of long-polls) + the STUN service.

``start_server(config)`` is non-blocking and embeddable: the gevent server runs in
its own thread with its own hub, nothing is monkey-patched, so the host program's
threads and sockets behave as before. ``serve_forever(config)`` blocks until
Ctrl-C / SIGTERM and is what ``stunturn-diag serve`` calls.

Long-polls wait on ``gevent.event.Event``; a client that hangs up while waiting is
noticed by watching its socket for EOF (the handler puts the socket into the WSGI
environ) and its entry is freed at once.
"""

from __future__ import annotations

import errno
import io
import ipaddress
import json
import logging
import resource
import signal
import socket
import threading
import time
from typing import Callable

from stunturn_diag.errors import ConfigError, StunturnError
from stunturn_diag.sansio.netaddr import format_hostport

from .app import create_app, make_store
from .config import ServerConfig, bind_error
from .http import canonical_remote
from .observe import metrics_app
from .sansio.limits import LogThrottle, source_of
from .sansio.proxy import (V1_MAX, ProxyHeaderError, TrustedProxies, forwarded_client, parse_proxy_header,
                           proxy_header_possible)

log = logging.getLogger("stunturn_server.runner")

#: WSGI environ key holding the client's gevent socket (set by :class:`_SocketHandler`)
SOCKET_ENVIRON_KEY = "stunturn.client_socket"
_LISTEN_BACKLOG = 4096
#: per-connection request read buffer (bytes); requests are small (<= max_body)
_READ_BUFFER = 2048
#: seconds in-flight requests get to finish on stop() before connections are dropped
_STOP_GRACE = 0.5


def raise_nofile_limit() -> int:
    """Raise this process's RLIMIT_NOFILE soft limit to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %s to %s: %s", soft, target, exc)
    return soft


_HTTP_BIND_HINTS = {
    errno.EADDRINUSE: "another program already uses this port; pick another port or stop that program",
    errno.EADDRNOTAVAIL: "this machine has no such address; use one of its own addresses (e.g. 127.0.0.1)",
    errno.EACCES: "ports below 1024 need root; pick a port >= 1024",
}


def bind_listener(host: str, port: int) -> socket.socket:
    """A listening, non-blocking TCP socket (errors become :class:`ConfigError`)."""
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(_LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise bind_error("HTTP server", host, port, exc, _HTTP_BIND_HINTS) from None
    return sock


class _DeadlineReader(io.RawIOBase):
    """The request stream under one deadline per request: ``whole`` seconds from its first
    byte to its last (request line, headers and body), however the bytes trickle in; any
    silence is also bounded by ``idle`` (as is the wait for the first byte). Each read sets
    the socket timeout to what is left (and back to ``idle``, which also bounds writes)."""

    def __init__(self, sock, idle: float, whole: float) -> None:
        super().__init__()
        self.sock, self.idle, self.whole = sock, idle, whole
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def start_request(self) -> None:
        self.deadline = None

    def readinto(self, buffer) -> int:
        if self.deadline is None:
            timeout = self.idle
        else:
            timeout = min(self.idle, self.deadline - time.monotonic())
            if timeout <= 0:
                raise socket.timeout(f"the request took longer than {self.whole:g}s")
        self.sock.settimeout(timeout)
        try:
            n = self.sock.recv_into(buffer)
        finally:
            self.sock.settimeout(self.idle)
        if n and self.deadline is None:
            self.deadline = time.monotonic() + self.whole
        return n


class AmbiguousRequest(ValueError):
    """Headers that two parsers could read differently (request smuggling): refused with 400."""


def strict_headers(headers) -> None:
    """Raise :class:`AmbiguousRequest` for ambiguous framing (RFC 9112 sections 5.2, 6.1, 6.3):
    obsolete line folding, more than one Content-Length, Transfer-Encoding with Content-Length,
    a Transfer-Encoding other than ``chunked``, a Content-Length that is not digits."""
    for name, value in headers.items():
        if "\n" in value or "\r" in value:
            raise AmbiguousRequest(f"obsolete line folding in the {name} header")
    lengths = headers.get_all("Content-Length") or []
    encodings = headers.get_all("Transfer-Encoding") or []
    if len(lengths) > 1:
        raise AmbiguousRequest("more than one Content-Length header")
    if lengths and encodings:
        raise AmbiguousRequest("both Transfer-Encoding and Content-Length")
    if lengths and not lengths[0].strip().isdigit():
        raise AmbiguousRequest(f"Content-Length is not a number: {lengths[0]!r}")
    if encodings and (len(encodings) > 1 or encodings[0].strip().lower() != "chunked"):
        raise AmbiguousRequest("a Transfer-Encoding other than a single chunked")


def _canned(status: str, body: dict) -> bytes:
    data = json.dumps(body).encode()
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            "Connection: close\r\n\r\n").encode() + data


def _handler_class(config: ServerConfig, trusted: TrustedProxies, throttle: LogThrottle):
    from gevent.pywsgi import WSGIHandler

    io_timeout, request_timeout = config.http_io_timeout, config.http_request_timeout

    class _SocketHandler(WSGIHandler):
        """Puts the client socket into the environ so a long-poll can watch for a hang-up.

        Also sets TCP_NODELAY (pywsgi sends headers and body in two writes, which
        Nagle + delayed ACK would otherwise stall by ~40 ms per response), the
        per-request deadline (:class:`_DeadlineReader`), strict framing
        (:func:`strict_headers`) and the client address a trusted proxy names.
        """

        def __init__(self, sock, address, server, *args, **kwargs):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # not TCP (e.g. a Unix socket): nothing to tune
                pass
            sock.settimeout(io_timeout)  # silent or idle clients are dropped, not held forever
            super().__init__(sock, address, server, *args, **kwargs)
            # a smaller read buffer than pywsgi's 8 KiB: every waiting long-poll keeps one
            self._reader = _DeadlineReader(sock, io_timeout, request_timeout)
            default, self.rfile = self.rfile, io.BufferedReader(self._reader, _READ_BUFFER)
            default.close()

        def handle_one_request(self):
            self._reader.start_request()
            return super().handle_one_request()

        def MessageClass(self, *args):  # noqa: N802 - pywsgi's name
            headers = super().MessageClass(*args)
            if not headers.status:
                strict_headers(headers)
            return headers

        def _handle_client_error(self, ex):
            """Malformed or ambiguous HTTP: 400 JSON and close; one INFO line per source and
            minute, the details (and any traceback) at DEBUG only."""
            source = str(self.client_address[0]) if self.client_address else "?"
            log.debug("bad HTTP request from %s: %s", source, ex, exc_info=not isinstance(ex, ValueError))
            count = throttle.note(f"bad-http {source}", time.monotonic())
            if count is not None:
                log.info("refused %d malformed HTTP request(s) from %s (latest: %s)", count, source,
                         str(ex)[:200] or type(ex).__name__)
            self.close_connection = True
            return ("400", _canned("400 Bad Request", {
                "error": "bad-request", "message": f"malformed or ambiguous HTTP request: {str(ex)[:200]}"}))

        def log_request(self):
            """No access log (the servers run with ``log=None``): pywsgi would still format
            one line per request for its no-op log."""

        def handle_error(self, t, v, tb):
            """A failure outside the app (e.g. the client vanished mid-write): DEBUG with the
            traceback, no 500 body on a connection that is being dropped anyway."""
            log.debug("HTTP connection from %s failed", self.client_address, exc_info=(t, v, tb))
            self.close_connection = True

        def get_environ(self):
            environ = super().get_environ()
            environ[SOCKET_ENVIRON_KEY] = self.socket
            if trusted:
                peer = (environ.get("REMOTE_ADDR", ""), int(environ.get("REMOTE_PORT") or 0))
                ip, port = forwarded_client(peer, trusted, self.headers.get_all("Forwarded") or [],
                                            self.headers.get_all("X-Forwarded-For") or [])
                environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = ip, str(port)
            return environ

        # pywsgi writes the status and headers, then the body: two sends (two syscalls and
        # often two segments) per answer. Gather them into one send.
        _gathered: bytearray | None = None

        def _write_with_headers(self, data):
            self._gathered = bytearray()
            try:
                super()._write_with_headers(data)
                gathered = self._gathered
            finally:
                self._gathered = None
            if gathered:
                super()._sendall(gathered)

        def _sendall(self, data):
            if self._gathered is not None:
                self._gathered += data
            else:
                super()._sendall(data)

    return _SocketHandler


def _server_class(config: ServerConfig, trusted: TrustedProxies, tls_context, throttle: LogThrottle):
    """A WSGIServer that holds at most ``config.max_connections_per_ip`` connections per source
    (IPv4 address / IPv6 /64) and ``config.max_connections`` in all.

    Above a cap a connection gets a canned 429 JSON answer (plain HTTP; a TLS connection is
    just closed) and is closed at once: nothing is read or drained. A connection from a
    trusted proxy may start with a PROXY protocol header (v1/v2), which names its client;
    a proxy's connections are not counted per source (its clients are, per request, by the
    waiter and failure limits). TLS (``tls_context``) is set up here, after the PROXY header.
    Counting needs no lock: every connection greenlet runs in this server's one hub.
    """
    from gevent.pywsgi import WSGIServer

    per_source, total = config.max_connections_per_ip, config.max_connections
    request_timeout = config.http_request_timeout
    refusals = {
        "source": _canned("429 Too Many Requests", {
            "error": "too-many-connections", "limit": per_source,
            "message": f"this address already holds {per_source} connections to the server, "
                       "the most it allows; close some first"}),
        "total": _canned("503 Service Unavailable", {
            "error": "too-many-connections", "limit": total,
            "message": f"the server holds {total} connections, the most it allows; retry shortly"}),
    }

    class _LimitedServer(WSGIServer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.connections: dict[str, int] = {}
            self.open = 0
            self.refused = 0

        def _refuse(self, sock, why: str, source: str) -> None:
            self.refused += 1
            limit = per_source if why == "source" else total
            if throttle.note(f"refused {why} {source}", time.monotonic()) is not None:
                log.warning("refused %d connection(s) in all over the limit of %d %s (latest from %s)",
                            self.refused, limit, "per source" if why == "source" else "in all", source)
            _refuse(sock, None if tls_context else refusals[why])

        def handle(self, sock, address):
            try:
                peer = canonical_remote(address[0].split("%", 1)[0])
            except ValueError:  # not an IP socket (e.g. a Unix socket): not limited
                return super().handle(sock, address)
            if self.open >= total:
                return self._refuse(sock, "total", peer)
            counted = peer not in trusted
            if not counted:
                try:
                    header = read_proxy_header(sock, request_timeout)
                except (OSError, ValueError) as exc:
                    log.debug("connection from trusted proxy %s dropped: %s", peer, exc)
                    sock.close()
                    return
                if header is not None and header.source is not None:
                    address, counted = header.source, True
            source = source_of(address[0]) if counted else None
            if source is not None and self.connections.get(source, 0) >= per_source:
                return self._refuse(sock, "source", source)
            self.open += 1
            if source is not None:
                self.connections[source] = self.connections.get(source, 0) + 1
            try:
                if tls_context is not None:
                    sock = _tls_handshake(tls_context, sock, request_timeout)
                    if sock is None:
                        return
                return super().handle(sock, address)
            finally:
                self.open -= 1
                if source is not None:
                    left = self.connections[source] - 1
                    if left:
                        self.connections[source] = left
                    else:
                        del self.connections[source]

    return _LimitedServer


def read_proxy_header(sock, timeout: float):
    """The PROXY protocol header at the start of ``sock``, if any (peeked, then consumed).

    ``None`` when the connection does not start with one (plain HTTP or TLS from the proxy);
    :class:`ProxyHeaderError` for a malformed one; bounded by ``timeout`` in all.
    """
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("no complete PROXY header in time")
        sock.settimeout(remaining)
        data = sock.recv(V1_MAX + 216, socket.MSG_PEEK)  # v2 with IPv6 and some TLVs
        if not data:
            raise ConnectionError("the proxy closed the connection")
        if not proxy_header_possible(data):
            return None
        header = parse_proxy_header(data)
        if header is not None:
            _recv_exact(sock, header.length)
            return header
        if len(data) >= V1_MAX + 216:
            raise ProxyHeaderError("PROXY header longer than this server reads")
        # incomplete: wait for more (a trickle is bounded by the deadline)
        gevent_sleep(0.005)


def _recv_exact(sock, n: int) -> None:
    while n > 0:
        chunk = sock.recv(n)
        if not chunk:
            raise ConnectionError("the proxy closed the connection")
        n -= len(chunk)


def gevent_sleep(seconds: float) -> None:
    import gevent

    gevent.sleep(seconds)


def _tls_handshake(context, sock, timeout: float):
    """Wrap ``sock`` in TLS (server side) within ``timeout``; ``None`` (closed) if it fails."""
    try:
        tls = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        tls.settimeout(timeout)
        tls.do_handshake()
        return tls
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        log.debug("TLS handshake failed: %s", exc)
        sock.close()
        return None


def _refuse(sock, answer: bytes | None) -> None:
    """Send ``answer`` (if any) and close at once: nothing is waited for. What the client
    already sent is dropped first (one non-blocking read), so the close does not reset the
    connection before it can read the answer."""
    try:
        if answer:
            sock.setblocking(False)
            sock.send(answer)  # a few hundred bytes: they fit the empty send buffer
            sock.shutdown(socket.SHUT_WR)
            getattr(sock, "_sock", sock).recv(65536, socket.MSG_DONTWAIT)
    except OSError:
        pass
    finally:
        sock.close()


def gevent_watch_hangup(environ: dict, on_hangup: Callable[[], None]) -> Callable[[], None]:
    """Call ``on_hangup`` (in the hub) when the client's socket reaches EOF or resets.

    Returns a function that stops watching. If the client pipelines more data
    instead, watching stops quietly (a hang-up can then no longer be told apart).
    """
    sock = environ.get(SOCKET_ENVIRON_KEY)
    if sock is None:
        return lambda: None
    import gevent

    raw = getattr(sock, "_sock", sock)  # the stdlib socket under gevent's wrapper
    watcher = gevent.get_hub().loop.io(sock.fileno(), 1)

    def on_readable() -> None:
        try:
            data = raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        watcher.stop()
        if not data:
            on_hangup()

    watcher.start(on_readable)

    def stop() -> None:
        watcher.stop()
        watcher.close()

    return stop


def _summed(stats: list[dict[str, int]]) -> dict[str, int]:
    """Counters of several services, added name by name."""
    out: dict[str, int] = {}
    for each in stats:
        for name, value in each.items():
            out[name] = out.get(name, 0) + value
    return out


class ServerHandle:
    """A running server. ``stop()`` is clean and idempotent; also a context manager."""

    def __init__(self, config: ServerConfig, listener: socket.socket, stun_service,
                 metrics_listener: socket.socket | None = None, tls_context=None, *,
                 listener6: socket.socket | None = None, stun6_service=None) -> None:
        self.config = config
        self._listener = listener
        self._tls_context = tls_context
        #: dual stack (config.http_host6): the IPv6 HTTP listener (same app) and STUN service
        self._listener6 = listener6
        self.stun6_service = stun6_service
        self.http6_url = ("http{}://{}".format("s" if tls_context is not None else "",
                                               format_hostport(*listener6.getsockname()[:2]))
                          if listener6 is not None else None)
        self.stun6_endpoints: list[dict] = [ep.as_dict() for ep in stun6_service.endpoints
                                            ] if stun6_service else []
        self._metrics_listener = metrics_listener
        self.metrics_url = None
        if metrics_listener is not None:
            self.metrics_url = f"http://{format_hostport(*metrics_listener.getsockname()[:2])}/metrics"
        self.stun_service = stun_service
        host, port = listener.getsockname()[:2]
        self.http_address: tuple[str, int] = (host, port)
        self.http_url = f"{'https' if tls_context else 'http'}://{format_hostport(host, port)}"
        self.stun_endpoints: list[dict] = [ep.as_dict() for ep in stun_service.endpoints
                                           ] if stun_service else []
        # started in the server's hub (_run): a Redis store's sockets belong to that hub
        self.store = make_store(config, _gevent_event)
        self.app = create_app(
            config,
            store=self.store,
            signal_factory=_gevent_event,
            watch_hangup=gevent_watch_hangup,
            stun_endpoints=self.stun_endpoints if stun_service else None,
            stun6_endpoints=self.stun6_endpoints if stun6_service else None,
        )
        self.observer = self.app.extensions["stunturn.observer"]
        services = [each for each in (stun_service, stun6_service) if each is not None]
        if services:   # dual stack: the IPv6 service's counters are added to the IPv4 one's
            self.observer.callbacks.stun_stats = lambda: _summed([each.stats for each in services])
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self._stop_requested = False
        self._wake = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="stunturn-http", daemon=True)

    # -- the gevent thread -------------------------------------------------------------
    def _run(self) -> None:
        import gevent
        import gevent.event
        import gevent.pool
        from gevent.pywsgi import LoggingLogAdapter, WSGIServer

        from gevent import monkey

        # a host that monkey-patched threading runs this "thread" as a greenlet in its own
        # hub: then the hub is the host's and must survive stop()
        own_hub = not monkey.is_module_patched("threading")
        hub = gevent.get_hub()
        stop_event = gevent.event.Event()
        servers = []
        try:
            self._wake = hub.loop.async_()
            self._wake.start(stop_event.set)
            self.store.start()
            # an explicit pool: stop() kills the connections still open (waiting long-polls)
            trusted = TrustedProxies(self.config.trusted_proxies)
            throttle = LogThrottle()
            handler = _handler_class(self.config, trusted, throttle)
            server_class = _server_class(self.config, trusted, self._tls_context, throttle)
            server = server_class(self._listener, self.app, handler_class=handler,
                                spawn=gevent.pool.Pool(), log=None,
                                # what pywsgi still writes there is the clients' problem: DEBUG
                                error_log=LoggingLogAdapter(logging.getLogger("stunturn_server.wsgi"),
                                                            logging.DEBUG))
            servers.append(server)
            if self._listener6 is not None:   # the same app, so one store and one set of limits
                servers.append(server_class(self._listener6, self.app, handler_class=handler,
                                            spawn=gevent.pool.Pool(), log=None,
                                            error_log=LoggingLogAdapter(
                                                logging.getLogger("stunturn_server.wsgi"), logging.DEBUG)))
            limited = list(servers)   # the HTTP listeners (IPv4, and IPv6 on a dual-stack server)
            self.observer.callbacks.connections_refused = lambda: sum(each.refused for each in limited)
            if self._metrics_listener is not None:
                servers.append(WSGIServer(self._metrics_listener, metrics_app(self.observer), log=None,
                                          error_log=LoggingLogAdapter(logging.getLogger("stunturn_server.wsgi"),
                                                                      logging.DEBUG)))
            for each in servers:
                each.start()
        except BaseException as exc:  # start-up failure is reported by start()
            self._error = exc
            for each in servers:
                each.stop(timeout=0)
            self.store.stop()
            self._wake.close()
            if own_hub:
                hub.destroy(destroy_loop=True)
            self._ready.set()
            self._stopped.set()
            return
        self._ready.set()
        try:
            stop_event.wait()
            # waiting long-polls answer 503 "shutting-down" within the grace time instead of
            # being killed mid-request (which pywsgi reports as a bare 500)
            self.app.extensions["stunturn"].shutdown()
            for each in servers:
                each.stop(timeout=_STOP_GRACE)
        finally:
            try:
                self.store.stop()  # this instance's waiters leave a shared store at once
            except Exception:  # pragma: no cover - never let shutdown raise
                log.exception("stopping the match store failed")
            self._wake.close()
            self._listener.close()
            if self._listener6 is not None:
                self._listener6.close()
            if self._metrics_listener is not None:
                self._metrics_listener.close()
            try:
                if own_hub:
                    hub.destroy(destroy_loop=True)
            finally:
                self._stopped.set()

    def _start(self) -> None:
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._stop_stun()
            self._listener.close()
            if self._listener6 is not None:
                self._listener6.close()
            if self._metrics_listener is not None:
                self._metrics_listener.close()
            if isinstance(self._error, StunturnError):
                raise self._error
            raise ConfigError(f"the HTTP server failed to start: {self._error}")

    # -- public --------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._ready.is_set() and not self._stopped.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server has stopped; ``True`` if it has."""
        return self._stopped.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop HTTP and STUN; waiting long-polls are dropped. Safe to call more than once."""
        with self._stop_lock:
            first = not self._stop_requested
            self._stop_requested = True
        if first:
            if self._wake is not None and self._thread.is_alive():
                self._wake.send()
            self._stop_stun()
        self._thread.join(timeout)

    def _stop_stun(self) -> None:
        services = (self.stun_service, self.stun6_service)
        self.stun_service = self.stun6_service = None
        for service in services:
            if service is not None:
                try:
                    service.stop()
                except Exception:  # pragma: no cover - never let shutdown raise
                    log.exception("stopping the STUN service failed")

    def __enter__(self) -> "ServerHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _gevent_event():
    import gevent.event

    return gevent.event.Event()


def _start_stun(config: ServerConfig):
    try:
        from .stun.service import start_stun_service
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("stunturn_server.stun"):
            raise
        raise ConfigError("this installation has no STUN responder (stunturn_server.stun.service)",
                          hint="run the signaling server alone with --no-stun") from None
    try:
        return start_stun_service(config)
    except StunturnError:
        raise
    except OSError as exc:
        raise bind_error("STUN responder", config.stun_ip, config.stun_port, exc,
                         _HTTP_BIND_HINTS) from None


def tls_server_context(config: ServerConfig):
    """A server-side TLS context (gevent's, cooperative) from ``config.tls`` (its ``cert`` and
    ``key``); ``None`` without them. An unreadable or mismatched pair is a :class:`ConfigError`."""
    tls = config.tls
    if not tls.enabled:
        return None
    from gevent import ssl as gssl

    context = gssl.SSLContext(gssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = gssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(tls.cert, tls.key)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise ConfigError(f"cannot load the TLS certificate {tls.cert} with key "
                          f"{tls.key}: {exc}",
                          hint="give a PEM certificate chain and its matching PEM private key") from None
    return context


def start_server(config: ServerConfig) -> ServerHandle:
    """Start HTTP(S) (+ STUN when ``config.stun_enabled``) and return at once.

    Binding and TLS errors raise :class:`ConfigError` before anything keeps running.
    Raises the open-file soft limit to the hard limit (each long-poll holds a socket).
    """
    raise_nofile_limit()
    tls_context = tls_server_context(config)
    TrustedProxies(config.trusted_proxies)  # a bad CIDR is a ConfigError now, not in the thread
    listener = bind_listener(config.http_host, config.http_port)
    metrics_listener = stun = listener6 = stun6 = None
    try:
        if config.http_host6:   # dual stack: IPv6 on the port the IPv4 listener got
            listener6 = bind_listener(config.http_host6, listener.getsockname()[1])
        if config.metrics_listen is not None:
            metrics_listener = bind_listener(*config.metrics_listen)
        stun = _start_stun(config) if config.stun_enabled else None
        if config.stun_enabled and config.http_host6:
            stun6 = _start_stun(config.family_config(6))
        handle = ServerHandle(config, listener, stun, metrics_listener, tls_context,
                              listener6=listener6, stun6_service=stun6)
        handle._start()
    except BaseException:
        for sock in (listener, listener6, metrics_listener):
            if sock is not None:
                sock.close()
        for service in (stun, stun6):
            if service is not None:
                service.stop()
        raise
    log.info("signaling server listening on %s", handle.http_url)
    return handle


def serve_forever(config: ServerConfig, *, on_ready: Callable[[ServerHandle], None] | None = None) -> None:
    """Run until Ctrl-C or SIGTERM, then stop cleanly. ``on_ready`` gets the running handle."""
    handle = start_server(config)
    previous = None
    if threading.current_thread() is threading.main_thread():
        def _terminate(signum, frame):
            raise KeyboardInterrupt
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        if on_ready is not None:
            on_ready(handle)
        while not handle.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        handle.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
