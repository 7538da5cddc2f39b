"""API contract and input validation through Flask's test client (no sockets)."""

from __future__ import annotations

import io
import json
import logging
import threading
import time

import pytest

from stunturn_server.app import create_app
from stunturn_server.config import ServerConfig

KEY = "a1" * 32          # a rendezvous identifier (64 hex digits)
RECEIVER_IP = "203.0.113.7"
INITIATOR_IP = "198.51.100.10"
GOOD_INITIATE = {"rendezvous": KEY, "target_ip": RECEIVER_IP, "protocol": "udp", "timeout": 0.05}


@pytest.fixture
def app():
    return create_app(ServerConfig(stun_enabled=False, wait_timeout=5))


@pytest.fixture
def client(app):
    return app.test_client()


def post_raw(client, path, data, content_type="application/json", remote=RECEIVER_IP, **kw):
    return client.post(path, data=data, content_type=content_type,
                       environ_overrides={"REMOTE_ADDR": remote, "REMOTE_PORT": "4242"}, **kw)


def post(client, path, body, remote=RECEIVER_IP):
    return post_raw(client, path, json.dumps(body), remote=remote)


def assert_error(response, status, error=None):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) >= {"error", "message"} and body["message"]
    if error:
        assert body["error"] == error
    return body


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.get_json() == {"ok": True, "waiting": 0}


def test_info_without_stun(client):
    info = client.get("/v1/info").get_json()
    assert info["wait_timeout"] == 5 and info["version"]
    assert info["stun"]["enabled"] is False and info["stun"]["primary"] is None
    assert info["stun"]["behaviour_tests"] is False and info["stun"]["unavailable"]
    assert info["probe_assist"] is True  # on unless the configuration turns it off


def test_info_without_alt_ip_says_behaviour_tests_are_unavailable():
    client = create_app(ServerConfig(stun_port=3478)).test_client()
    stun = client.get("/v1/info").get_json()["stun"]
    assert stun["primary"] == {"ip": "127.0.0.1", "port": 3478}
    assert stun["alt_ip"] is None and stun["alt_both"] is None
    assert stun["transports"] == ["udp", "tcp"] and stun["behaviour_tests"] is False
    assert any("RFC 5780" in reason for reason in stun["unavailable"])


def test_info_with_alt_ip_lists_all_four_endpoints():
    client = create_app(ServerConfig(http_host="127.0.0.1", alt_ip="127.0.0.2")).test_client()
    stun = client.get("/v1/info").get_json()["stun"]
    assert stun["primary"] == {"ip": "127.0.0.1", "port": 3478}
    assert stun["alt_port"] == {"ip": "127.0.0.1", "port": 3479}
    assert stun["alt_ip"] == {"ip": "127.0.0.2", "port": 3478}
    assert stun["alt_both"] == {"ip": "127.0.0.2", "port": 3479}
    assert stun["behaviour_tests"] is True and stun["unavailable"] == []


def test_info_reports_actual_endpoints_when_given():
    eps = [{"ip": "127.0.0.1", "port": 40001, "role": "primary"}]
    client = create_app(ServerConfig(), stun_endpoints=eps).test_client()
    assert client.get("/v1/info").get_json()["stun"]["primary"] == {"ip": "127.0.0.1", "port": 40001}


def test_unknown_route_and_wrong_method_are_json(client):
    assert_error(client.get("/nope"), 404, "not-found")
    response = client.get("/v1/initiate")
    assert_error(response, 405, "method-not-allowed")
    assert "POST" in response.headers["Allow"]
    assert_error(client.post("/healthz"), 405)


def test_initiate_times_out_with_408_and_frees_the_slot(client):
    body = assert_error(post(client, "/v1/initiate", GOOD_INITIATE, remote=INITIATOR_IP), 408, "timeout")
    assert body["waited"] >= 0.05
    assert client.get("/healthz").get_json()["waiting"] == 0
    assert_error(post(client, "/v1/checkin", {"rendezvous": KEY}), 404, "no-initiator")


def test_timeout_is_capped_by_the_server_wait_timeout():
    client = create_app(ServerConfig(stun_enabled=False, wait_timeout=0.05)).test_client()
    body = assert_error(post(client, "/v1/initiate", {**GOOD_INITIATE, "timeout": 3000}), 408, "timeout")
    assert body["waited"] < 3000


