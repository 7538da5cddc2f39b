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
import ipaddress
import json
import logging
import resource
import signal
import socket
import threading
from typing import Callable

from stunturn_diag.errors import ConfigError, StunturnError

from .app import create_app, make_store
from .config import ServerConfig, bind_error, format_address
from .observe import metrics_app

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


def _handler_class(io_timeout: float):
    from gevent.pywsgi import WSGIHandler

    class _SocketHandler(WSGIHandler):
        """Puts the client socket into the environ so a long-poll can watch for a hang-up.

        Also sets TCP_NODELAY (pywsgi sends headers and body in two writes, which
        Nagle + delayed ACK would otherwise stall by ~40 ms per response) and an I/O
        timeout for reading requests and writing answers (not for the long-poll wait).
        """

        def __init__(self, sock, address, server, *args, **kwargs):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # not TCP (e.g. a Unix socket): nothing to tune
                pass
            sock.settimeout(io_timeout)  # silent or idle clients are dropped, not held forever
            super().__init__(sock, address, server, *args, **kwargs)
            # a smaller read buffer than pywsgi's 8 KiB: every waiting long-poll keeps one
            default, self.rfile = self.rfile, sock.makefile("rb", _READ_BUFFER)
            default.close()

        def get_environ(self):
            environ = super().get_environ()
            environ[SOCKET_ENVIRON_KEY] = self.socket
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


def _server_class(limit: int):
    """A WSGIServer that holds at most ``limit`` connections per source (IPv4 address / IPv6 /64).

    Above it a connection gets a canned 429 JSON answer and is closed before anything is
    read, so one host cannot take every file descriptor with idle or slow connections.
    Counting needs no lock: every connection greenlet runs in this server's one hub.
    """
    from gevent.pywsgi import WSGIServer

    from .api import canonical_remote, source_of

    body = json.dumps({"error": "too-many-connections", "limit": limit,
                       "message": f"this address already holds {limit} connections to the server, "
                                  "the most it allows; close some first"}).encode()
    refusal = (b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)) + body

    class _LimitedServer(WSGIServer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.connections: dict[str, int] = {}
            self.refused = 0

        def handle(self, sock, address):
            try:
                source = source_of(canonical_remote(address[0].split("%", 1)[0]))
            except ValueError:  # not an IP socket (e.g. a Unix socket): not limited
                return super().handle(sock, address)
            count = self.connections.get(source, 0)
            if count >= limit:
                self.refused += 1
                if self.refused in (1, 10, 100) or self.refused % 1000 == 0:
                    log.warning("refused %d connection(s) over the limit of %d per source (latest "
                                "from %s)", self.refused, limit, source)
                _refuse(sock, refusal)
                return
            self.connections[source] = count + 1
            try:
                return super().handle(sock, address)
            finally:
                left = self.connections[source] - 1
                if left:
                    self.connections[source] = left
                else:
                    del self.connections[source]

    return _LimitedServer


def _refuse(sock, answer: bytes) -> None:
    """Send ``answer`` and close; a request already sent is read and discarded first (bounded)
    so closing does not reset the connection before the client reads the answer."""
    try:
        sock.settimeout(0.5)
        sock.sendall(answer)
        sock.shutdown(socket.SHUT_WR)
        for _ in range(16):  # at most 64 KiB, each read waits at most 0.5 s
            if not sock.recv(4096):
                break
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


class ServerHandle:
    """A running server. ``stop()`` is clean and idempotent; also a context manager."""

    def __init__(self, config: ServerConfig, listener: socket.socket, stun_service,
                 metrics_listener: socket.socket | None = None) -> None:
        self.config = config
        self._listener = listener
        self._metrics_listener = metrics_listener
        self.metrics_url = None
        if metrics_listener is not None:
            self.metrics_url = "http://{}/metrics".format(format_address(*metrics_listener.getsockname()[:2]))
        self.stun_service = stun_service
        host, port = listener.getsockname()[:2]
        self.http_address: tuple[str, int] = (host, port)
        self.http_url = f"http://{format_address(host, port)}"
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
        )
        self.observer = self.app.extensions["stunturn.observer"]
        if stun_service is not None:
            self.observer.callbacks.stun_stats = lambda: stun_service.stats
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
            handler = _handler_class(self.config.http_io_timeout)
            server_class = _server_class(self.config.max_connections_per_ip)
            server = server_class(self._listener, self.app, handler_class=handler,
                                spawn=gevent.pool.Pool(), log=None,
                                # malformed HTTP from clients is their problem: INFO, not ERROR
                                error_log=LoggingLogAdapter(logging.getLogger("stunturn_server.wsgi"),
                                                            logging.INFO))
            self.observer.callbacks.connections_refused = lambda: server.refused
            servers.append(server)
            if self._metrics_listener is not None:
                servers.append(WSGIServer(self._metrics_listener, metrics_app(self.observer), log=None,
                                          error_log=LoggingLogAdapter(logging.getLogger("stunturn_server.wsgi"),
                                                                      logging.INFO)))
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
        service, self.stun_service = self.stun_service, None
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


def start_server(config: ServerConfig) -> ServerHandle:
    """Start HTTP (+ STUN when ``config.stun_enabled``) and return at once.

    Binding errors raise :class:`ConfigError` before anything keeps running.
    Raises the open-file soft limit to the hard limit (each long-poll holds a socket).
    """
    raise_nofile_limit()
    listener = bind_listener(config.http_host, config.http_port)
    metrics_listener = stun = None
    try:
        if config.metrics_listen is not None:
            metrics_listener = bind_listener(*config.metrics_listen)
        stun = _start_stun(config) if config.stun_enabled else None
        handle = ServerHandle(config, listener, stun, metrics_listener)
        handle._start()
    except BaseException:
        listener.close()
        if metrics_listener is not None:
            metrics_listener.close()
        if stun is not None:
            stun.stop()
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
