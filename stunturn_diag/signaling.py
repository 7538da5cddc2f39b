"""HTTP client for the signaling server (``stunturn-diag serve``); urllib only.

>>> client = SignalingClient("http://127.0.0.1:8080")
>>> rv = rendezvous_id(access_key)          # stunturn_diag.sansio.punch.keys: never the key itself
>>> client.initiate(rv, "203.0.113.7", "udp")   # waits for the receiver
>>> client.checkin(rv)                          # on the receiver, meanwhile

Answers are the server's JSON objects (see docs/ARCHITECTURE.md, "Signaling HTTP
API"). Failures raise the :class:`~stunturn_diag.errors.SignalingError` family:
:class:`ServerUnreachable`, :class:`PairingTimeout`, :class:`NoInitiatorWaiting`,
:class:`PairingConflict`, :class:`RateLimited`, :class:`SignalingTlsError`. Environment
proxies are ignored unless asked for. The access key is never sent:
requests carry the ``rendezvous`` identifier derived from it, and a value that
does not look like one is refused before any I/O.

``https://`` URLs are verified (:class:`TlsOptions`): the system trust store by default,
``ca_file`` for a private CA or a self-signed certificate, ``insecure=True`` to skip
verification altogether (the CLI's ``--insecure``, which warns: anyone on the path can
then read the rendezvous identifier and the candidate addresses, and answer in the
server's place).
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import re
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from .netio import connect_racing
from .sansio.synwait import syn_rto
from .errors import (ConfigError, NoInitiatorWaiting, PairingConflict, PairingTimeout, RateLimited,
                     ServerUnreachable, SignalingError, SignalingTlsError)

DEFAULT_PORT = 8080
#: extra seconds the HTTP read may take beyond the long-poll's own timeout
LONG_POLL_MARGIN = 10.0
#: what a rendezvous identifier looks like (stunturn_diag.sansio.punch.keys.rendezvous_id)
RENDEZVOUS_RE = re.compile(r"[0-9a-f]{64}")


def _rendezvous(value: str) -> str:
    if not isinstance(value, str) or not RENDEZVOUS_RE.fullmatch(value):
        raise ConfigError("the signaling request needs a rendezvous identifier (64 hex digits), "
                          "not an access key", hint="derive it with "
                          "stunturn_diag.sansio.punch.keys.rendezvous_id(key); the key stays local")
    return value


def parse_server_url(text: str, *, default_port: int = DEFAULT_PORT) -> str:
    """Normalise ``host``, ``host:port``, ``[v6]:port`` or ``http(s)://host[:port][/prefix]``.

    Returns ``scheme://host:port[/prefix]`` without a trailing slash; raises
    :class:`ConfigError` for anything else.
    """
    raw = (text or "").strip()
    if not raw:
        raise ConfigError("the signaling server URL is empty", hint="e.g. http://127.0.0.1:8080")
    candidate = raw if "://" in raw else f"http://{raw}"
    try:
        parts = urllib.parse.urlsplit(candidate)
        port = parts.port
        host = parts.hostname
    except ValueError as exc:
        raise ConfigError(f"invalid signaling server URL {raw!r}: {exc}",
                          hint="e.g. http://127.0.0.1:8080") from None
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"signaling server URL must use http or https, got {parts.scheme!r}",
                          hint="e.g. http://127.0.0.1:8080")
    if not host:
        raise ConfigError(f"signaling server URL {raw!r} has no host", hint="e.g. http://127.0.0.1:8080")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(f"signaling server URL {raw!r} must not carry a query, fragment or credentials")
    if port is None:
        port = default_port if parts.scheme == "http" or "://" not in raw else 443
    try:
        is_v6 = ipaddress.ip_address(host).version == 6
    except ValueError:
        is_v6 = False
    netloc = f"[{host}]:{port}" if is_v6 else f"{host}:{port}"
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"


@dataclass(frozen=True)
class TlsOptions:
    """How an ``https://`` server's certificate is checked."""

    #: PEM file of CA certificates to trust instead of the system store
    ca_file: str | None = None
    #: do not verify at all (encrypted, but not authenticated: an on-path attacker can read it)
    insecure: bool = False

    def context(self) -> ssl.SSLContext:
        """The client TLS context (:class:`ConfigError` for an unreadable ``ca_file``)."""
        if self.insecure:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        try:
            return ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the CA file {self.ca_file}: {exc}",
                              hint="give a PEM file of CA certificates (--ca-file)") from None


#: the round trip to each server (host, port) measured by this process's connects: a new
#: client (the probe makes several) starts from it
_RTTS: dict[tuple[str, int], float] = {}


