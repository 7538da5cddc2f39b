"""Server settings shared by the Flask app factory, the STUN responder and ``serve``.

:class:`ServerConfig` holds the listen addresses and limits as typed fields, and each
optional part its own typed section, checked when it is made (a bad value is a
:class:`ConfigError` at start): :class:`TlsConfig` (HTTPS), :class:`TurnConfig` (the relay
offered to matched peers), :class:`ProbeAssistConfig` (the connect-back routes) and
:class:`StunLimits` (the STUN service's per-source and per-connection bounds).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, fields
from urllib.parse import urlsplit, urlunsplit

from stunturn_diag.errors import ConfigError
from stunturn_diag.sansio.netaddr import format_hostport, parse_hostport

from .sansio.stun_responder import StunEndpoint
from .sansio.validation import RELAY_TRANSPORTS


def bind_error(what: str, ip: str, port: int, exc: OSError, hints: dict[int, str]) -> ConfigError:
    """The :class:`ConfigError` for a failed bind of ``what`` on ``ip:port``; ``hints`` maps
    errno values to what to do. The error keeps ``exc.errno`` as ``.errno``."""
    error = ConfigError(f"cannot bind the {what} on {format_hostport(ip, port)}: {exc.strerror or exc}",
                        hint=hints.get(exc.errno))
    error.errno = exc.errno  # type: ignore[attr-defined]
    return error


def _number(section: str, name: str, value, *, integer: bool = False, minimum: float | None = None) -> None:
    """``value`` must be a number (an integer when ``integer``) above 0, or at least ``minimum``;
    else a :class:`ConfigError` naming ``section.name``."""
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not (
            value > 0 if minimum is None else value >= minimum):
        bound = "above 0" if minimum is None else f"at least {minimum:g}"
        raise ConfigError(f"{section}.{name} must be {'an integer' if integer else 'a number'} {bound}, "
                          f"got {value!r}")


@dataclass(frozen=True)
class TlsConfig:
    """Serve HTTPS (``serve --tls-cert/--tls-key``): a PEM certificate chain and its
    private key, both or neither."""

    cert: str | None = None
    key: str | None = None

    def __post_init__(self) -> None:
        if bool(self.cert) != bool(self.key):
            raise ConfigError("give both a TLS certificate and its key (--tls-cert and --tls-key)")

    @property
    def enabled(self) -> bool:
        return bool(self.cert)


@dataclass(frozen=True)
class TurnConfig:
    """The TURN relay offered to matched peers (``serve --turn-server/--turn-secret/--turn-realm``).

    ``server`` is "IP:PORT" of a TURN server (e.g. coturn) that shares ``secret`` through
    ``use-auth-secret`` / ``static-auth-secret``; ``realm`` is told to clients; ``ttl`` is
    how long a credential lives (seconds, 60..86400). No server and no secret: no relay.
    """

    server: str | None = None
    secret: str | None = field(default=None, repr=False)
    realm: str | None = None
    ttl: int = 600
    #: what the relay relays: "udp" and/or "tcp" (RFC 6062 TCP allocations); a tuple, a
    #: list or a comma-separated text, kept in TURN_TRANSPORTS order
    transports: tuple[str, ...] | str = ("udp",)
    #: ``(ip, port)`` of ``server`` (None without a relay), parsed when the section is made
    address: tuple[str, int] | None = field(init=False, default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        # checked with or without a relay: --turn-transports sctp is an error either way
        object.__setattr__(self, "transports", parse_transports(self.transports))
        if self.server is None and self.secret is None:
            return
        if not self.server or not self.secret:
            raise ConfigError("a TURN relay needs both --turn-server IP:PORT and --turn-secret",
                              hint="the secret is coturn's static-auth-secret")
        try:
            host, port = parse_hostport(str(self.server))
            ip = str(ipaddress.ip_address(host))
        except ValueError:
            raise ConfigError(f"--turn-server must be IP:PORT with a port 1..65535, got {self.server!r}",
                              hint="a numeric address the peers can reach, e.g. 198.51.100.10:3478") from None
        if isinstance(self.ttl, bool) or not isinstance(self.ttl, int) or not 60 <= self.ttl <= 86400:
            raise ConfigError(f"turn.ttl must be 60..86400 seconds, got {self.ttl!r}")
        object.__setattr__(self, "address", (ip, port))

    @property
    def enabled(self) -> bool:
        return self.address is not None


#: the transports a TURN relay may offer, in the order the offer lists them (the relay
#: exchange's ``transport`` is checked against the same list)
TURN_TRANSPORTS = RELAY_TRANSPORTS


def parse_transports(value) -> tuple[str, ...]:
    """``"udp,tcp"`` or ``["tcp"]`` -> the transports in :data:`TURN_TRANSPORTS` order."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(t, str) for t in items):
        raise ConfigError(f"turn.transports must be udp and/or tcp, got {value!r}")
    chosen = {t.strip().lower() for t in items if t.strip()}
    if not chosen or not chosen <= set(TURN_TRANSPORTS):
        raise ConfigError(f"--turn-transports must be udp, tcp or udp,tcp, got {value!r}",
                          hint="tcp needs a relay with RFC 6062 TCP allocations (coturn "
                               "without no-tcp-relay)")
    return tuple(t for t in TURN_TRANSPORTS if t in chosen)