def test_pairing_through_the_test_client(app, client, caplog):
    caplog.set_level(logging.DEBUG, logger="stunturn_server")
    results = {}
    details = {"srflx": {"ip": INITIATOR_IP, "port": 40000}, "local": [{"ip": "10.0.0.2", "port": 40000}],
               "nat": {"mapping": "ENDPOINT_INDEPENDENT"}, "software": "tests"}

    def initiator():
        results["init"] = post(app.test_client(), "/v1/initiate",
                               {**GOOD_INITIATE, "timeout": 10, "details": details}, remote=INITIATOR_IP)

    thread = threading.Thread(target=initiator)
    thread.start()
    deadline = time.monotonic() + 10
    while client.get("/healthz").get_json()["waiting"] == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    recv = post(client, "/v1/checkin", {"rendezvous": KEY, "details": {"software": "receiver"}})
    thread.join(10)
    assert recv.status_code == 200
    recv_body, init_body = recv.get_json(), results["init"].get_json()
    assert results["init"].status_code == 200
    assert recv_body["role"] == "receiver" and init_body["role"] == "initiator"
    assert recv_body["match_id"] == init_body["match_id"] and recv_body["protocol"] == "udp"
    assert recv_body["peer"] == {"observed": {"ip": INITIATOR_IP, "port": 4242}, "details": details}
    assert init_body["peer"] == {"observed": {"ip": RECEIVER_IP, "port": 4242},
                                 "details": {"software": "receiver"}}
    assert KEY not in caplog.text
    assert "pair waiting" in caplog.text and "pair matched" in caplog.text


def test_conflict_while_one_waits(app, client):
    thread = threading.Thread(target=lambda: post(app.test_client(), "/v1/initiate",
                                                  {**GOOD_INITIATE, "timeout": 10}))
    thread.start()
    deadline = time.monotonic() + 10
    while client.get("/healthz").get_json()["waiting"] == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert_error(post(client, "/v1/initiate", GOOD_INITIATE), 409, "conflict")
    assert post(client, "/v1/checkin", {"rendezvous": KEY}).status_code == 200  # releases the first
    thread.join(10)


def test_ipv4_mapped_target_matches_ipv4_receiver(app, client):
    thread = threading.Thread(target=lambda: post(app.test_client(), "/v1/initiate",
                                                  {**GOOD_INITIATE, "timeout": 10,
                                                   "target_ip": "::ffff:" + RECEIVER_IP}))
    thread.start()
    deadline = time.monotonic() + 10
    while client.get("/healthz").get_json()["waiting"] == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert post(client, "/v1/checkin", {"rendezvous": KEY}).status_code == 200
    thread.join(10)


def test_unexpected_exception_is_a_json_500(app):
    def boom():
        raise RuntimeError("boom")

    app.add_url_rule("/boom", view_func=boom)
    assert_error(app.test_client().get("/boom"), 500, "internal")


# --- bad input: every one a clear 4xx, never a 500 ----------------------------------------

LONG = "ab" * 65
BAD_INITIATE = [
    {},
    {"rendezvous": KEY},
    {"rendezvous": KEY, "target_ip": RECEIVER_IP},
    {**GOOD_INITIATE, "extra": 1},
    {**GOOD_INITIATE, "rendezvous": "ab" * 15},
    {**GOOD_INITIATE, "rendezvous": LONG},
    {**GOOD_INITIATE, "rendezvous": "A1" * 32},
    {**GOOD_INITIATE, "rendezvous": "a" * 63},
    {**GOOD_INITIATE, "rendezvous": "g" * 64},
    {**GOOD_INITIATE, "rendezvous": "k3y-for-tests-and-more-than-thirty-two-chars"},
    {**GOOD_INITIATE, "rendezvous": 12345678},
    {**GOOD_INITIATE, "rendezvous": None},
    {**GOOD_INITIATE, "rendezvous": ["a" * 64]},
    {**GOOD_INITIATE, "target_ip": "example.com"},
    {**GOOD_INITIATE, "target_ip": "256.1.1.1"},
    {**GOOD_INITIATE, "target_ip": "fe80::1%eth0"},
    {**GOOD_INITIATE, "target_ip": ""},
    {**GOOD_INITIATE, "target_ip": 2130706433},
    {**GOOD_INITIATE, "target_ip": "1" * 1000},
    {**GOOD_INITIATE, "protocol": "sctp"},
    {**GOOD_INITIATE, "protocol": 6},
    {**GOOD_INITIATE, "protocol": None},
    {**GOOD_INITIATE, "timeout": -1},
    {**GOOD_INITIATE, "timeout": 0},
    {**GOOD_INITIATE, "timeout": 1e308},
    {**GOOD_INITIATE, "timeout": 10 ** 400},
    {**GOOD_INITIATE, "timeout": True},
    {**GOOD_INITIATE, "timeout": "5"},
    {**GOOD_INITIATE, "details": "nope"},
    {**GOOD_INITIATE, "details": {"unknown": 1}},
    {**GOOD_INITIATE, "details": {"srflx": {"ip": "1.2.3.4"}}},
    {**GOOD_INITIATE, "details": {"srflx": {"ip": "1.2.3.4", "port": 0}}},
    {**GOOD_INITIATE, "details": {"srflx": {"ip": "1.2.3.4", "port": 70000}}},
    {**GOOD_INITIATE, "details": {"srflx": {"ip": "1.2.3.4", "port": True}}},
    {**GOOD_INITIATE, "details": {"srflx": {"ip": "1.2.3.4", "port": 1.5}}},
    {**GOOD_INITIATE, "details": {"srflx": {"ip": "nope", "port": 1}}},
    {**GOOD_INITIATE, "details": {"srflx": [1, 2]}},
    {**GOOD_INITIATE, "details": {"local": {"ip": "1.2.3.4", "port": 1}}},
    {**GOOD_INITIATE, "details": {"local": [{"ip": "1.2.3.4", "port": 1}] * 9}},
    {**GOOD_INITIATE, "details": {"local": [None]}},
    {**GOOD_INITIATE, "details": {"nat": "cone"}},
    {**GOOD_INITIATE, "details": {"nat": {"blob": "x" * 3000}}},
    {**GOOD_INITIATE, "details": {"software": 5}},
    {**GOOD_INITIATE, "details": {"software": "s" * 65}},
]
BAD_CHECKIN = [
    {},
    {"rendezvous": KEY, "target_ip": RECEIVER_IP},
    {"rendezvous": "1234567"},
    {"rendezvous": False},
    {"rendezvous": KEY, "details": []},
    {"rendezvous": KEY, "details": {"local": "1.2.3.4"}},
]
BAD_RAW = [
    b"",
    b"not json",
    b"{",
    b"[]",
    b"[1, 2]",
    b'"string"',
    b"42",
    b"null",
    b"true",
    b"\xff\xfe{}",
    b'{"rendezvous": NaN}',
    b'{"rendezvous": "abcdefgh", "timeout": Infinity, "target_ip": "1.2.3.4", "protocol": "udp"}',
    b'{"rendezvous": "abcdefgh", "rendezvous": "abcdefgi"}',
    b"[" * 5000 + b"]" * 5000,
    b'{"a":' * 2000 + b"1" + b"}" * 2000,
    b'{"rendezvous": "abcdefgh", "details": {"nat": ' + b'{"a":' * 20 + b"1" + b"}" * 20 + b"}}",
]


