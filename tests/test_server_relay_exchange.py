"""POST /v1/relay: the two peers of a match, and nobody else, swap their TURN relayed
addresses; bounded and expiring with the match's credential."""

from __future__ import annotations

import json

from stunturn_server.app import create_app
from stunturn_server.config import ServerConfig, TurnConfig
from stunturn_server.store import InMemoryStore
from test_server_turn_offer import TURN, _post, pair

A_RELAY, B_RELAY = {"ip": "198.51.100.10", "port": 50001}, {"ip": "198.51.100.10", "port": 50002}


def _app(store=None, transports=("udp",)):
    turn = TurnConfig(server=TURN.server, secret=TURN.secret, realm=TURN.realm,
                      transports=transports)
    return create_app(ServerConfig(stun_enabled=False, wait_timeout=10, turn=turn), store=store)


def _x(client, answer, relayed=None, token=None, match_id=None, transport=None):
    body = {"match_id": match_id or answer["match_id"],
            "token": token or answer["turn"]["exchange"]["token"]}
    if transport is not None:
        body["transport"] = transport
    if relayed is not None:
        body["relayed"] = relayed
    return _post(client, "/v1/relay", body, "192.0.2.99")


def test_both_peers_swap_their_relayed_addresses():
    app = _app()
    init, recv = pair(app)
    assert init["turn"]["exchange"]["path"] == "/v1/relay"
    assert init["turn"]["exchange"]["token"] != recv["turn"]["exchange"]["token"]
    c = app.test_client()
    first = _x(c, init, A_RELAY)
    assert first.status_code == 200 and first.get_json()["peer"] is None
    assert first.get_json()["role"] == "initiator"
    second = _x(c, recv, B_RELAY).get_json()
    assert second["role"] == "receiver" and second["peer"] == A_RELAY
    assert _x(c, init).get_json()["peer"] == B_RELAY          # a read without posting
    assert _x(c, init, A_RELAY).status_code == 200             # the same address again is fine
    moved = _x(c, init, {"ip": "203.0.113.9", "port": 1})
    assert moved.status_code == 409 and moved.get_json()["error"] == "conflict"
    assert _x(c, recv).get_json()["peer"] == A_RELAY           # the first one stays


def test_tcp_relayed_addresses_are_kept_apart_from_udp_ones():
    app = _app(transports="udp,tcp")
    init, recv = pair(app)
    c = app.test_client()
    a_tcp, b_tcp = {"ip": "198.51.100.10", "port": 50011}, {"ip": "198.51.100.10", "port": 50012}
    assert _x(c, init, A_RELAY).get_json()["transport"] == "udp"
    first = _x(c, init, a_tcp, transport="tcp").get_json()
    assert first["transport"] == "tcp" and first["peer"] is None      # not the UDP ones
    assert _x(c, recv, B_RELAY).get_json()["peer"] == A_RELAY
    assert _x(c, recv, b_tcp, transport="tcp").get_json()["peer"] == a_tcp
    assert _x(c, init, transport="tcp").get_json()["peer"] == b_tcp
    moved = _x(c, init, {"ip": "198.51.100.10", "port": 1}, transport="tcp")
    assert moved.status_code == 409
    # a relay that offers UDP only refuses a TCP exchange; unknown transports are 400
    udp_only = _app()
    init, _recv = pair(udp_only)
    r = _x(udp_only.test_client(), init, a_tcp, transport="tcp")
    assert r.status_code == 404 and r.get_json()["error"] == "no-relay"
    for transport in ("sctp", 6, "", None):
        body = {"match_id": init["match_id"], "token": init["turn"]["exchange"]["token"],
                "transport": transport}
        r = _post(udp_only.test_client(), "/v1/relay", body, "192.0.2.99")
        assert r.status_code == 400 and r.get_json()["error"] == "bad-request", transport


def test_only_the_matchs_tokens_are_accepted():
    app = _app()
    init, recv = pair(app)
    c = app.test_client()
    role, expires, mac = init["turn"]["exchange"]["token"].split(".")
    forged = [f"receiver.{expires}.{mac}", f"{role}.{int(expires) + 60}.{mac}",
              f"{role}.{expires}.{mac[:-2]}AA", "", "x" * 150]
    for token in forged:
        r = _x(c, init, A_RELAY, token=token or "-")
        assert r.status_code == 403 and r.get_json()["error"] == "forbidden", token
    other = _x(c, init, A_RELAY, match_id="00" * 16)
    assert other.status_code == 403
    body = json.dumps(_x(c, init, A_RELAY).get_json())
    assert TURN.secret not in body


def test_tokens_expire_with_the_credential():
    clock = [1_000_000.0]
    app = _app()
    init, _recv = pair(app)
    offer = app.extensions["stunturn_turn"]
    app.extensions["stunturn_turn"] = type(offer)(offer.ip, offer.port, offer.secret, offer.realm,
                                                  offer.ttl, lambda: clock[0])
    c = app.test_client()
    expires = init["turn"]["expires"]
    clock[0] = expires - 1
    assert _x(c, init, A_RELAY).status_code == 200
    clock[0] = expires
    r = _x(c, init, A_RELAY)
    assert r.status_code == 403 and r.get_json()["error"] == "expired"


def test_no_relay_offered_and_bad_bodies():
    plain = create_app(ServerConfig(stun_enabled=False))
    r = _post(plain.test_client(), "/v1/relay", {"match_id": "ab", "token": "t"}, "192.0.2.1")
    assert r.status_code == 404 and r.get_json()["error"] == "no-relay"
    c = _app().test_client()
    for body in ({"match_id": "ab"}, {"match_id": "ab", "token": "t", "extra": 1},
                 {"match_id": "ab", "token": "t", "relayed": {"ip": "x", "port": 1}},
                 {"match_id": "ab", "token": "t", "relayed": {"ip": "192.0.2.1", "port": 0}}):
        r = _post(c, "/v1/relay", body, "192.0.2.1")
        assert r.status_code == 400 and r.get_json()["error"] == "bad-request", body


def test_the_store_is_bounded_and_forgets_expired_addresses():
    store = InMemoryStore()
    store.relay_capacity = 2
    assert store.put_relay_address("m1", "initiator", ("192.0.2.1", 1), 10.0, 0.0) == "stored"
    assert store.put_relay_address("m1", "receiver", ("192.0.2.2", 2), 20.0, 0.0) == "stored"
    assert store.put_relay_address("m2", "initiator", ("192.0.2.3", 3), 20.0, 1.0) == "full"
    assert store.relay_address("m1", "initiator", 9.9) == ("192.0.2.1", 1)
    assert store.relay_address("m1", "initiator", 10.0) is None
    # the expired entry is dropped on the next post, which makes room
    assert store.put_relay_address("m2", "initiator", ("192.0.2.3", 3), 20.0, 10.0) == "stored"
    assert store.relay_address("m2", "receiver", 10.0) is None
    for role in ("initiator", "receiver"):
        assert store.put_relay_address("m3", role, ("192.0.2.4", 4), 2e10, 25.0) == "stored"
    app = _app(store=store)             # full with live entries (wall-clock expiry)
    init, _recv = pair(app)
    r = _x(app.test_client(), init, A_RELAY)
    assert r.status_code == 503 and r.get_json()["error"] == "busy"
