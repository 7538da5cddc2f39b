"""Server probe-assist routes: caller-only target, validation, rate limit, bounded work."""

from __future__ import annotations

import select
import socket
import time

import pytest

from stunturn_diag.sansio.assist_frame import ASSIST_MAGIC
from stunturn_server import probe_assist_runner
from stunturn_server.app import create_app
from stunturn_server.config import ProbeAssistConfig, ServerConfig
from stunturn_server.sansio.limits import TokenBucket


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def client(clock):
    app = create_app(ServerConfig(http_port=0, alt_ip="127.0.0.2",
                                  probe_assist=ProbeAssistConfig(burst=3, rate=1.0)), clock=clock)
    return app.test_client()


@pytest.fixture
def listener():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield s
    s.close()


def test_info_advertises_probe_assist(client):
    assert client.get("/v1/info").json["probe_assist"] is True


def test_connects_back_to_the_caller_from_both_sources(client, listener):
    port = listener.getsockname()[1]
    r = client.post("/v1/probe/tcp-connect", json={"port": port, "attempts": 1, "token": "c0ffee"})
    assert r.status_code == 200
    body = r.json
    assert body["target"] == {"ip": "127.0.0.1", "port": port}  # REMOTE_ADDR, never caller-chosen
    by = {x["from"]: x for x in body["results"]}
    assert by["alt-ip"]["outcome"] == "connected" and by["alt-port"]["outcome"] == "connected"
    assert by["alt-ip"]["attempts"][0]["source"]["ip"] == "127.0.0.2"
    conn, peer = listener.accept()
    conn.settimeout(2)
    # never the caller's bytes alone: the fixed frame (magic prefix + the token in hex)
    assert conn.recv(64) == ASSIST_MAGIC + b"c0ffee"
    conn.close()


def test_closed_port_reads_as_rst(client):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    r = client.post("/v1/probe/tcp-connect", json={"port": port, "from": ["alt-port"], "attempts": 1})
    assert r.json["results"][0]["outcome"] == "rst"


