"""Server settings shared by the Flask app factory, the STUN responder and ``serve``."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from stunturn_diag.errors import ConfigError


def format_address(ip: str, port: int) -> str:
    """``ip:port``, or ``[ip]:port`` for IPv6 (RFC 3986 section 3.2.2)."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def bind_error(what: str, ip: str, port: int, exc: OSError, hints: dict[int, str]) -> ConfigError:
    """The :class:`ConfigError` for a failed bind of ``what`` on ``ip:port``; ``hints`` maps
    errno values to what to do. The error keeps ``exc.errno`` as ``.errno``."""
    error = ConfigError(f"cannot bind the {what} on {format_address(ip, port)}: {exc.strerror or exc}",
                        hint=hints.get(exc.errno))
    error.errno = exc.errno  # type: ignore[attr-defined]
    return error


@dataclass(frozen=True)
class StunEndpoint:
    """One address:port the STUN responder answers on (RFC 5780 section 7)."""

    ip: str
    port: int
    role: str  # "primary" | "alt-port" | "alt-ip" | "alt-both"

    def as_dict(self) -> dict:
        return {"ip": self.ip, "port": self.port, "role": self.role}


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
    log_level: str = "INFO"
    #: extra settings for extensions (store URL, rate limits...)
    extra: dict = field(default_factory=dict)

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
        if not isinstance(self.max_body, int) or not 256 <= self.max_body <= 1 << 20:
            raise ConfigError(f"max_body must be 256 bytes to 1 MiB, got {self.max_body!r}")

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
