"""The TURN relay a server offers its matched peers (``serve --turn-server/--turn-secret``).

Settings in ``ServerConfig.extra``: ``turn_server`` ("HOST:PORT" of a TURN server, e.g.
coturn, that shares ``turn_secret`` through ``use-auth-secret`` /
``static-auth-secret``), ``turn_realm`` (optional, told to clients), ``turn_ttl``
(seconds a credential lives, default 600, 60..86400). :func:`init_app` checks them once
(a bad value is a ConfigError at start).

Both peers of a match, and nobody else, get their own short-lived TURN REST API
credential in the match answer (``"turn": {"server", "urls", "username", "password",
"ttl", "expires", "realm"}``, :func:`stunturn_diag.turn.rest_credentials`); ``/v1/info``
only says whether a relay is offered. The expiry is wall-clock (Unix) time because the
TURN server checks it against its own clock.
"""

from __future__ import annotations

import ipaddress
import secrets
import time
from dataclasses import dataclass
from typing import Callable

from flask import current_app

from stunturn_diag.errors import ConfigError
from stunturn_diag.turn.rest import rest_credentials

from .config import format_address

DEFAULT_TTL = 600


@dataclass(frozen=True)
class TurnOffer:
    ip: str
    port: int
    secret: str
    realm: str | None
    ttl: int
    wall_clock: Callable[[], float] = time.time

    def credentials(self) -> dict:
        """A fresh credential for one peer (a new random id each call)."""
        cred = rest_credentials(self.secret, now=self.wall_clock(), ttl=self.ttl,
                                random_id=secrets.token_hex(8))
        host = format_address(self.ip, self.port)
        return cred | {"server": {"ip": self.ip, "port": self.port},
                       "urls": [f"turn:{host}?transport=udp"], "realm": self.realm}


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
    return TurnOffer(ip, port, str(secret), str(realm) if realm else None, ttl, wall_clock)


def init_app(app) -> None:
    config = app.extensions["stunturn"].config
    app.extensions["stunturn_turn"] = parse_offer(config.extra or {})


def _offer() -> TurnOffer | None:
    return current_app.extensions.get("stunturn_turn")


def info() -> dict:
    """``/v1/info``'s ``turn``: whether a relay is offered (no address, no credential)."""
    offer = _offer()
    return {"enabled": offer is not None, "transports": ["udp"] if offer else []}


def with_credentials(answer: dict) -> dict:
    """A match answer plus this peer's TURN credential when a relay is offered."""
    offer = _offer()
    return answer if offer is None else answer | {"turn": offer.credentials()}