@dataclass(frozen=True)
class ProbeAssistConfig:
    """The probe-assist routes (server-initiated TCP back to the caller: ``/v1/probe/*``).

    ``enabled``: ``create_app`` registers them (``/v1/info`` says ``"probe_assist"``);
    ``burst`` requests per source (IPv4 address / IPv6 /64) refilled at ``rate`` per
    second (429 beyond); ``concurrency`` connects in all (503 beyond) and at most
    ``concurrency_per_source`` of them for one source (429 beyond); ``allowed_hosts``:
    Host header values accepted besides this server's own addresses (``serve
    --allowed-host``, the DNS-rebinding guard).
    """

    enabled: bool = True
    burst: float = 10
    rate: float = 0.5
    concurrency: int = 32
    concurrency_per_source: int = 8
    allowed_hosts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"probe_assist.enabled must be true or false, got {self.enabled!r}")
        _number("probe_assist", "burst", self.burst, minimum=1)
        _number("probe_assist", "rate", self.rate)
        _number("probe_assist", "concurrency", self.concurrency, integer=True)
        _number("probe_assist", "concurrency_per_source", self.concurrency_per_source, integer=True)

    @property
    def per_source(self) -> int:
        """Connects one source may hold (never more than all of them)."""
        return min(self.concurrency, self.concurrency_per_source)


@dataclass(frozen=True)
class StunLimits:
    """Bounds of the STUN service (TCP connections, UDP answers); every value above 0."""

    max_connections: int = 256
    #: most connections one source (IPv4 address / IPv6 /64) may hold
    max_per_source: int = 16
    #: seconds a message may take from its first byte to its last
    message_timeout: float = 5.0
    idle_timeout: float = 30.0
    max_lifetime: float = 300.0
    max_bytes: int = 64 * 1024
    max_pending_out: int = 64 * 1024
    #: STUN over UDP: answers per source, burst and per second (the rest is dropped)
    udp_burst: int = 200
    udp_rate: float = 50.0

    def __post_init__(self) -> None:
        for f in fields(self):
            _number("stun_limits", f.name, getattr(self, f.name))


