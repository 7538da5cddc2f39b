"""The per-match relayed-address exchange: ``POST /v1/relay`` (its own blueprint).

After a match both peers allocate a relay on the offered TURN server
(:mod:`.turn_offer`) and need each other's relayed address (RFC 8656 section 9: a
permission is per peer address) without a new pairing round. Each posts its own and
reads the other's here::

    POST /v1/relay {"match_id": hex, "token": str, "relayed"?: {"ip", "port"},
                    "transport"?: "udp" | "tcp"}
    200 {"role", "transport", "peer": {"ip", "port"} | null, "expires"}
    400 {"error": "bad-request"}              a malformed body (an unknown transport too)
    403 {"error": "forbidden" | "expired"}   not this match's token, or it expired
    404 {"error": "no-relay"}                 this server offers no relay (for that transport)
    409 {"error": "conflict"}                 this role already posted another address
    503 {"error": "busy"}                     the store holds its limit of addresses

Only the two peers of a match can post or read: the token (from the match answer's
``turn.exchange``) names the role and expiry and is MAC'd over the match id. The
store keeps at most one address per role, until the token's expiry (the match's TURN
credential's), and a bounded number overall
(:meth:`stunturn_server.sansio.matching.MatchStore.put_relay_address`).
A TCP punch's peers exchange their RFC 6062 TCP allocations' addresses with
``"transport": "tcp"`` (default ``"udp"``): kept apart from UDP ones (the store's role
is ``role:tcp``), offered only when the relay lists tcp (``--turn-transports``).
"""

from __future__ import annotations

from flask import Blueprint, jsonify

from . import turn_offer
from .http import ApiError, app_context, json_body
from .sansio.validation import exchange_request

bp = Blueprint("relay", __name__)


def _addr(address) -> dict | None:
    return None if address is None else {"ip": address[0], "port": address[1]}


@bp.post(turn_offer.EXCHANGE_PATH)
def exchange():
    offer = turn_offer.current_offer()
    req = json_body(exchange_request)
    if offer is None:
        raise ApiError(404, "no-relay", "this server offers no TURN relay (serve --turn-server)")
    if req.transport not in offer.transports:
        raise ApiError(404, "no-relay", f"this server's TURN relay offers no {req.transport} "
                       "relaying (serve --turn-transports)")
    checked = offer.check_token(req.match_id, req.token)
    if isinstance(checked, str):
        raise ApiError(403, checked, "this token is not one this server issued for this match"
                       if checked == "forbidden" else "this match's relay exchange has expired")
    role, expires = checked
    store = app_context().store
    now = offer.wall_clock()    # the token's expiry is wall-clock time (the TURN server's)
    slot = role if req.transport == "udp" else f"{role}:{req.transport}"
    if req.relayed is not None:
        outcome = store.put_relay_address(req.match_id, slot, req.relayed, float(expires), now)
        if outcome == "conflict":
            raise ApiError(409, "conflict", f"the {role} of this match already posted another "
                           "relayed address")
        if outcome == "full":
            raise ApiError(503, "busy", "the server holds its limit of relayed addresses; "
                           "try again shortly")
    other = "receiver" if role == "initiator" else "initiator"
    other = other if req.transport == "udp" else f"{other}:{req.transport}"
    return jsonify({"role": role, "transport": req.transport, "expires": expires,
                    "peer": _addr(store.relay_address(req.match_id, other, now))})
