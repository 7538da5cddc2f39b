"""Security: probe-assist as a weapon and as a way to starve others (issue 10, 5/6), real server."""

from __future__ import annotations

import socket

import pytest

from securitylib import call
from stunturn_diag.sansio.assist_frame import ASSIST_MAGIC
from stunturn_server.config import ProbeAssistConfig, ServerConfig
from stunturn_server.runner import start_server
from testlib import in_background, wait_for


@pytest.fixture
def server():
    config = ServerConfig(http_port=0, stun_port=0, alt_port=0, alt_ip="127.0.0.2",
                          probe_assist=ProbeAssistConfig(burst=50, rate=10.0,
                                                         allowed_hosts=("stun.example.test",)))
    with start_server(config) as handle:
        yield handle


@pytest.fixture
def local_service():
    """A 'Redis' on the caller's own host that would obey FLUSHALL."""
    s = socket.socket()
    s.bind(("0.0.0.0", 0))
    s.listen(8)
    yield s
    s.close()


def _connect_back(server, port: int, *, host: str | None = None, source: str = "127.0.0.1", **extra):
    headers = {"Host": host} if host else {}
    return call(server.http_address, "POST", "/v1/probe/tcp-connect",
                {"port": port, "from": ["alt-port"], "attempts": 1, **extra}, source=source, headers=headers)


def test_dns_rebinding_host_is_refused_and_nothing_is_sent(server, local_service):
    port = local_service.getsockname()[1]
    # "FLUSHALL\r\n" is not even a valid token any more; the hex of it would be framed anyway
    status, _, body = _connect_back(server, port, host="evil.example:8080", token="464c555348414c4c0d0a")
    assert status == 403 and body["error"] == "host-not-allowed"
    local_service.settimeout(0.5)
    with pytest.raises(TimeoutError):
        local_service.accept()  # the server never connected
    # the names the operator allowed, and our own address, work
    assert _connect_back(server, port, host="stun.example.test")[0] == 200
    local_service.accept()[0].close()
    assert _connect_back(server, port)[0] == 200  # Host: 127.0.0.1:<port>
    local_service.accept()[0].close()


def test_only_a_framed_token_is_ever_delivered(server, local_service):
    port = local_service.getsockname()[1]
    status, _, _ = _connect_back(server, port, token="464c5553")  # the bytes of "FLUS"
    assert status == 200
    local_service.settimeout(5)
    conn, _ = local_service.accept()
    conn.settimeout(5)
    data = b""
    while len(data) < len(ASSIST_MAGIC) + 8:
        data += conn.recv(64)
    conn.close()
    assert data == ASSIST_MAGIC + b"464c5553"  # magic prefix, token in hex: no caller-chosen bytes
    assert b"\r" not in data and b"\n" not in data
    status, _, body = _connect_back(server, port, token="FLUSHALL")
    assert status == 400


def test_one_source_cannot_take_every_probe_slot(server):
    """Six slow requests from one address: it gets its share (8: one request of six connects) and
    429 beyond it, while another address is served at once."""
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(0)  # never accepted: once the queue is full, SYNs to it are dropped
    port = blackhole.getsockname()[1]
    fillers = []
    try:
        for _ in range(3):
            f = socket.socket()
            f.setblocking(False)
            f.connect_ex(("127.0.0.1", port))
            fillers.append(f)
        body = {"port": port, "attempts": 3, "timeout_ms": 1500}
        hogs = [in_background(call, server.http_address, "POST", "/v1/probe/tcp-connect", body)
                for _ in range(6)]
        stats = server.app.extensions["stunturn_probe_assist"].limits.slots
        wait_for(lambda: stats.held.get("127.0.0.1", 0) > 0, what="the first hog request to run")
        legit = socket.socket()
        legit.bind(("127.0.0.3", 0))
        legit.listen(4)
        try:
            status, _, answer = _connect_back(server, legit.getsockname()[1], source="127.0.0.3")
            assert status == 200 and answer["results"][0]["outcome"] == "connected"
        finally:
            legit.close()
        for thread, _ in hogs:
            thread.join(20)
        statuses = sorted(r["value"][0] for _, r in hogs)
        assert statuses.count(429) >= 3 and 200 in statuses, statuses
    finally:
        for f in fillers:
            f.close()
        blackhole.close()


@pytest.mark.parametrize("host, ok", [
    ("127.0.0.1:8080", True), ("[::1]:8080", False), ("STUN.example.test.", True), ("localhost", False),
    ("evil.example", False), ("", False), ("127.0.0.1.nip.io", False),
])
def test_host_allow_list_is_pure_and_exact(host, ok):
    from stunturn_server.sansio.probe_assist import host_allowed

    assert host_allowed(host, frozenset({"127.0.0.1", "stun.example.test"}), False) is ok


def test_wildcard_listen_accepts_any_ip_literal_but_no_foreign_name():
    from stunturn_server.sansio.probe_assist import host_allowed

    assert host_allowed("203.0.113.5:80", frozenset(), True)
    assert not host_allowed("rebind.evil.example", frozenset(), True)


def test_a_spent_probe_assist_budget_says_so_not_to_check_the_key():
    """The client's RateLimited for probe-assist names the request budget (the pairing
    limit's hint, "check the access key and the target IP", would mislead)."""
    from stunturn_diag.errors import RateLimited
    from stunturn_diag.signaling import SignalingClient

    config = ServerConfig(http_port=0, stun_port=0, alt_port=0, alt_ip="127.0.0.2",
                          probe_assist=ProbeAssistConfig(burst=2, rate=0.1))
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))        # bound, never listening: connects are refused
    with start_server(config) as handle:
        client = SignalingClient(handle.http_url)
        body = {"port": closed.getsockname()[1], "from": ["alt-port"], "attempts": 1}
        with pytest.raises(RateLimited) as caught:
            for _ in range(4):
                client.post("/v1/probe/tcp-connect", body)
    closed.close()
    assert caught.value.status == 429 and caught.value.retry_after >= 1
    assert "probe-assist" in caught.value.hint and "access key" not in caught.value.hint