@dataclass(frozen=True)
class ServerConfig:
    """Everything the server needs; every field has a sane default."""

    http_host: str = "127.0.0.1"
    http_port: int = 8080
    #: address the STUN responder binds (defaults to ``http_host``)
    stun_host: str | None = None
    stun_port: int = 3478
    #: alternate IP for RFC 5780 behaviour tests; ``None`` disables them
    alt_ip: str | None = None
    alt_port: int = 3479
    #: longest time an initiator's long-poll is held (seconds)
    wait_timeout: float = 30.0
    #: most initiators one source may keep waiting at once (IPv4 address, IPv6 /64);
    #: more get 429 so one host cannot exhaust the server's sockets
    max_waiters_per_ip: int = 256
    #: most HTTP connections one source may hold open at once (waiting or idle); more are
    #: answered 429 and closed before anything is read
    max_connections_per_ip: int = 512
    #: largest accepted HTTP request body (bytes)
    max_body: int = 16 * 1024
    #: seconds an HTTP client may stay silent mid-request or idle between requests
    #: (does not limit the long-poll wait itself)
    http_io_timeout: float = 60.0
    #: run the STUN responder beside HTTP
    stun_enabled: bool = True
    # -- trust (issue 10): TLS, trusted proxies, fair sharing; see README "Security model" --
    #: serve HTTPS (a certificate chain and its key)
    tls: TlsConfig = field(default_factory=TlsConfig)
    #: networks (CIDR) whose peers may name the client: Forwarded / X-Forwarded-For / PROXY protocol
    trusted_proxies: tuple[str, ...] = ()
    #: most HTTP connections in all; more are closed at once, nothing read
    max_connections: int = 25_000
    #: most initiators waiting in all (every source together); more get 429
    max_waiters: int = 20_000
    #: seconds from a request's first byte to its last (request line, headers, body)
    http_request_timeout: float = 10.0
    #: failed pairing attempts (initiate 408/409, check-in 404): burst and refill per second,
    #: per source (IPv4 address / IPv6 /64) and per target IP; over it: 429 with Retry-After
    failure_burst: int = 30
    failure_rate: float = 1.0
    target_failure_burst: int = 60
    target_failure_rate: float = 2.0
    log_level: str = "INFO"
    #: the TURN relay offered to matched peers (none by default)
    turn: TurnConfig = field(default_factory=TurnConfig)
    #: the probe-assist routes (on by default) and their limits
    probe_assist: ProbeAssistConfig = field(default_factory=ProbeAssistConfig)
    #: the STUN service's limits
    stun_limits: StunLimits = field(default_factory=StunLimits)
    #: ``redis://[:PASSWORD@]HOST:PORT/DB`` or ``rediss://`` (TLS): pair through a Redis shared
    #: by several instances; ``None`` keeps pairing in this process's memory
    redis_url: str | None = field(default=None, repr=False)
    #: Redis password when the URL has none (``serve --redis-password-file``)
    redis_password: str | None = field(default=None, repr=False)
    #: most Redis command connections per instance (pub/sub takes one more); waiting
    #: initiators hold none, so this bounds concurrent Redis commands, not waiters
    redis_pool_size: int = 64
    #: seconds a Redis command may take (a wait for a free connection: 4 times that) before
    #: the request answers 503 store-unavailable
    redis_timeout: float = 5.0
    #: prefix of every Redis key and channel (several deployments can share one Redis DB)
    redis_prefix: str = "stunturn:"
    #: key-hashing secret, 16-64 bytes; ``None`` = random per process (one instance only).
    #: Instances sharing a Redis must share it (``serve --secret-file``, STUNTURN_SERVER_SECRET)
    key_secret: bytes | None = field(default=None, repr=False)
    #: ``(host, port)`` of a separate listener for ``GET /metrics``; ``None`` serves it on
    #: the main HTTP port
    metrics_listen: tuple[str, int] | None = None
    #: ``"text"`` or ``"json"`` (one JSON object per line) log lines
    log_format: str = "text"
    #: dual stack: this host's IPv6 address; HTTP listens on it too (same port) and the
    #: IPv6 STUN responder's primary is ``[http_host6]:stun_port`` (``http_host`` is IPv4)
    http_host6: str | None = None
    #: the IPv6 alternate for the RFC 5780 tests over IPv6 (needs ``http_host6``)
    alt_ip6: str | None = None

    def __post_init__(self) -> None:
        for name in ("http_host",) + (("stun_host",) if self.stun_host else ()) + (
                ("alt_ip",) if self.alt_ip else ()):
            value = getattr(self, name)
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise ConfigError(f"{name} must be an IP address, got {value!r}",
                                  hint="use a numeric address such as 127.0.0.1") from None
        for name in ("http_port", "stun_port", "alt_port"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value <= 65535:
                raise ConfigError(f"{name} must be a port 0-65535, got {value!r}")
        if self.stun_port == self.alt_port and self.stun_port != 0:
            raise ConfigError("stun_port and alt_port must differ",
                              hint="RFC 5780 needs two distinct ports")
        stun_ports = {self.stun_port} | ({self.alt_port} if self.alt_ip else set())
        if self.stun_enabled and self.http_port and self.http_port in stun_ports and self._stun_shares_host():
            raise ConfigError(f"the HTTP port {self.http_port} is also a STUN port (STUN listens on TCP too)",
                              hint="choose another HTTP port or other --stun-port/--alt-port values")
        if not (0 < self.wait_timeout <= 3600):
            raise ConfigError(f"wait_timeout must be in (0, 3600] seconds, got {self.wait_timeout}")
        if not (0 < self.http_io_timeout <= 3600):
            raise ConfigError(f"http_io_timeout must be in (0, 3600] seconds, got {self.http_io_timeout}")
        for name in ("max_waiters_per_ip", "max_connections_per_ip"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1_000_000:
                raise ConfigError(f"{name} must be 1 to 1000000, got {value!r}")
        if self.max_connections_per_ip < self.max_waiters_per_ip:
            raise ConfigError(f"max_connections_per_ip ({self.max_connections_per_ip}) must be at least "
                              f"max_waiters_per_ip ({self.max_waiters_per_ip})",
                              hint="every waiting initiator holds a connection")
        for name, kind in (("tls", TlsConfig), ("turn", TurnConfig), ("probe_assist", ProbeAssistConfig),
                           ("stun_limits", StunLimits)):
            if not isinstance(getattr(self, name), kind):
                raise ConfigError(f"{name} must be a {kind.__name__}, got {getattr(self, name)!r}")
        for name in ("max_connections", "max_waiters", "failure_burst", "target_failure_burst"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10_000_000:
                raise ConfigError(f"{name} must be 1 to 10000000, got {value!r}")
        for name in ("failure_rate", "target_failure_rate"):
            if not 0 < getattr(self, name) <= 1_000_000:
                raise ConfigError(f"{name} must be a positive number of failures per second")
        if not (0 < self.http_request_timeout <= 3600):
            raise ConfigError(f"http_request_timeout must be in (0, 3600] seconds, "
                              f"got {self.http_request_timeout}")
        if not isinstance(self.max_body, int) or not 256 <= self.max_body <= 1 << 20:
            raise ConfigError(f"max_body must be 256 bytes to 1 MiB, got {self.max_body!r}")
        self._check_scale_out()
        self._check_dual_stack()

    def _check_dual_stack(self) -> None:
        """``http_host6`` / ``alt_ip6``: IPv6 addresses beside an IPv4 ``http_host``."""
        for name in ("http_host6", "alt_ip6"):
            value = getattr(self, name)
            if value is None:
                continue
            try:
                ok = ipaddress.ip_address(value).version == 6
            except ValueError:
                ok = False
            if not ok:
                raise ConfigError(f"{name} must be an IPv6 address, got {value!r}",
                                  hint="e.g. serve 198.51.100.10:8080 --ip6 2001:db8::10")
        if self.alt_ip6 and not self.http_host6:
            raise ConfigError("alt_ip6 needs http_host6 (the IPv6 primary)",
                              hint="give --ip6 with --alt-ip6")
        if self.http_host6 and ipaddress.ip_address(self.http_host).version != 4:
            raise ConfigError("http_host6 goes beside an IPv4 listen address",
                              hint="listen on IPv4 and give the IPv6 address with --ip6, or "
                                   "listen on [IPv6]:PORT alone")

    def family_config(self, version: int) -> "ServerConfig | None":
        """The configuration one IP family is served with: ``self`` for the listen
        address's own family, for IPv6 beside IPv4 the view with ``http_host6`` /
        ``alt_ip6`` as host and alternate; None when that family is not served."""
        if ipaddress.ip_address(self.stun_ip).version == version:
            return self
        if version == 6 and self.http_host6:
            from dataclasses import replace
            return replace(self, http_host=self.http_host6, stun_host=None, alt_ip=self.alt_ip6,
                           http_host6=None, alt_ip6=None)
        return None

    def for_peer(self, ip: str) -> "ServerConfig":
        """The family view (:meth:`family_config`) for a client at ``ip``, else ``self``."""
        return self.family_config(ipaddress.ip_address(ip).version) or self

    def _check_scale_out(self) -> None:
        """Redis, the shared secret, metrics and log settings."""
        if self.key_secret is not None and not (isinstance(self.key_secret, bytes)
                                                and 16 <= len(self.key_secret) <= 64):
            raise ConfigError("the key-hashing secret must be 16 to 64 bytes",
                              hint="e.g. head -c 32 /dev/urandom | base64 > secret; give every "
                                   "instance the same file")
        if self.redis_url is not None:
            parts = urlsplit(self.redis_url)
            if parts.scheme not in ("redis", "rediss") or not parts.hostname:
                raise ConfigError(f"invalid Redis URL {redact_url(self.redis_url)!r}",
                                  hint="use redis://HOST:PORT/DB or rediss://HOST:PORT/DB (TLS)")
            try:
                parts.port
            except ValueError:
                raise ConfigError(f"invalid port in the Redis URL {redact_url(self.redis_url)!r}") from None
            if self.key_secret is None:
                raise ConfigError("several instances sharing a Redis must hash access keys with the "
                                  "same secret, and none was given",
                                  hint="serve --secret-file PATH or STUNTURN_SERVER_SECRET, identical "
                                       "on every instance")
        if isinstance(self.redis_pool_size, bool) or not isinstance(self.redis_pool_size, int) or \
                not 1 <= self.redis_pool_size <= 4096:
            raise ConfigError(f"redis_pool_size must be 1 to 4096, got {self.redis_pool_size!r}")
        if not 0 < self.redis_timeout <= 60:
            raise ConfigError(f"redis_timeout must be in (0, 60] seconds, got {self.redis_timeout}")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"log_format must be text or json, got {self.log_format!r}")

    def _stun_shares_host(self) -> bool:
        http, stun = ipaddress.ip_address(self.http_host), ipaddress.ip_address(self.stun_ip)
        return http == stun or http.is_unspecified or stun.is_unspecified

    @property
    def stun_ip(self) -> str:
        return self.stun_host or self.http_host

    def stun_endpoints(self) -> list[StunEndpoint]:
        """The STUN endpoints this configuration serves (primary first)."""
        eps = [StunEndpoint(self.stun_ip, self.stun_port, "primary")]
        if self.alt_ip:
            eps += [
                StunEndpoint(self.stun_ip, self.alt_port, "alt-port"),
                StunEndpoint(self.alt_ip, self.stun_port, "alt-ip"),
                StunEndpoint(self.alt_ip, self.alt_port, "alt-both"),
            ]
        return eps


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (safe to log)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


SECRET_ENV = "STUNTURN_SERVER_SECRET"


def load_secret(path: str | None = None, environ=os.environ) -> bytes | None:
    """The key-hashing secret from ``path`` (a file; trailing newlines dropped) or else the
    ``STUNTURN_SERVER_SECRET`` environment variable; ``None`` when neither is given."""
    if path:
        try:
            with open(path, "rb") as handle:
                data = handle.read(4096).rstrip(b"\r\n")
        except OSError as exc:
            raise ConfigError(f"cannot read the secret file {path}: {exc.strerror or exc}",
                              hint="give a readable file holding 16-64 bytes") from None
    elif environ.get(SECRET_ENV):
        data = environ[SECRET_ENV].encode()
    else:
        return None
    if not 16 <= len(data) <= 64:
        raise ConfigError(f"the key-hashing secret is {len(data)} bytes; it must be 16 to 64",
                          hint="e.g. head -c 32 /dev/urandom | base64 > secret (44 bytes)")
    return data


def read_password_file(path: str) -> str:
    """A Redis password from ``path`` (first line)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the Redis password file {path}: {exc}") from None


def _flag(text: str) -> bool:
    """``1/true/yes/on`` or ``0/false/no/off`` (any case)."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def _names(text: str) -> tuple[str, ...]:
    """A comma-separated list, blanks dropped."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


#: environment variables read by :func:`config_from_env` (the WSGI entry) -> field, type; a
#: field ``section.name`` is that field of a typed section (``turn.server``: TurnConfig.server)
ENV_SETTINGS = {
    "STUNTURN_REDIS_URL": ("redis_url", str),
    "STUNTURN_REDIS_POOL_SIZE": ("redis_pool_size", int),
    "STUNTURN_REDIS_TIMEOUT": ("redis_timeout", float),
    "STUNTURN_REDIS_PREFIX": ("redis_prefix", str),
    "STUNTURN_WAIT_TIMEOUT": ("wait_timeout", float),
    "STUNTURN_MAX_WAITERS_PER_IP": ("max_waiters_per_ip", int),
    "STUNTURN_MAX_WAITERS": ("max_waiters", int),
    "STUNTURN_FAILURE_BURST": ("failure_burst", int),
    "STUNTURN_FAILURE_RATE": ("failure_rate", float),
    "STUNTURN_TARGET_FAILURE_BURST": ("target_failure_burst", int),
    "STUNTURN_TARGET_FAILURE_RATE": ("target_failure_rate", float),
    "STUNTURN_MAX_BODY": ("max_body", int),
    "STUNTURN_LOG_LEVEL": ("log_level", str),
    "STUNTURN_LOG_FORMAT": ("log_format", str),
    "STUNTURN_TURN_SERVER": ("turn.server", str),
    "STUNTURN_TURN_SECRET": ("turn.secret", str),
    "STUNTURN_TURN_REALM": ("turn.realm", str),
    "STUNTURN_TURN_TTL": ("turn.ttl", int),
    "STUNTURN_TURN_TRANSPORTS": ("turn.transports", str),
    "STUNTURN_PROBE_ASSIST": ("probe_assist.enabled", _flag),
    "STUNTURN_ALLOWED_HOSTS": ("probe_assist.allowed_hosts", _names),
}
#: the typed sections :data:`ENV_SETTINGS` may fill
_SECTIONS = {"turn": TurnConfig, "probe_assist": ProbeAssistConfig}


def config_from_env(environ=os.environ) -> ServerConfig:
    """A :class:`ServerConfig` from ``STUNTURN_*`` variables (see :data:`ENV_SETTINGS`), plus
    the secret (``STUNTURN_SERVER_SECRET_FILE`` or ``STUNTURN_SERVER_SECRET``) and the Redis
    password file (``STUNTURN_REDIS_PASSWORD_FILE``). STUN is off: a WSGI server runs HTTP only."""
    values: dict = {"stun_enabled": False}
    sections: dict[str, dict] = {name: {} for name in _SECTIONS}
    for name, (field_name, kind) in ENV_SETTINGS.items():
        text = environ.get(name)
        if text:
            try:
                value = kind(text)
            except ValueError:
                raise ConfigError(f"{name}={text!r} is not a valid "
                                  f"{getattr(kind, '__name__', 'value').strip('_')}") from None
            section, _, key = field_name.rpartition(".")
            (sections[section] if section else values)[key] = value
    for section, given in sections.items():
        if given:
            values[section] = _SECTIONS[section](**given)
    values["key_secret"] = load_secret(environ.get("STUNTURN_SERVER_SECRET_FILE"), environ)
    if environ.get("STUNTURN_REDIS_PASSWORD_FILE"):
        values["redis_password"] = read_password_file(environ["STUNTURN_REDIS_PASSWORD_FILE"])
    return ServerConfig(**values)
