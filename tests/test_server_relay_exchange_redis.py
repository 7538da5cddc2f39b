"""The relayed-address exchange across two instances sharing a real redis-server: the
initiator posts at A, the receiver at B, each reads the other's; the first address of a
role stays; the keys expire with the credential."""

from __future__ import annotations

import pytest

from redislib import RedisServer
from stunturn_server.config import TurnConfig
from stunturn_server.runner import start_server
from test_server_longpoll import checkin, in_background, initiate, request
from test_server_redis import config
from testlib import wait_for

TURN = TurnConfig(server="198.51.100.10:3478", secret="relay-secret")
A_RELAY, B_RELAY = {"ip": "198.51.100.10", "port": 50001}, {"ip": "2001:db8::1", "port": 50002}


@pytest.fixture
def redis_server():
    server = RedisServer().start()
    yield server
    server.close()


def _post(server, answer, relayed=None):
    body = {"match_id": answer["match_id"], "token": answer["turn"]["exchange"]["token"]}
    if relayed:
        body["relayed"] = relayed
    return request(server, "POST", "/v1/relay", body, timeout=10)


def test_the_exchange_works_across_instances(redis_server):
    a = start_server(config(redis_server, turn=TURN))
    b = start_server(config(redis_server, turn=TURN))
    try:
        thread, result = in_background(initiate, a)
        wait_for(lambda: request(a, "GET", "/healthz")[1]["waiting"] == 1, what="waiting on A")
        status, receiver = checkin(b)
        thread.join(10)
        assert status == 200 and result["value"][0] == 200
        initiator = result["value"][1]
        assert _post(a, initiator, A_RELAY) == (200, {"role": "initiator", "peer": None,
                                                      "transport": "udp",
                                                      "expires": initiator["turn"]["expires"]})
        status, got = _post(b, receiver, B_RELAY)
        assert status == 200 and got["peer"] == A_RELAY
        assert _post(a, initiator)[1]["peer"] == B_RELAY          # IPv6 text survives
        assert _post(b, initiator, {"ip": "192.0.2.1", "port": 9})[0] == 409
        assert _post(b, initiator)[0] == 200 and _post(a, receiver)[1]["peer"] == A_RELAY
        reply = redis_server.command("PTTL", f"stunturn:relay:{initiator['match_id']}:initiator")
        ttl = int(reply.strip().lstrip(b":"))       # RESP integer reply
        assert 0 < ttl <= 600_000
    finally:
        b.stop()
        a.stop()
