"""Running several servers: gunicorn workers sharing Redis, JSON log lines, a separate
metrics listener, configuration from the environment and the shared secret."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import pytest

from redislib import RedisServer, free_tcp_port
from stunturn_diag.errors import ConfigError
from stunturn_server.config import ServerConfig, config_from_env, load_secret, redact_url
from stunturn_server.runner import start_server
from stunturn_diag.stun_requests import fresh_binding_request
from test_server_longpoll import _rv, checkin, in_background, initiate, request
from testlib import stop_process, wait_for

SECRET = "gunicorn-test-secret-0123456789"


@pytest.fixture
def redis_server():
    server = RedisServer().start()
    yield server
    server.close()


class _At:
    def __init__(self, port: int) -> None:
        self.http_address = ("127.0.0.1", port)


def test_gunicorn_workers_pair_with_each_other_through_redis(redis_server):
    pytest.importorskip("gunicorn")
    port = free_tcp_port()
    env = dict(os.environ, STUNTURN_REDIS_URL=redis_server.url, STUNTURN_SERVER_SECRET=SECRET,
               STUNTURN_WAIT_TIMEOUT="20", STUNTURN_LOG_LEVEL="WARNING")
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", "2",
                             "--worker-connections", "2000", "-b", f"127.0.0.1:{port}",
                             "stunturn_server.wsgi:app"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    server = _At(port)
    try:
        def up():
            try:
                return request(server, "GET", "/healthz", timeout=2)[0] == 200
            except OSError:
                return False
        wait_for(up, timeout=30, what="gunicorn to answer")
        n = 20  # the kernel spreads connections over both workers: pairs cross them
        waits = [in_background(initiate, server, key=f"gunicorn-key-{i}", timeout=15) for i in range(n)]
        counted = wait_for(lambda: redis_server.keys("stunturn:w:*") == n, timeout=15,
                           what="every initiator in Redis")
        assert counted
        assert [checkin(server, key=f"gunicorn-key-{i}")[0] for i in range(n)] == [200] * n
        for thread, _ in waits:
            thread.join(15)
        assert [result["value"][0] for _, result in waits] == [200] * n
    finally:
        stop_process(proc)


def test_json_log_lines_name_each_pairing_event_and_never_the_key(tmp_path):
    key = "json-log-key-never-logged-0815"
    proc = subprocess.Popen([sys.executable, "-m", "stunturn_diag", "serve", "127.0.0.1:0", "--no-stun",
                             "--json", "--log-format", "json", "--wait-timeout", "5"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        described = json.loads(proc.stdout.readline())
        port = int(described["http_url"].rsplit(":", 1)[1])
        server = _At(port)
        assert initiate(server, key=key, timeout=0.1)[0] == 408
        assert checkin(server, key=key)[0] == 404
    finally:
        stop_process(proc)
    lines = [json.loads(line) for line in proc.stderr.read().splitlines() if line.startswith("{")]
    events = [line["event"] for line in lines if "event" in line]
    # "waiting" is DEBUG since issue 10 (a failed guess is one line, not two)
    assert events == ["pair-timeout", "pair-no-initiator"], lines
    timeout = next(line for line in lines if line.get("event") == "pair-timeout")
    assert timeout["target"] == "127.0.0.2" and len(timeout["key"]) == 8 and timeout["level"] == "INFO"
    assert all(key not in json.dumps(line) and _rv(key) not in json.dumps(line) for line in lines)


def test_metrics_on_a_separate_listener_and_not_on_the_api_port():
    port = free_tcp_port()
    with start_server(ServerConfig(http_port=0, stun_enabled=False,
                                   metrics_listen=("127.0.0.1", port))) as server:
        assert server.metrics_url == f"http://127.0.0.1:{port}/metrics"
        assert initiate(server, timeout=0.05)[0] == 408
        with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
            text = response.read().decode()
        assert "stunturn_timeouts_total 1.0" in text
        assert 'stunturn_http_responses_total{route="signaling.initiate",status="408"} 1.0' in text
        assert request(server, "GET", "/metrics")[0] == 404


def test_stun_counters_reach_metrics():
    from stunturn_diag.sansio.stun import binding_request, encode
    import socket

    with start_server(ServerConfig(http_port=0, stun_port=0, alt_port=0)) as server:
        primary = server.stun_endpoints[0]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            sock.sendto(encode(fresh_binding_request()), (primary["ip"], primary["port"]))
            sock.recvfrom(2048)
            sock.sendto(b"not stun at all, just bytes", (primary["ip"], primary["port"]))
        def scraped():
            with urllib.request.urlopen(server.http_url + "/metrics", timeout=10) as response:
                text = response.read().decode()
            return text if 'stunturn_stun_drops_total{reason="non_stun"} 1.0' in text else None
        text = wait_for(scraped, what="the dropped datagram to be counted")
        assert 'stunturn_stun_requests_total{kind="all"} 1.0' in text


def test_config_from_env_and_the_secret(tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"0123456789abcdef0123\n")
    config = config_from_env({"STUNTURN_REDIS_URL": "redis://:pw@127.0.0.1:6379/2",
                              "STUNTURN_SERVER_SECRET_FILE": str(secret), "STUNTURN_WAIT_TIMEOUT": "12",
                              "STUNTURN_LOG_FORMAT": "json"})
    assert config.key_secret == b"0123456789abcdef0123" and config.wait_timeout == 12
    assert config.log_format == "json" and not config.stun_enabled
    assert "pw" not in repr(config) and "0123456789abcdef" not in repr(config)
    assert redact_url("redis://:pw@127.0.0.1:6379/2") == "redis://:***@127.0.0.1:6379/2"
    assert load_secret(None, {"STUNTURN_SERVER_SECRET": "x" * 20}) == b"x" * 20
    assert load_secret(None, {}) is None
    with pytest.raises(ConfigError, match="16 to 64"):
        load_secret(None, {"STUNTURN_SERVER_SECRET": "short"})
    with pytest.raises(ConfigError, match="not a valid int"):
        config_from_env({"STUNTURN_MAX_WAITERS_PER_IP": "many"})
    assert config.probe_assist.enabled and not config.turn.enabled


def test_config_from_env_fills_the_typed_sections():
    config = config_from_env({"STUNTURN_TURN_SERVER": "198.51.100.10:3478", "STUNTURN_TURN_SECRET": "s3",
                              "STUNTURN_TURN_TTL": "120", "STUNTURN_PROBE_ASSIST": "off",
                              "STUNTURN_ALLOWED_HOSTS": "stun.example.test, other.example.test"})
    assert config.turn.address == ("198.51.100.10", 3478) and config.turn.ttl == 120
    assert config.turn.secret == "s3" and "s3" not in repr(config)
    assert not config.probe_assist.enabled
    assert config.probe_assist.allowed_hosts == ("stun.example.test", "other.example.test")
    with pytest.raises(ConfigError, match="STUNTURN_PROBE_ASSIST"):
        config_from_env({"STUNTURN_PROBE_ASSIST": "maybe"})
    with pytest.raises(ConfigError, match="--turn-secret"):
        config_from_env({"STUNTURN_TURN_SERVER": "198.51.100.10:3478"})
    with pytest.raises(ConfigError, match="invalid Redis URL"):
        ServerConfig(redis_url="http://127.0.0.1:6379", key_secret=b"s" * 16)