class _Connector:
    """Opens the client's TCP connections (``socket.create_connection``'s signature). Each
    request is a new connection, and on a lossy path the kernel resends a lost SYN only
    after 1 s; here a second connect starts beside the first after 4 round trips
    (:func:`stunturn_diag.netio.connect_racing`; 200 ms before one was measured), so a
    long path pays at most a spare SYN, and a lost SYN or SYN-ACK costs one such wait."""

    def __init__(self) -> None:
        self.rtt: float | None = None

    def __call__(self, address, timeout=None, source_address=None, **_kw) -> socket.socket:
        timeout = timeout if isinstance(timeout, (int, float)) else 10.0
        host, port = address[0], address[1]
        last: OSError | None = None
        for fam, _type, _proto, _name, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
            key = (sockaddr[0], sockaddr[1])
            rtt = _RTTS.get(key)
            started = time.monotonic()
            try:
                sock, extra = connect_racing(key, timeout, syn_rto(rtt),
                                             local_ip=source_address[0] if source_address else None)
            except OSError as exc:
                last = exc
                continue
            if not extra:
                took = time.monotonic() - started
                _RTTS[key] = took if rtt is None else min(rtt, took)
            self.rtt = _RTTS.get(key)
            return sock
        raise last or OSError(f"{host} has no address")


class _HttpHandler(urllib.request.HTTPHandler):
    def __init__(self, connector: _Connector) -> None:
        super().__init__()
        self._connector = connector

    def http_open(self, req):
        return self.do_open(_connection(http.client.HTTPConnection, self._connector), req)


class _HttpsHandler(urllib.request.HTTPSHandler):
    def __init__(self, connector: _Connector, context: ssl.SSLContext) -> None:
        super().__init__(context=context)
        self._connector = connector

    def https_open(self, req):
        return self.do_open(_connection(http.client.HTTPSConnection, self._connector), req,
                            context=self._context)


def _connection(base: type, connector: _Connector):
    """``base`` (an http.client connection class) opening its socket through ``connector``."""
    def make(*args, **kwargs):
        conn = base(*args, **kwargs)
        conn._create_connection = connector
        return conn
    return make


