"""The TURN relay a server offers its matched peers (``serve --turn-server/--turn-secret``).

Settings in ``ServerConfig.extra``: ``turn_server`` ("HOST:PORT" of a TURN server, e.g.
coturn, that shares ``turn_secret`` through ``use-auth-secret`` /
``static-auth-secret``), ``turn_realm`` (optional, told to clients), ``turn_ttl``
(seconds a credential lives, default 600, 60..86400), ``turn_transports`` (what the
relay relays: ``"udp"`` and/or ``"tcp"``, RFC 6062 TCP allocations, default udp; a list
or a comma-separated text). :func:`init_app` checks them once (a bad value is a
ConfigError at start).

Both peers of a match, and nobody else, get their own short-lived TURN REST API
credential in the match answer (``"turn": {"server", "urls", "username", "password",
"ttl", "expires", "realm"}``, :func:`stunturn_diag.turn.rest_credentials`); ``/v1/info``
only says whether a relay is offered. The expiry is wall-clock (Unix) time because the
TURN server checks it against its own clock.

Each credential also carries ``exchange``: the path of the per-match relayed-address
exchange (:mod:`.relay_api`) and this peer's match token, ``role.expires.mac`` with an
HMAC-SHA256 over (match id, role, expiry) under a key derived from the TURN secret (so
every server instance sharing the secret accepts it, and no store holds tokens).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import time
from dataclasses import dataclass
from typing import Callable

from flask import current_app

from stunturn_diag.errors import ConfigError
from stunturn_diag.sansio.turn.rest import rest_credentials

from .config import format_address

DEFAULT_TTL = 600
#: where the peers of a match post and read their relayed addresses (server/relay_api.py)
EXCHANGE_PATH = "/v1/relay"
ROLES = ("initiator", "receiver")
#: relayed transports a relay may offer (udp: RFC 8656; tcp: RFC 6062 allocations)
TRANSPORTS = ("udp", "tcp")


@dataclass(frozen=True)
class TurnOffer:
    ip: str
    port: int
    secret: str
    realm: str | None
    ttl: int
    wall_clock: Callable[[], float] = time.time
    transports: tuple[str, ...] = ("udp",)

    def credentials(self, match_id: str = "", role: str = "") -> dict:
        """A fresh credential for one peer (a new random id each call); with the match id
        and role, its exchange token too."""
        cred = rest_credentials(self.secret, now=self.wall_clock(), ttl=self.ttl,
                                random_id=secrets.token_hex(8))
        host = format_address(self.ip, self.port)
        out = cred | {"server": {"ip": self.ip, "port": self.port},
                      "urls": [f"turn:{host}?transport={t}" for t in self.transports],
                      "transports": list(self.transports), "realm": self.realm}
        if match_id and role in ROLES:
            out["exchange"] = {"path": EXCHANGE_PATH,
                               "token": self.match_token(match_id, role, int(cred["expires"]))}
        return out

    def _token_key(self) -> bytes:
        return hmac.new(self.secret.encode(), b"stunturn relay exchange", hashlib.sha256).digest()

    def _mac(self, match_id: str, role: str, expires: int) -> str:
        mac = hmac.new(self._token_key(), f"{match_id}|{role}|{expires}".encode(),
                       hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def match_token(self, match_id: str, role: str, expires: int) -> str:
        """``role.expires.mac``: lets only this peer of this match use the exchange."""
        return f"{role}.{expires}.{self._mac(match_id, role, expires)}"

    def check_token(self, match_id: str, token: str) -> tuple[str, int] | str:
        """``(role, expires)`` of a valid token for ``match_id``, else why not
        (``"forbidden"`` or ``"expired"``). Pure but for the wall clock."""
        role, _, rest = token.partition(".")
        expires_text, _, mac = rest.partition(".")
        if role not in ROLES or not expires_text.isdigit() or len(expires_text) > 12:
            return "forbidden"
        expires = int(expires_text)
        if not hmac.compare_digest(mac.encode(), self._mac(match_id, role, expires).encode()):
            return "forbidden"
        if expires <= self.wall_clock():
            return "expired"
        return role, expires


def parse_offer(extra: dict, wall_clock: Callable[[], float] = time.time) -> TurnOffer | None:
    """The offer from ``config.extra``, None when no relay is configured (pure)."""
    server, secret = extra.get("turn_server"), extra.get("turn_secret")
    if server is None and secret is None:
        return None
    if not server or not secret:
        raise ConfigError("a TURN relay needs both --turn-server IP:PORT and --turn-secret",
                          hint="the secret is coturn's static-auth-secret")
    host, sep, port_text = str(server).rpartition(":")
    host = host.strip("[]")
    try:
        ip = str(ipaddress.ip_address(host))
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"--turn-server must be IP:PORT, got {server!r}",
                          hint="a numeric address the peers can reach, e.g. 198.51.100.10:3478") from None
    if not sep or not 1 <= port <= 65535:
        raise ConfigError(f"--turn-server port must be 1..65535, got {server!r}")
    ttl = extra.get("turn_ttl", DEFAULT_TTL)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 60 <= ttl <= 86400:
        raise ConfigError(f"turn_ttl must be 60..86400 seconds, got {ttl!r}")
    realm = extra.get("turn_realm")
    return TurnOffer(ip, port, str(secret), str(realm) if realm else None, ttl, wall_clock,
                     parse_transports(extra.get("turn_transports", "udp")))


def parse_transports(value) -> tuple[str, ...]:
    """``"udp,tcp"`` or ``["tcp"]`` -> the transports in TRANSPORTS order (pure)."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(t, str) for t in items):
        raise ConfigError(f"turn_transports must be udp and/or tcp, got {value!r}")
    chosen = {t.strip().lower() for t in items if t.strip()}
    if not chosen or not chosen <= set(TRANSPORTS):
        raise ConfigError(f"--turn-transports must be udp, tcp or udp,tcp, got {value!r}",
                          hint="tcp needs a relay with RFC 6062 TCP allocations (coturn "
                               "without no-tcp-relay)")
    return tuple(t for t in TRANSPORTS if t in chosen)


def init_app(app) -> None:
    config = app.extensions["stunturn"].config
    app.extensions["stunturn_turn"] = parse_offer(config.extra or {})


def _offer() -> TurnOffer | None:
    return current_app.extensions.get("stunturn_turn")


def info() -> dict:
    """``/v1/info``'s ``turn``: whether a relay is offered (no address, no credential)."""
    offer = _offer()
    return {"enabled": offer is not None, "transports": list(offer.transports) if offer else []}


def with_credentials(answer: dict) -> dict:
    """A match answer plus this peer's TURN credential (and exchange token) when a relay
    is offered."""
    offer = _offer()
    if offer is None:
        return answer
    return answer | {"turn": offer.credentials(str(answer.get("match_id", "")),
                                               str(answer.get("role", "")))}
