"""stunturn_diag.signaling against a real server on 127.0.0.1 (and a few fake ones)."""

from __future__ import annotations

import http.server
import socket
import threading

import pytest

from stunturn_diag.errors import (ConfigError, NoInitiatorWaiting, PairingConflict, PairingTimeout,
                                  ServerUnreachable, SignalingError)
from stunturn_diag.sansio.punch.keys import rendezvous_id
from stunturn_diag.signaling import SignalingClient, parse_server_url
from stunturn_server.config import ServerConfig
from stunturn_server.runner import start_server
from testlib import wait_for

KEY = rendezvous_id("client-test-key")


@pytest.fixture(scope="module")
def server():
    handle = start_server(ServerConfig(http_port=0, stun_enabled=False, wait_timeout=20))
    yield handle
    handle.stop()


@pytest.fixture
def client(server):
    return SignalingClient(server.http_url, timeout=10)


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1", "http://127.0.0.1:8080"),
    ("127.0.0.1:9000", "http://127.0.0.1:9000"),
    ("http://127.0.0.1:9000/", "http://127.0.0.1:9000"),
    ("http://signal.example:81/prefix/", "http://signal.example:81/prefix"),
    ("https://signal.example", "https://signal.example:443"),
    ("[::1]:8080", "http://[::1]:8080"),
    ("http://[::1]", "http://[::1]:8080"),
    ("  127.0.0.1:1  ", "http://127.0.0.1:1"),
])
def test_parse_server_url(text, expected):
    assert parse_server_url(text) == expected


@pytest.mark.parametrize("text", ["", "ftp://x", "http://", "127.0.0.1:notaport", "127.0.0.1:99999",
                                  "http://x/?q=1", "http://user:pw@x"])
def test_parse_server_url_rejects(text):
    with pytest.raises(ConfigError):
        parse_server_url(text)


def test_info_and_health(client):
    assert client.health()["ok"] is True
    info = client.info()
    assert info["wait_timeout"] == 20 and info["stun"]["enabled"] is False


def test_pairing(server, client):
    result = {}

    def initiator():
        result["answer"] = SignalingClient(server.http_url).initiate(
            KEY, "127.0.0.1", "udp", details={"software": "init"}, timeout=15)

    thread = threading.Thread(target=initiator)
    thread.start()
    wait_for(lambda: client.health()["waiting"] == 1)
    receiver = client.checkin(KEY, details={"srflx": {"ip": "127.0.0.1", "port": 1234}})
    thread.join(20)
    assert receiver["role"] == "receiver" and receiver["peer"]["details"] == {"software": "init"}
    assert result["answer"]["peer"]["details"]["srflx"] == {"ip": "127.0.0.1", "port": 1234}
    assert result["answer"]["match_id"] == receiver["match_id"]


def test_initiate_without_timeout_uses_server_default(server, client):
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("a", client.initiate(KEY, "127.0.0.1", "tcp")))
    thread.start()
    wait_for(lambda: SignalingClient(server.http_url).health()["waiting"] == 1)
    SignalingClient(server.http_url).checkin(KEY)
    thread.join(20)
    assert result["a"]["protocol"] == "tcp"


def test_no_initiator(client):
    with pytest.raises(NoInitiatorWaiting) as info:
        client.checkin(KEY)
    assert info.value.status == 404 and info.value.error == "no-initiator"
    assert "127.0.0.1" in str(info.value)


def test_timeout(client):
    with pytest.raises(PairingTimeout) as info:
        client.initiate(KEY, "127.0.0.9", "udp", timeout=0.1)
    assert info.value.status == 408 and "receiver" in str(info.value)


def test_conflict(server, client):
    result = {}

    def first():
        try:
            SignalingClient(server.http_url).initiate(KEY, "127.0.0.8", "udp", timeout=1.0)
        except PairingTimeout as exc:
            result["first"] = exc

    thread = threading.Thread(target=first)
    thread.start()
    wait_for(lambda: client.health()["waiting"] == 1)
    with pytest.raises(PairingConflict) as info:
        client.initiate(KEY, "127.0.0.8", "udp", timeout=1.0)
    assert info.value.status == 409
    thread.join(20)
    assert isinstance(result["first"], PairingTimeout)


def test_an_access_key_is_refused_before_it_is_sent(client):
    """The client only sends rendezvous identifiers: a key-like value never leaves."""
    for not_an_id in ("client-test-key", "short", KEY.upper(), KEY[:-1]):
        with pytest.raises(ConfigError, match="rendezvous identifier"):
            client.checkin(not_an_id)
        with pytest.raises(ConfigError, match="rendezvous identifier"):
            client.initiate(not_an_id, "127.0.0.1", "udp", timeout=1)


def test_bad_request_is_a_signaling_error(client):
    with pytest.raises(SignalingError) as info:
        client.initiate(KEY, "not-an-ip", "udp", timeout=1)
    assert "target_ip" in str(info.value)


def test_unreachable():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with pytest.raises(ServerUnreachable) as info:
        SignalingClient(f"127.0.0.1:{port}", timeout=5).info()
    assert f"127.0.0.1:{port}" in str(info.value)


class _FakeHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        routes = {"/html/v1/info": (200, b"<html>hi</html>"), "/list/v1/info": (200, b"[1]"),
                  "/plain404/v1/info": (404, b"not found")}
        status, body = routes.get(self.path, (500, b""))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_server():
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _FakeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("prefix, status", [("html", 200), ("list", 200), ("plain404", 404)])
def test_not_a_signaling_server(fake_server, prefix, status):
    with pytest.raises(SignalingError) as info:
        SignalingClient(f"http://{fake_server}/{prefix}", timeout=5).info()
    assert info.value.status == status and "signaling server" in str(info.value)
    assert type(info.value) is SignalingError


def test_silent_server_is_unreachable_not_a_hang():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()  # accepts (kernel backlog) but never answers
    try:
        with pytest.raises(ServerUnreachable):
            SignalingClient(f"127.0.0.1:{listener.getsockname()[1]}", timeout=0.3).info()
    finally:
        listener.close()


class _OldServer(http.server.BaseHTTPRequestHandler):
    """Answers like a server from before issue 10 (it wanted the key itself)."""

    def do_POST(self):  # noqa: N802 - http.server's name
        body = b'{"error": "bad-request", "message": "checkin: missing field(s) access_key"}'
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args):
        pass


def test_an_old_server_asking_for_the_key_gets_an_upgrade_hint_not_the_key():
    srv = http.server.HTTPServer(("127.0.0.1", 0), _OldServer)
    thread = threading.Thread(target=srv.handle_request)
    thread.start()
    try:
        with pytest.raises(SignalingError) as info:
            SignalingClient(f"http://127.0.0.1:{srv.server_port}").checkin(KEY)
        assert info.value.status == 400 and "upgrade the server" in str(info.value)
    finally:
        thread.join(10)
        srv.server_close()
