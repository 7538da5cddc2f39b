"""Long-poll behaviour against a real gevent server on 127.0.0.1 (port 0).

Loopback owns all of 127/8, so clients bind source addresses 127.0.0.2, 127.0.0.3...
to play receivers behind different public IPs. Every wait polls with a bound.
"""

from __future__ import annotations

import http.client
import hashlib
import json
import socket

import pytest

from stunturn_server.config import ServerConfig
from stunturn_server.runner import start_server
from testlib import in_background, wait_for

KEY = "long-poll-key-1"


def _rv(key: str) -> str:
    """A stand-in rendezvous identifier per test key (64 hex digits, like the client's)."""
    return hashlib.sha256(key.encode()).hexdigest()
RECEIVER = "127.0.0.2"
OTHER = "127.0.0.3"


@pytest.fixture
def server():
    handle = start_server(ServerConfig(http_port=0, stun_enabled=False, wait_timeout=30))
    yield handle
    handle.stop()


def request(server, method, path, body=None, *, source="127.0.0.1", timeout=40.0):
    """One HTTP request from ``source``; returns (status, parsed JSON)."""
    conn = http.client.HTTPConnection(*server.http_address, timeout=timeout, source_address=(source, 0))
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def initiate(server, *, key=KEY, target=RECEIVER, timeout=None, source="127.0.0.1", details=None):
    body = {"rendezvous": _rv(key), "target_ip": target, "protocol": "tcp"}
    if timeout is not None:
        body["timeout"] = timeout
    if details:
        body["details"] = details
    return request(server, "POST", "/v1/initiate", body, source=source)


def checkin(server, *, key=KEY, source=RECEIVER, details=None):
    body = {"rendezvous": _rv(key)}
    if details:
        body["details"] = details
    return request(server, "POST", "/v1/checkin", body, source=source, timeout=10)


def waiting(server) -> int:
    return request(server, "GET", "/healthz")[1]["waiting"]


def test_match_releases_both_with_each_others_details(server):
    thread, result = in_background(initiate, server, details={"software": "initiator"})
    wait_for(lambda: waiting(server) == 1, what="the initiator to wait")
    status, recv = checkin(server, details={"srflx": {"ip": RECEIVER, "port": 5555}})
    thread.join(20)
    assert not thread.is_alive(), "initiator long-poll still open after the match"
    assert status == 200 and result["value"][0] == 200
    init = result["value"][1]
    assert init["match_id"] == recv["match_id"] and init["protocol"] == recv["protocol"] == "tcp"
    assert init["peer"]["observed"]["ip"] == RECEIVER
    assert init["peer"]["details"] == {"srflx": {"ip": RECEIVER, "port": 5555}}
    assert recv["peer"]["observed"]["ip"] == "127.0.0.1" and recv["peer"]["observed"]["port"] > 0
    assert recv["peer"]["details"] == {"software": "initiator"}
    assert waiting(server) == 0


def test_timeout_frees_the_key_at_once(server):
    status, body = initiate(server, timeout=0.2)
    assert status == 408 and body["error"] == "timeout"
    assert waiting(server) == 0
    assert checkin(server)[0] == 404  # a receiver after the timeout finds nobody
    status, body = initiate(server, timeout=0.2)  # same key accepted again immediately
    assert status == 408 and body["error"] == "timeout"