def test_an_answering_target_costs_one_attempt_per_source(client, listener):
    """Attempts are staggered and stop at the first definitive answer: a NAT that answers
    (RST here; ICMP alike, which routers rate-limit) sees one SYN per source, not three."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    closed = s.getsockname()[1]
    s.close()
    r = client.post("/v1/probe/tcp-connect", json={"port": closed, "attempts": 3})
    assert [(x["outcome"], len(x["attempts"])) for x in r.json["results"]] == [("rst", 1), ("rst", 1)]
    port = listener.getsockname()[1]
    r = client.post("/v1/probe/tcp-connect", json={"port": port, "from": ["alt-ip"], "attempts": 3})
    assert [(x["outcome"], len(x["attempts"])) for x in r.json["results"]] == [("connected", 1)]


@pytest.mark.parametrize("body", [
    {}, {"port": 0}, {"port": 70000}, {"port": "80"}, {"port": True},
    {"port": 80, "from": ["elsewhere"]}, {"port": 80, "from": []}, {"port": 80, "from": ["alt-ip", "alt-ip"]},
    {"port": 80, "attempts": 4}, {"port": 80, "attempts": 0}, {"port": 80, "timeout_ms": 10},
    {"port": 80, "timeout_ms": 60000}, {"port": 80, "token": "XYZ"}, {"port": 80, "token": "a" * 40}, {"port": 80, "token": "abc"},
    {"port": 80, "target": "192.0.2.1"},
])
def test_bad_requests_are_400_and_send_nothing(client, body):
    r = client.post("/v1/probe/tcp-connect", json=body)
    assert r.status_code == 400 and r.json["error"] == "bad-request"


def test_not_json_is_415(client):
    r = client.post("/v1/probe/tcp-connect", data="port=1", content_type="text/plain")
    assert r.status_code == 415


def test_rate_limited_per_source_with_injected_clock(client, clock, listener):
    port = listener.getsockname()[1]
    body = {"port": port, "from": ["alt-port"], "attempts": 1}
    assert [client.post("/v1/probe/tcp-connect", json=body).status_code for _ in range(4)] == \
        [200, 200, 200, 429]
    clock.t += 1.0  # one token back per second
    assert client.post("/v1/probe/tcp-connect", json=body).status_code == 200
    assert client.post("/v1/probe/tcp-connect", json=body).status_code == 429


def test_token_bucket_is_per_key():
    b = TokenBucket(2, 0.5)
    assert [b.take("a", 0), b.take("a", 0), b.take("a", 0), b.take("b", 0)] == [True, True, False, True]
    assert b.retry_after("a", 0) == 2.0 and b.retry_after("b", 0) == 0
    assert b.take("a", 2.0) and not b.take("a", 2.0)


def test_concurrency_cap_gives_503(clock, listener):
    app = create_app(ServerConfig(http_port=0, alt_ip="127.0.0.2",
                                  probe_assist=ProbeAssistConfig(concurrency=1)), clock=clock)
    r = app.test_client().post("/v1/probe/tcp-connect", json={"port": listener.getsockname()[1]})
    assert r.status_code == 503 and r.json["error"] == "busy"


def test_without_alt_ip_alt_ip_source_is_unavailable(clock, listener):
    app = create_app(ServerConfig(http_port=0), clock=clock)
    r = app.test_client().post("/v1/probe/tcp-connect", json={"port": listener.getsockname()[1]})
    by = {x["from"]: x for x in r.json["results"]}
    assert by["alt-ip"]["outcome"] == "unavailable" and by["alt-port"]["outcome"] == "connected"


def test_simopen_reserves_a_source_and_connects_later(client, listener):
    port = listener.getsockname()[1]
    r = client.post("/v1/probe/tcp-simopen", json={"port": port, "delay_ms": 0, "timeout_ms": 500,
                                                   "token": "ab"})
    assert r.status_code == 200
    src = r.json["source"]
    assert src["ip"] == "127.0.0.2" and src["port"] > 0
    listener.settimeout(3)
    conn, peer = listener.accept()
    assert peer == (src["ip"], src["port"])
    conn.close()


def test_a_finished_simopen_gives_its_sources_place_back(clock, listener):
    """Its connect place is the caller's source's: once the delayed connect is done, that
    source holds none (the place was once given back under the reserved port's address, so
    every simultaneous open kept one of the source's 8 and the ninth probe got 429 busy)."""
    app = create_app(ServerConfig(http_port=0, alt_ip="127.0.0.2",
                                  probe_assist=ProbeAssistConfig(burst=1000)), clock=clock)
    slots = app.extensions["stunturn_probe_assist"].limits.slots
    c = app.test_client()
    listener.settimeout(3)
    for _ in range(slots.per_source + 1):
        r = c.post("/v1/probe/tcp-simopen", json={"port": listener.getsockname()[1], "delay_ms": 0})
        assert r.status_code == 200, r.json
        listener.accept()[0].close()
        deadline = time.monotonic() + 3
        while slots.count and time.monotonic() < deadline:
            time.sleep(0.005)
        assert slots.held == {} and slots.count == 0


@pytest.mark.parametrize("body", [{"port": 80, "delay_ms": -1}, {"port": 80, "delay_ms": 5000},
                                  {"port": 80, "attempts": 1}, {"delay_ms": 1}])
def test_simopen_bad_requests(client, body):
    assert client.post("/v1/probe/tcp-simopen", json=body).status_code == 400


def test_icmp_error_is_read_from_the_error_queue():
    """A UDP socket with IP_RECVERR gets the ICMP port unreachable of a closed loopback port."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, probe_assist_runner.IP_RECVERR, 1)
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    s.sendto(b"x", ("127.0.0.1", port))
    select.select([s], [], [], 2.0)  # a queued error makes the socket readable (POLLERR)
    err = probe_assist_runner.icmp_error(s)
    s.close()
    assert err is not None and err["type"] == 3 and err["code"] == 3


def test_random_bodies_never_500(clock):
    import random
    app = create_app(ServerConfig(http_port=0, alt_ip="127.0.0.2",
                                  probe_assist=ProbeAssistConfig(burst=1000)), clock=clock)
    c = app.test_client()
    rng = random.Random(7)
    values = [None, True, -1, 0, 1, 65536, 3.5, "x", "", [], ["alt-ip"], {}, "ab" * 20, 10 ** 30]
    keys = ["port", "from", "attempts", "timeout_ms", "token", "delay_ms", "junk"]
    for _ in range(300):
        body = {k: rng.choice(values) for k in rng.sample(keys, rng.randint(0, 4))}
        for path in ("/v1/probe/tcp-connect", "/v1/probe/tcp-simopen"):
            r = c.post(path, json=body)
            assert r.status_code in (200, 400, 429, 503), (path, body, r.json)
            assert "error" in r.json or "target" in r.json


def test_token_bucket_forgets_refilled_buckets_only():
    b = TokenBucket(2, 0.5, sweep_at=3)
    for key in "abc":  # drained: never counted as full by their stored tokens
        assert b.take(key, 0) and b.take(key, 0) and not b.take(key, 0)
    # at t=10 a, b, c are full again
    assert b.take("d", 10) and b.take("d", 10) and not b.take("d", 10)  # 4 keys > 3: sweep
    assert set(b._state) == {"d"}
    assert not b.take("d", 10)  # a drained bucket is kept


@pytest.mark.parametrize("setting", [{"rate": "fast"}, {"burst": 0}, {"concurrency": 0.5}])
def test_bad_probe_assist_setting_is_a_config_error_at_start(setting):
    from stunturn_diag.errors import ConfigError
    with pytest.raises(ConfigError, match=r"probe_assist\."):
        create_app(ServerConfig(http_port=0, probe_assist=ProbeAssistConfig(**setting)))


def test_simopen_without_a_thread_is_503_and_gives_the_slot_back(clock, listener, monkeypatch):
    app = create_app(ServerConfig(http_port=0, alt_ip="127.0.0.2",
                                  probe_assist=ProbeAssistConfig(concurrency=1)), clock=clock)
    body = {"port": listener.getsockname()[1], "delay_ms": 0}

    def no_thread(self):
        raise RuntimeError("can't start new thread")
    monkeypatch.setattr(probe_assist_runner.threading.Thread, "start", no_thread)
    r = app.test_client().post("/v1/probe/tcp-simopen", json=body)
    assert r.status_code == 503 and r.json["error"] == "busy"
    assert app.extensions["stunturn_probe_assist"].limits.slots.count == 0