class SignalingClient:
    """Talks to one signaling server. ``timeout`` bounds every plain request (seconds);
    ``tls`` says how an ``https://`` server is verified (default: the system trust store)."""

    def __init__(self, base_url: str, *, timeout: float = 10.0, use_env_proxy: bool = False,
                 tls: TlsOptions | None = None) -> None:
        self.base_url = parse_server_url(base_url)
        self.timeout = timeout
        self.tls = tls or TlsOptions()
        handlers: list = [] if use_env_proxy else [urllib.request.ProxyHandler({})]
        connector = self._connector = _Connector()
        handlers.append(_HttpHandler(connector))
        if self.base_url.startswith("https://"):
            handlers.append(_HttpsHandler(connector, context=self.tls.context()))
        self._opener = urllib.request.build_opener(*handlers)
        self._wait_timeout: float | None = None

    # -- API ---------------------------------------------------------------------------------
    @property
    def connect_rtt(self) -> float | None:
        """The fastest TCP connect to the server so far (seconds; ~one round trip), or None."""
        return self._connector.rtt

    def health(self) -> dict:
        """``GET /healthz``."""
        return self._request("GET", "/healthz")

    def info(self) -> dict:
        """``GET /v1/info``: STUN endpoints, wait timeout, what the server offers."""
        answer = self._request("GET", "/v1/info")
        if isinstance(answer.get("wait_timeout"), (int, float)):
            self._wait_timeout = float(answer["wait_timeout"])
        return answer

    def initiate(self, rendezvous: str, target_ip: str | list[str], protocol: str, *,
                 details: dict | None = None, timeout: float | None = None) -> dict:
        """Wait (long-poll) until the receiver at ``target_ip`` checks in with ``rendezvous``
        (a list names the receiver's IPs of both families: the first to check in wins).

        ``timeout`` defaults to the server's wait timeout (which also caps it).
        Raises :class:`PairingTimeout` if nobody came, :class:`PairingConflict` if
        another initiator already waits for this key and IP.
        """
        body: dict = {"rendezvous": _rendezvous(rendezvous), "target_ip": target_ip,
                      "protocol": protocol}
        if details:
            body["details"] = details
        if timeout is not None:
            body["timeout"] = timeout
            wait = float(timeout)
        else:
            if self._wait_timeout is None:
                self.info()
            wait = self._wait_timeout or 30.0
        return self._request("POST", "/v1/initiate", body, read_timeout=wait + LONG_POLL_MARGIN,
                             waiting_for=wait)

    def checkin(self, rendezvous: str, *, details: dict | None = None) -> dict:
        """Check in as the receiver; returns the waiting initiator's details at once.

        Raises :class:`NoInitiatorWaiting` when no initiator waits for this key and
        the IP the server sees this machine coming from.
        """
        body: dict = {"rendezvous": _rendezvous(rendezvous)}
        if details:
            body["details"] = details
        return self._request("POST", "/v1/checkin", body)

    # -- plumbing ----------------------------------------------------------------------------
    def post(self, path: str, body: dict) -> dict:
        """POST a JSON body to another route of the server (e.g. the probe-assist routes)."""
        return self._request("POST", path, body)

    def _request(self, method: str, path: str, body: dict | None = None, *,
                 read_timeout: float | None = None, waiting_for: float | None = None) -> dict:
        url = self.base_url + path
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with self._opener.open(req, timeout=read_timeout or self.timeout) as resp:
                return self._decode(resp.read(), resp.status, url)
        except urllib.error.HTTPError as exc:
            try:
                payload = exc.read()
            except OSError:
                payload = b""
            finally:
                exc.close()
            raise self._http_error(exc.code, payload, url) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, ssl.SSLError):
                raise self._tls_error(reason) from None
            if isinstance(reason, (TimeoutError, socket.timeout)) and waiting_for is not None:
                raise self._no_answer(url, waiting_for) from None
            raise ServerUnreachable(f"cannot reach the signaling server at {self.base_url}: {reason}",
                                    hint="check the URL and that `stunturn-diag serve` runs there") from None
        except (TimeoutError, socket.timeout):
            if waiting_for is not None:
                raise self._no_answer(url, waiting_for) from None
            raise ServerUnreachable(f"the signaling server at {self.base_url} did not answer within "
                                    f"{self.timeout:g}s", hint="is it overloaded or behind a firewall?") from None
        except ssl.SSLError as exc:
            raise self._tls_error(exc) from None
        except (ConnectionError, OSError) as exc:
            raise ServerUnreachable(f"connection to the signaling server at {self.base_url} failed: {exc}",
                                    hint="check that the server is running and reachable") from None

    def _tls_error(self, exc: ssl.SSLError) -> SignalingTlsError:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return SignalingTlsError(
                f"the TLS certificate of {self.base_url} did not verify: "
                f"{exc.verify_message or exc.reason or exc}",
                hint="for a private CA or a self-signed certificate pass --ca-file FILE "
                     "(--insecure skips the check: anyone on the path could then pose as the server)")
        return SignalingTlsError(f"TLS with {self.base_url} failed: {exc.reason or exc}",
                                 hint="is the server serving HTTPS on this port (serve --tls-cert)?")

    def _no_answer(self, url: str, waited: float) -> PairingTimeout:
        return PairingTimeout(f"no answer from {url} within {waited + LONG_POLL_MARGIN:g}s",
                              hint="the server should have answered by its wait timeout; "
                                   "is a proxy holding the request?", status=None, error="timeout")

    @staticmethod
    def _decode(payload: bytes, status: int, url: str) -> dict:
        try:
            answer = json.loads(payload)
        except ValueError:
            raise SignalingError(f"{url} answered {status} with something that is not JSON",
                                 hint="is this URL really a stunturn-diag signaling server?",
                                 status=status) from None
        if not isinstance(answer, dict):
            raise SignalingError(f"{url} answered {status} with JSON that is not an object",
                                 hint="is this URL really a stunturn-diag signaling server?", status=status)
        return answer

    @staticmethod
    def _http_error(status: int, payload: bytes, url: str) -> SignalingError:
        try:
            answer = json.loads(payload)
            if not isinstance(answer, dict):
                answer = {}
        except ValueError:
            answer = {}
        error = str(answer.get("error") or "")
        message = str(answer.get("message") or f"HTTP {status}")
        if status == 408 and error == "timeout":
            waited = answer.get("waited")
            suffix = f" (waited {waited}s)" if isinstance(waited, (int, float)) else ""
            return PairingTimeout(f"no receiver checked in{suffix}: {message}",
                                  hint="start the receiver while the initiator waits, with the same "
                                       "access key, from the IP the initiator named", status=status, error=error)
        if status == 404 and error == "no-initiator":
            return NoInitiatorWaiting(message, hint="the initiator must be waiting already and name "
                                                    "this machine's public IP as target", status=status, error=error)
        if status == 409 and error == "conflict":
            return PairingConflict(message, hint="another initiator uses this key for the same "
                                                 "target; wait for it or pick another key",
                                   status=status, error=error)
        if status == 429 and error == "rate-limited":
            wait = answer.get("retry_after")
            if "/v1/probe/" in url:        # probe-assist: a request budget, not failed pairings
                hint = ("the server limits probe-assist requests per address; wait a few "
                        "seconds between probes (punch reuses a cached profile)")
            else:
                hint = "check the access key and the target IP; the server limits failed attempts"
            return RateLimited(message, hint=hint, status=status, error=error,
                               retry_after=float(wait) if isinstance(wait, (int, float)) else 1.0)
        if not error:
            return SignalingError(f"{url} answered HTTP {status} without a signaling error body",
                                  hint="is this URL really a stunturn-diag signaling server?",
                                  status=status)
        hint = None
        if status == 400 and "access_key" in message and "upgrade the client" not in message:
            # a server from before issue 10 wants the key itself: never send it, upgrade it
            hint = ("this server predates the rendezvous field (it asks for the access key "
                    "itself); upgrade the server")
        return SignalingError(f"the signaling server rejected the request ({status} {error}): {message}",
                              hint=hint, status=status, error=error)