def raw_initiate(server, *, key=KEY, source="127.0.0.1") -> socket.socket:
    """An initiator on a bare socket (so the test can hang up or reset it); the request is sent."""
    body = json.dumps({"rendezvous": _rv(key), "target_ip": RECEIVER, "protocol": "udp"}).encode()
    raw = socket.create_connection(server.http_address, timeout=10, source_address=(source, 0))
    raw.sendall(b"POST /v1/initiate HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body) + body)
    return raw


def test_disconnect_frees_the_key(server):
    raw = raw_initiate(server)
    wait_for(lambda: waiting(server) == 1, what="the raw initiator to wait")
    raw.close()
    wait_for(lambda: waiting(server) == 0, what="the hung-up initiator's entry to be freed")
    assert checkin(server)[0] == 404
    thread, result = in_background(initiate, server)
    wait_for(lambda: waiting(server) == 1, what="a new initiator with the same key")
    assert checkin(server)[0] == 200
    thread.join(20)
    assert result["value"][0] == 200


def test_reset_connection_frees_the_key(server):
    raw = raw_initiate(server)
    wait_for(lambda: waiting(server) == 1, what="the raw initiator to wait")
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    raw.close()  # RST instead of FIN
    wait_for(lambda: waiting(server) == 0, what="the reset initiator's entry to be freed")
    assert checkin(server)[0] == 404


def test_conflict_while_one_waits(server):
    """The waiting initiator's own source learns of the conflict (409)."""
    thread, result = in_background(initiate, server)
    wait_for(lambda: waiting(server) == 1, what="the first initiator")
    status, body = initiate(server)
    assert status == 409 and body["error"] == "conflict"
    assert checkin(server)[0] == 200  # the first one is still there and matchable
    thread.join(20)
    assert result["value"][0] == 200


def test_second_initiator_from_another_source_is_held_like_any_waiter(server):
    """No oracle: from another source the answer is the one nobody-waits gives (408 timeout)."""
    thread, result = in_background(initiate, server)
    wait_for(lambda: waiting(server) == 1, what="the first initiator")
    status, body = initiate(server, source="127.0.0.4", timeout=0.3)
    nobody_status, nobody_body = initiate(server, key="nobody-uses-this-key", source="127.0.0.4",
                                          timeout=0.3)
    assert (status, body["error"]) == (nobody_status, nobody_body["error"]) == (408, "timeout")
    assert set(body) == set(nobody_body)
    assert checkin(server)[0] == 200  # the first one is still there and matchable
    thread.join(20)
    assert result["value"][0] == 200


def test_receiver_from_another_ip_is_not_matched(server):
    thread, result = in_background(initiate, server, target=OTHER)
    wait_for(lambda: waiting(server) == 1, what="the initiator")
    status, body = checkin(server, source=RECEIVER)
    assert status == 404 and body["error"] == "no-initiator" and RECEIVER in body["message"]
    assert waiting(server) == 1
    assert checkin(server, source=OTHER)[0] == 200
    thread.join(20)
    assert result["value"][1]["peer"]["observed"]["ip"] == OTHER


def test_receiver_with_wrong_key_is_not_matched(server):
    thread, result = in_background(initiate, server)
    wait_for(lambda: waiting(server) == 1, what="the initiator")
    assert checkin(server, key="wrong-key-123")[0] == 404
    assert waiting(server) == 1
    assert checkin(server)[0] == 200
    thread.join(20)


def test_receiver_with_nobody_waiting_is_answered_at_once(server):
    # the client's read timeout (10 s) is far below the server's wait timeout (30 s)
    status, body = checkin(server)
    assert status == 404 and body["error"] == "no-initiator"


def test_many_waiters_are_held_and_matched(server):
    count = 50
    threads = [in_background(initiate, server, key=f"many-keys-{i:03d}") for i in range(count)]
    wait_for(lambda: waiting(server) == count, what=f"{count} initiators to wait")
    for i in range(count):
        assert checkin(server, key=f"many-keys-{i:03d}")[0] == 200
    for thread, result in threads:
        thread.join(20)
        assert result["value"][0] == 200
    assert waiting(server) == 0


def test_oversized_chunked_body_is_413(server):
    raw = socket.create_connection(server.http_address, timeout=10)
    try:
        chunk = b'{"rendezvous": "' + b"x" * 20000 + b'"}'
        raw.sendall(b"POST /v1/checkin HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % len(chunk) + chunk + b"\r\n0\r\n\r\n")
        response = raw.makefile("rb").readline()
    finally:
        raw.close()
    assert response.split()[1] == b"413"


def test_stop_answers_waiting_long_polls_503(server):
    """Stopping ends every waiting long-poll with a JSON 503 (was: killed mid-request, a bare 500)."""
    thread, result = in_background(initiate, server)
    wait_for(lambda: waiting(server) == 1, what="the initiator")
    server.stop()
    server.stop()  # idempotent
    thread.join(20)
    assert not thread.is_alive()
    assert "error" not in result, result
    status, body = result["value"]
    assert status == 503 and body["error"] == "shutting-down", result
    with pytest.raises(OSError):
        socket.create_connection(server.http_address, timeout=2).close()


def test_no_500_for_bad_input_on_the_real_server(server):
    """The bad-input table of test_server_api, sent over real sockets: all 4xx JSON, server unharmed."""
    from test_server_api import BAD_CHECKIN, BAD_INITIATE, BAD_RAW

    statuses = set()
    for path in ("/v1/initiate", "/v1/checkin"):
        for body in BAD_INITIATE + BAD_CHECKIN:
            statuses.add(request(server, "POST", path, body)[0])
        for data in BAD_RAW:
            conn = http.client.HTTPConnection(*server.http_address, timeout=10)
            try:
                conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                assert "error" in json.loads(response.read())
                statuses.add(response.status)
            finally:
                conn.close()
    assert statuses and all(400 <= status < 500 for status in statuses), statuses
    assert waiting(server) == 0 and request(server, "GET", "/healthz")[0] == 200


def test_waiters_per_source_ip_are_capped_with_429():
    """One host cannot hold more than max_waiters_per_ip long-polls (each costs a socket)."""
    with start_server(ServerConfig(http_port=0, stun_enabled=False, max_waiters_per_ip=3)) as server:
        held = [raw_initiate(server, key=f"capped-key-{i}") for i in range(3)]
        try:
            wait_for(lambda: waiting(server) == 3, what="three initiators from 127.0.0.1")
            status, body = initiate(server, key="capped-key-3")
            assert status == 429 and body["error"] == "too-many-waiters" and body["limit"] == 3
            assert "127.0.0.1" in body["message"] and waiting(server) == 3
            # another source is not affected
            thread, result = in_background(initiate, server, key="other-host-key", source="127.0.0.4")
            wait_for(lambda: waiting(server) == 4, what="the initiator from 127.0.0.4")
            assert checkin(server, key="other-host-key")[0] == 200
            thread.join(20)
            assert result["value"][0] == 200
            # a waiter that hangs up gives its place back at once
            held.pop().close()
            wait_for(lambda: waiting(server) == 2, what="the hung-up initiator to be gone")
            thread, result = in_background(initiate, server, key="capped-key-3")
            wait_for(lambda: waiting(server) == 3, what="the initiator admitted again")
            assert initiate(server, key="capped-key-4")[0] == 429
            assert checkin(server, key="capped-key-3")[0] == 200
            thread.join(20)
            assert result["value"][0] == 200
        finally:
            for raw in held:
                raw.close()
        wait_for(lambda: waiting(server) == 0, what="every capped initiator to be gone")
        status, _ = initiate(server, key="capped-key-5", timeout=0.05)
        assert status == 408  # the count went back to zero: admitted (and timed out)


def test_every_pairing_event_is_logged_once_and_never_with_the_key(caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    secret = "never-log-this-key-4711"
    with start_server(ServerConfig(http_port=0, stun_enabled=False, max_waiters_per_ip=2)) as server:
        thread, result = in_background(initiate, server, key=secret)
        wait_for(lambda: waiting(server) == 1, what="the initiator")
        assert initiate(server, key=secret)[0] == 409                                # conflict
        second, _ = in_background(initiate, server, key=secret + "-2", timeout=1)
        wait_for(lambda: waiting(server) == 2, what="the second initiator")
        assert initiate(server, key=secret + "-3")[0] == 429                         # refused
        assert checkin(server, key=secret, source=OTHER)[0] == 404                   # no-initiator
        assert checkin(server, key=secret)[0] == 200                                 # matched
        thread.join(20)
        second.join(20)
        assert initiate(server, key=secret, timeout=0.05)[0] == 408                  # timeout
        raw_initiate(server, key=secret).close()                                     # hangup
        wait_for(lambda: "pair hangup" in caplog.text, what="the hang-up log line")
    text = caplog.text
    for event in ("waiting", "conflict", "refused", "no-initiator", "matched", "timeout", "hangup"):
        assert f"pair {event}" in text, (event, text)
    assert text.count("pair matched") == 1
    assert secret not in text and "4711" not in text and _rv(secret) not in text


def test_connections_per_source_ip_are_capped_with_429():
    """Idle or slow connections count too: over the cap a connection gets 429 JSON and is closed."""
    config = ServerConfig(http_port=0, stun_enabled=False, max_waiters_per_ip=2, max_connections_per_ip=3)
    with start_server(config) as server:
        idle = [socket.create_connection(server.http_address, timeout=10) for _ in range(3)]
        try:
            # the server counts a connection once its greenlet runs: the 4th is refused then
            def refused() -> bytes | None:
                extra = socket.create_connection(server.http_address, timeout=10)
                try:
                    extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                    data = extra.makefile("rb").read()
                finally:
                    extra.close()
                return data if b" 429 " in data.split(b"\r\n", 1)[0] else None
            answer = wait_for(refused, what="a connection over the cap to be refused")
            body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
            assert body["error"] == "too-many-connections" and body["limit"] == 3
            status, health = request(server, "GET", "/healthz", source="127.0.0.5")  # others unaffected
            assert status == 200 and health["ok"] is True
            idle.pop().close()  # a slot comes free once the server sees the close
            wait_for(lambda: refused() is None, what="the freed connection slot")
        finally:
            for sock in idle:
                sock.close()
