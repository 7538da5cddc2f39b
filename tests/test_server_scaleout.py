"""Running several servers: gunicorn workers sharing Redis, JSON log lines, a separate
metrics listener, configuration from the environment and the shared secret."""

from __future__ import annotations

import json
import os
import signal
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


def _gunicorn(redis_server, port: int, *args: str, **env: str) -> subprocess.Popen:
    """``gunicorn -k gevent -w 2`` serving stunturn_server.wsgi:app on 127.0.0.1:``port``,
    answering /healthz (ended by PID by the caller)."""
    pytest.importorskip("gunicorn")
    env = dict(os.environ, STUNTURN_REDIS_URL=redis_server.url, STUNTURN_SERVER_SECRET=SECRET,
               STUNTURN_WAIT_TIMEOUT="20", STUNTURN_LOG_LEVEL="WARNING", **env)
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", *args, "-k", "gevent", "-w", "2",
                             "--worker-connections", "2000", "-b", f"127.0.0.1:{port}",
                             "stunturn_server.wsgi:app"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = _At(port)

    def up():
        try:
            return request(server, "GET", "/healthz", timeout=2)[0] == 200
        except OSError:
            return False
    try:
        wait_for(up, timeout=30, what="gunicorn to answer")
    except BaseException:
        stop_process(proc)
        raise
    return proc


def _pairs(server, redis_server, keys: list[str]) -> None:
    """Pair an initiator and a receiver for each key; the initiators all wait at once."""
    waits = [in_background(initiate, server, key=key, timeout=15) for key in keys]
    assert wait_for(lambda: redis_server.keys("stunturn:w:*") == len(keys), timeout=15,
                    what="every initiator in Redis")
    assert [checkin(server, key=key)[0] for key in keys] == [200] * len(keys)
    for thread, _ in waits:
        thread.join(15)
    assert [result["value"][0] for _, result in waits] == [200] * len(keys)


def test_gunicorn_workers_pair_with_each_other_through_redis(redis_server):
    port = free_tcp_port()
    proc = _gunicorn(redis_server, port)
    try:
        # the kernel spreads connections over both workers: pairs cross them
        _pairs(_At(port), redis_server, [f"gunicorn-key-{i}" for i in range(20)])
    finally:
        stop_process(proc)


def _scrape(server) -> dict:
    """``/metrics`` as {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_address[1]}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def _per_worker(metrics_dir, name: str, kind: str = "counter") -> dict[int, float]:
    """Worker pid -> the value of the unlabelled metric ``name`` in that worker's own
    ``<kind>_<pid>.db`` file."""
    from prometheus_client.multiprocess import MultiProcessCollector

    out = {}
    for path in metrics_dir.glob(f"{kind}_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        for family in MultiProcessCollector.merge([str(path)]):
            out[pid] = out.get(pid, 0) + sum(s.value for s in family.samples if s.name == name)
    return out


def test_gunicorn_metrics_count_every_worker(redis_server, tmp_path):
    """With stunturn_server.gunicorn_conf any worker's /metrics is the sum of all workers:
    check-ins spread over both, every scrape shows the totals; stale files of an earlier
    run are gone at start and a dead worker's counts stay, its waiting gauge does not."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"an earlier run's file, not a valid one")
    port = free_tcp_port()
    proc = _gunicorn(redis_server, port, "-c", "python:stunturn_server.gunicorn_conf",
                     PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    server = _At(port)
    try:
        assert not (metrics_dir / "counter_1.db").exists()
        done = 0
        for round_ in range(10):  # until both workers have matched some (the kernel decides)
            _pairs(server, redis_server, [f"metrics-key-{round_}-{i}" for i in range(10)])
            done += 10
            matched = _per_worker(metrics_dir, "stunturn_matches_total")
            if len([n for n in matched.values() if n]) == 2:
                break
        assert len([n for n in matched.values() if n]) == 2, matched
        assert sum(matched.values()) == done and max(matched.values()) < done
        for _ in range(6):  # whichever worker answers, it tells the totals
            figures = _scrape(server)
            assert figures[("stunturn_matches_total", ())] == done
            assert figures[("stunturn_checkins_total", (("result", "matched"),))] == done
            assert figures[("stunturn_initiates_total", ())] == done
            assert figures[("stunturn_initiator_wait_seconds_count", ())] == done

        # initiators waiting now, on both workers: the gauge is their sum
        waits = [in_background(initiate, server, key=f"waiting-key-{i}", timeout=20) for i in range(12)]
        assert wait_for(lambda: redis_server.keys("stunturn:w:*") == 12, timeout=15, what="the waiters")
        assert wait_for(lambda: _scrape(server)[("stunturn_waiters", ())] == 12, timeout=15,
                        what="the gauge to count every worker's waiters")
        # a worker dies: gunicorn starts another, child_exit drops the dead one's live gauge
        held = _per_worker(metrics_dir, "stunturn_waiters", "gauge_livesum")
        assert sum(held.values()) == 12, held
        victim = next(pid for pid, n in held.items() if n)
        os.kill(victim, signal.SIGKILL)
        assert wait_for(lambda: not (metrics_dir / f"gauge_livesum_{victim}.db").exists(), timeout=30,
                        what="child_exit to mark the worker dead")
        assert wait_for(lambda: len(list(metrics_dir.glob("gauge_livesum_*.db"))) == 2, timeout=30,
                        what="the new worker")
        figures = wait_for(_scrape_ok(server), timeout=30, what="a scrape after the restart")
        assert figures[("stunturn_matches_total", ())] == done  # counters never go down
        assert figures[("stunturn_waiters", ())] == 12 - held[victim]  # the survivor's waiters
        for thread, _ in waits:
            thread.join(30)
    finally:
        stop_process(proc)


def _scrape_ok(server):
    def scrape():
        try:
            return _scrape(server)
        except OSError:
            return None
    return scrape


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


def test_config_from_env_sets_the_limits():
    config = config_from_env({"STUNTURN_FAILURE_BURST": "3", "STUNTURN_FAILURE_RATE": "0.5",
                              "STUNTURN_TARGET_FAILURE_BURST": "7", "STUNTURN_TARGET_FAILURE_RATE": "1.5",
                              "STUNTURN_MAX_WAITERS": "500"})
    assert (config.failure_burst, config.failure_rate) == (3, 0.5)
    assert (config.target_failure_burst, config.target_failure_rate) == (7, 1.5)
    assert config.max_waiters == 500
    with pytest.raises(ConfigError, match="failure_burst"):
        config_from_env({"STUNTURN_FAILURE_BURST": "0"})
    with pytest.raises(ConfigError, match="not a valid float"):
        config_from_env({"STUNTURN_FAILURE_RATE": "fast"})


def test_metrics_count_both_families_of_a_dual_stack_server():
    """The IPv6 STUN service's requests are counted beside the IPv4 one's."""
    from stunturn_diag.sansio.stun import encode
    import socket

    with start_server(ServerConfig(http_port=0, stun_port=0, alt_port=0, http_host6="::1")) as server:
        v4, v6 = server.stun_endpoints[0], server.stun6_endpoints[0]
        for family, endpoint in ((socket.AF_INET, v4), (socket.AF_INET6, v6)):
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.settimeout(5)
                sock.sendto(encode(fresh_binding_request()), (endpoint["ip"], endpoint["port"]))
                sock.recvfrom(2048)
        with urllib.request.urlopen(server.http_url + "/metrics", timeout=10) as response:
            text = response.read().decode()
        assert 'stunturn_stun_requests_total{kind="all"} 2.0' in text
