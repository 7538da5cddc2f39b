"""The TURN relay a server offers its matched peers (``serve --turn-server/--turn-secret``).

Settings in ``ServerConfig.turn`` (a :class:`~stunturn_server.config.TurnConfig`, checked
when it is made: a bad value is a ConfigError at start): ``server`` ("IP:PORT" of a TURN
server, e.g. coturn, that shares ``secret`` through ``use-auth-secret`` /
``static-auth-secret``), ``realm`` (optional, told to clients), ``ttl`` (seconds a
credential lives, default 600, 60..86400), ``transports`` (what the relay
relays: ``udp`` and/or ``tcp``, RFC 6062 TCP allocations).

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
import secrets
import time
from dataclasses import dataclass
from typing import Callable

from flask import current_app

from stunturn_diag.sansio.netaddr import format_hostport
from stunturn_diag.sansio.turn.rest import rest_credentials

from .config import TURN_TRANSPORTS, TurnConfig
from .http import app_context

#: where the peers of a match post and read their relayed addresses (server/relay_api.py)
EXCHANGE_PATH = "/v1/relay"
ROLES = ("initiator", "receiver")
#: relayed transports a relay may offer (udp: RFC 8656; tcp: RFC 6062 allocations)
TRANSPORTS = TURN_TRANSPORTS


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
        host = format_hostport(self.ip, self.port)
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


def offer_of(turn: TurnConfig, wall_clock: Callable[[], float] = time.time) -> TurnOffer | None:
    """The offer a configuration makes, None when no relay is configured."""
    if turn.address is None:
        return None
    ip, port = turn.address
    return TurnOffer(ip, port, str(turn.secret), str(turn.realm) if turn.realm else None, turn.ttl,
                     wall_clock, tuple(turn.transports))


def init_app(app) -> None:
    app.extensions["stunturn_turn"] = offer_of(app_context(app).config.turn)


def current_offer() -> TurnOffer | None:
    """The relay this app offers (None: none)."""
    return current_app.extensions.get("stunturn_turn")


def info() -> dict:
    """``/v1/info``'s ``turn``: whether a relay is offered (no address, no credential)."""
    offer = current_offer()
    return {"enabled": offer is not None, "transports": list(offer.transports) if offer else []}


def with_credentials(answer: dict) -> dict:
    """A match answer plus this peer's TURN credential (and exchange token) when a relay
    is offered."""
    offer = current_offer()
    if offer is None:
        return answer
    return answer | {"turn": offer.credentials(str(answer.get("match_id", "")),
                                               str(answer.get("role", "")))}
