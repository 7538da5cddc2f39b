"""`serve --turn-server/--turn-secret`: both peers of a match, and nobody else, get
short-lived TURN REST credentials; /v1/info only says a relay is offered."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time

import pytest

from stunturn_diag.errors import ConfigError
from stunturn_server.app import create_app
from stunturn_server.config import ServerConfig, TurnConfig, config_from_env

KEY = "7e" * 32          # a rendezvous identifier (64 hex digits)
RECEIVER_IP, INITIATOR_IP = "203.0.113.7", "198.51.100.10"
SECRET = "relay-secret"
TURN = TurnConfig(server="198.51.100.10:3478", secret=SECRET, realm="stunturn.test")


def _post(client, path, body, remote):
    return client.post(path, data=json.dumps(body), content_type="application/json",
                       environ_overrides={"REMOTE_ADDR": remote, "REMOTE_PORT": "4242"})


def pair(app, receiver_ip: str = RECEIVER_IP, initiator_ip: str = INITIATOR_IP) -> tuple[dict, dict]:
    """Initiator (long-poll in a thread) and receiver through the test client:
    (initiator answer, receiver answer)."""
    box = {}
    body = {"rendezvous": KEY, "target_ip": receiver_ip, "protocol": "udp", "timeout": 10}
    thread = threading.Thread(target=lambda: box.setdefault(
        "init", _post(app.test_client(), "/v1/initiate", body, initiator_ip)))
    thread.start()
    client = app.test_client()
    deadline = time.monotonic() + 10
    while client.get("/healthz").get_json()["waiting"] == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    recv = _post(client, "/v1/checkin", {"rendezvous": KEY}, receiver_ip)
    thread.join(10)
    assert recv.status_code == 200 and box["init"].status_code == 200
    return box["init"].get_json(), recv.get_json()


def test_info_says_whether_a_relay_is_offered():
    plain = create_app(ServerConfig(stun_enabled=False)).test_client().get("/v1/info").get_json()
    assert plain["turn"] == {"enabled": False, "transports": []}
    offered = create_app(ServerConfig(stun_enabled=False, turn=TURN)).test_client()
    info = offered.get("/v1/info").get_json()
    assert info["turn"] == {"enabled": True, "transports": ["udp"]}
    assert SECRET not in json.dumps(info) and "password" not in json.dumps(info)


def test_a_relay_with_tcp_allocations_says_so_in_info_and_credentials():
    app = create_app(ServerConfig(stun_enabled=False, wait_timeout=10,
                                  turn=TurnConfig(server=TURN.server, secret=SECRET,
                                                  realm=TURN.realm, transports="tcp, udp")))
    info = app.test_client().get("/v1/info").get_json()
    assert info["turn"] == {"enabled": True, "transports": ["udp", "tcp"]}
    init, _recv = pair(app)
    assert init["turn"]["transports"] == ["udp", "tcp"]
    assert init["turn"]["urls"] == ["turn:198.51.100.10:3478?transport=udp",
                                    "turn:198.51.100.10:3478?transport=tcp"]


def test_both_peers_get_their_own_short_lived_credentials():
    app = create_app(ServerConfig(stun_enabled=False, wait_timeout=10, turn=TURN))
    before = int(time.time())
    init, recv = pair(app)
    for answer in (init, recv):
        turn = answer["turn"]
        assert turn["server"] == {"ip": "198.51.100.10", "port": 3478}
        assert turn["urls"] == ["turn:198.51.100.10:3478?transport=udp"]
        assert turn["transports"] == ["udp"]
        assert turn["realm"] == "stunturn.test" and turn["ttl"] == 600
        expiry, _, rid = turn["username"].partition(":")
        assert before + 600 <= int(expiry) == turn["expires"] <= int(time.time()) + 600 and rid
        want = base64.b64encode(hmac.new(SECRET.encode(), turn["username"].encode(),
                                         hashlib.sha1).digest()).decode()
        assert turn["password"] == want
        assert SECRET not in json.dumps(answer)
    assert init["turn"]["username"] != recv["turn"]["username"]


def test_no_credentials_without_a_match_or_without_a_relay():
    app = create_app(ServerConfig(stun_enabled=False, wait_timeout=0.05, turn=TURN))
    client = app.test_client()
    miss = _post(client, "/v1/checkin", {"rendezvous": KEY}, RECEIVER_IP)
    late = _post(client, "/v1/initiate", {"rendezvous": KEY, "target_ip": RECEIVER_IP,
                                          "protocol": "udp", "timeout": 0.05}, INITIATOR_IP)
    assert (miss.status_code, late.status_code) == (404, 408)
    assert "turn" not in miss.get_json() and "turn" not in late.get_json()
    init, recv = pair(create_app(ServerConfig(stun_enabled=False, wait_timeout=10)))
    assert "turn" not in init and "turn" not in recv


@pytest.mark.parametrize("setting,why", [
    ({"server": "198.51.100.10:3478"}, "both"),
    ({"secret": "x"}, "both"),
    ({"server": "relay.example:3478", "secret": "x"}, "IP:PORT"),
    ({"server": "198.51.100.10:0", "secret": "x"}, "1..65535"),
    ({"server": "198.51.100.10:3478", "secret": "x", "ttl": 5}, r"turn\.ttl"),
    ({"server": "198.51.100.10:3478", "secret": "x", "transports": "sctp"}, "turn-transports"),
    ({"server": "198.51.100.10:3478", "secret": "x", "transports": ","}, "turn-transports"),
    ({"server": "198.51.100.10:3478", "secret": "x", "transports": 6}, r"turn\.transports"),
    ({"transports": "udp,sctp"}, "turn-transports"),     # checked without a relay too
])
def test_bad_relay_settings_fail_at_start(setting, why):
    with pytest.raises(ConfigError, match=why):
        create_app(ServerConfig(stun_enabled=False, turn=TurnConfig(**setting)))


def test_the_transports_come_from_the_environment_too():
    config = config_from_env({"STUNTURN_TURN_SERVER": "198.51.100.10:3478", "STUNTURN_TURN_SECRET": "x",
                              "STUNTURN_TURN_TRANSPORTS": "tcp,udp"})
    assert config.turn.transports == ("udp", "tcp")
    with pytest.raises(ConfigError, match="turn-transports"):
        config_from_env({"STUNTURN_TURN_TRANSPORTS": "quic"})