@pytest.mark.parametrize("body", BAD_INITIATE, ids=lambda b: json.dumps(b)[:60])
def test_bad_initiate_bodies_are_400(client, body):
    assert_error(post(client, "/v1/initiate", body), 400, "bad-request")


@pytest.mark.parametrize("body", BAD_CHECKIN, ids=lambda b: json.dumps(b)[:60])
def test_bad_checkin_bodies_are_400(client, body):
    assert_error(post(client, "/v1/checkin", body), 400, "bad-request")


@pytest.mark.parametrize("path", ["/v1/initiate", "/v1/checkin"])
@pytest.mark.parametrize("data", BAD_RAW, ids=lambda b: repr(b[:30]))
def test_malformed_json_is_400(client, path, data):
    assert_error(post_raw(client, path, data), 400, "bad-request")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", ""])
def test_wrong_content_type_is_415(client, content_type):
    response = post_raw(client, "/v1/checkin", json.dumps({"rendezvous": KEY}), content_type=content_type)
    assert_error(response, 415, "unsupported-media-type")


def test_json_with_charset_is_accepted(client):
    response = post_raw(client, "/v1/checkin", json.dumps({"rendezvous": KEY}),
                        content_type="application/json; charset=utf-8")
    assert_error(response, 404, "no-initiator")


def test_oversized_body_is_413_before_reading(client):
    huge = json.dumps({"rendezvous": KEY, "details": {"software": "x" * 20000}})
    assert_error(post_raw(client, "/v1/checkin", huge), 413, "payload-too-large")


def test_oversized_body_without_length_is_413(client):
    body = b'{"rendezvous": "' + b"x" * 20000 + b'"}'
    response = client.post("/v1/checkin", input_stream=io.BytesIO(body), content_type="application/json",
                           headers={"Transfer-Encoding": "chunked"},
                           environ_overrides={"wsgi.input_terminated": True})
    assert_error(response, 413)


def test_no_500_for_any_bad_input(client):
    """Table-driven sweep: every bad body on every endpoint gets a 4xx JSON answer."""
    seen = set()
    for path in ("/v1/initiate", "/v1/checkin"):
        for body in BAD_INITIATE + BAD_CHECKIN:
            seen.add(post(client, path, body).status_code)
        for data in BAD_RAW:
            seen.add(post_raw(client, path, data).status_code)
        for ctype in ("text/plain", "application/json", "application/json; charset=latin-1"):
            seen.add(post_raw(client, path, b"\x00\x01", content_type=ctype).status_code)
    assert seen and all(400 <= status < 500 for status in seen), seen


@pytest.mark.parametrize("path, body", [
    ("/v1/initiate", {"access_key": "old-client-key", "target_ip": RECEIVER_IP, "protocol": "udp"}),
    ("/v1/checkin", {"access_key": "old-client-key"}),
    ("/v1/checkin", {"access_key": "old-client-key", "rendezvous": KEY}),
])
def test_old_access_key_field_is_refused_with_the_upgrade_named(client, body, path):
    """Clients before issue 10 sent the key itself; the answer says what to do."""
    response = post(client, path, body)
    assert_error(response, 400, "bad-request")
    message = response.get_json()["message"]
    assert "access_key" in message and "upgrade the client" in message
    assert "old-client-key" not in message
