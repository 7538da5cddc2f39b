"""Several instances pairing through one real redis-server (started here, ended by PID).

Instance A holds initiators, instance B takes receivers (and the other way round);
every race rule of the in-memory store must hold across them. Faults are real: Redis
is stopped, restarted on the same port and paused with DEBUG SLEEP.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.request

import pytest

from redislib import RedisServer, free_tcp_port
from stunturn_diag.errors import ConfigError
from stunturn_server.config import ServerConfig, read_password_file
from stunturn_server.runner import start_server
from test_server_longpoll import OTHER, RECEIVER, _rv, checkin, in_background, initiate, request, waiting
from testlib import stop_process, wait_for

SECRET = b"a-shared-secret-of-32-bytes-----"


@pytest.fixture
def redis_server():
    server = RedisServer().start()
    yield server
    server.close()


def config(redis_server, **overrides) -> ServerConfig:
    values = dict(http_port=0, stun_enabled=False, redis_url=redis_server.url, key_secret=SECRET,
                  wait_timeout=30)
    values.update(overrides)
    return ServerConfig(**values)


@pytest.fixture
def pair(redis_server):
    """Instances A and B sharing ``redis_server``."""
    a = start_server(config(redis_server))
    try:
        b = start_server(config(redis_server))
    except BaseException:
        a.stop()
        raise
    yield a, b
    b.stop()
    a.stop()


def test_initiator_on_a_is_matched_by_a_receiver_on_b_at_the_same_instant(pair):
    a, b = pair
    thread, result = in_background(initiate, a, details={"software": "on-a"})
    wait_for(lambda: waiting(a) == 1, what="the initiator on A")
    assert waiting(b) == 0  # /healthz counts what this instance holds
    status, answer = checkin(b, details={"software": "on-b"})
    assert status == 200 and answer["peer"]["details"] == {"software": "on-a"}
    thread.join(10)
    status, initiator = result["value"]
    assert status == 200 and initiator["match_id"] == answer["match_id"]
    assert initiator["peer"]["observed"]["ip"] == RECEIVER
    assert initiator["peer"]["details"] == {"software": "on-b"}
    assert checkin(b)[0] == 404  # delivered once


def test_second_initiator_conflicts_on_the_other_instance(pair):
    a, b = pair
    thread, result = in_background(initiate, a, timeout=5)
    wait_for(lambda: waiting(a) == 1, what="the initiator on A")
    assert initiate(b, timeout=1)[0] == 409  # the same source learns of it on any instance
    # another source is held like a waiter nobody answers (no oracle), on any instance too
    assert initiate(b, timeout=0.2, source="127.0.0.4")[0] == 408
    assert initiate(b, timeout=0.2, target=OTHER)[0] == 408  # another target IP is another slot
    assert checkin(a)[0] == 200  # the first one still pairs
    thread.join(10)
    assert result["value"][0] == 200


def test_exactly_one_of_many_concurrent_receivers_gets_the_match(pair):
    a, b = pair
    thread, result = in_background(initiate, a)
    wait_for(lambda: waiting(a) == 1, what="the initiator on A")
    statuses: list[int] = []
    start = threading.Barrier(16)

    def receiver(server):
        start.wait(10)
        statuses.append(checkin(server)[0])

    threads = [threading.Thread(target=receiver, args=((a, b)[i % 2],)) for i in range(16)]
    for each in threads:
        each.start()
    for each in threads:
        each.join(20)
    assert sorted(statuses) == [200] + [404] * 15
    thread.join(10)
    assert result["value"][0] == 200


def test_timed_out_or_hung_up_initiator_is_never_matched_and_the_key_works_again(pair, redis_server):
    a, b = pair
    assert initiate(a, timeout=0.2)[0] == 408
    assert checkin(b)[0] == 404
    # immediately usable again, on either instance
    thread, result = in_background(initiate, b, timeout=5)
    wait_for(lambda: waiting(b) == 1, what="the new initiator on B")
    assert checkin(a)[0] == 200
    thread.join(10)
    assert result["value"][0] == 200
    # a hang-up frees the slot everywhere
    raw = socket.create_connection(a.http_address, timeout=10)
    body = json.dumps({"rendezvous": _rv("long-poll-key-1"), "target_ip": RECEIVER, "protocol": "udp"}).encode()
    raw.sendall(b"POST /v1/initiate HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body) + body)
    wait_for(lambda: waiting(a) == 1, what="the raw initiator")
    raw.close()
    wait_for(lambda: waiting(a) == 0, what="the hang-up to be noticed")
    assert checkin(b)[0] == 404
    assert redis_server.keys("stunturn:w:*") == 0


def test_per_source_waiter_limit_holds_across_instances(redis_server):
    with start_server(config(redis_server, max_waiters_per_ip=1)) as a, \
            start_server(config(redis_server, max_waiters_per_ip=1)) as b:
        thread, result = in_background(initiate, a, timeout=5)
        wait_for(lambda: waiting(a) == 1, what="the initiator on A")
        status, body = initiate(b, target=OTHER, timeout=1)
        assert status == 429 and body["error"] == "too-many-waiters"
        assert initiate(b, target=OTHER, timeout=0.1, source="127.0.0.9")[0] == 408  # another source
        assert checkin(b)[0] == 200
        thread.join(10)
        assert initiate(b, target=OTHER, timeout=0.1)[0] == 408  # released: admitted again


def test_lost_notification_is_not_lost_data(pair):
    """A's subscriber misses the publish: the initiator still gets its match from the list."""
    a, b = pair
    a.store._on_message = lambda data: None  # notifications to A vanish
    thread, result = in_background(initiate, a, timeout=1.0)
    wait_for(lambda: waiting(a) == 1, what="the initiator on A")
    status, answer = checkin(b)
    assert status == 200
    thread.join(10)
    status, initiator = result["value"]
    assert status == 200 and initiator["match_id"] == answer["match_id"]


def test_stopping_an_instance_removes_its_waiters_at_once_and_spares_the_other(redis_server):
    a = start_server(config(redis_server))
    b = start_server(config(redis_server))
    try:
        on_a, result_a = in_background(initiate, a, timeout=20)
        on_b, result_b = in_background(initiate, b, target=OTHER, timeout=20)
        wait_for(lambda: waiting(a) == 1 and waiting(b) == 1, what="one initiator on each")
        a.stop()
        on_a.join(10)
        assert result_a["value"][0] == 503
        assert checkin(b)[0] == 404  # A's waiter left Redis with A, not by TTL
        assert checkin(b, source=OTHER)[0] == 200  # B's pair in flight is unaffected
        on_b.join(10)
        assert result_b["value"][0] == 200
    finally:
        a.stop()
        b.stop()


def test_a_crashed_instances_waiter_can_never_be_matched(redis_server, tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET + b"\n")
    proc = subprocess.Popen([sys.executable, "-m", "stunturn_diag", "serve", "127.0.0.1:0", "--no-stun",
                             "--json", "--log-level", "WARNING", "--wait-timeout", "1",
                             "--redis", redis_server.url, "--secret-file", str(secret)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("{"), proc.stderr.read()
        described = json.loads(line)
        assert described["store"] == "redis"
        host, port = described["http_url"].rsplit("/", 1)[1].rsplit(":", 1)
        crashed = type("S", (), {"http_address": (host, int(port))})()
        raw = socket.create_connection(crashed.http_address, timeout=10)
        body = json.dumps({"rendezvous": _rv("long-poll-key-1"), "target_ip": RECEIVER, "protocol": "udp"}).encode()
        raw.sendall(b"POST /v1/initiate HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(body) + body)
        wait_for(lambda: waiting(crashed) == 1, what="the initiator on the doomed instance")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        raw.close()
        assert redis_server.keys("stunturn:w:*") == 1  # left behind by the crash ...
        with start_server(config(redis_server)) as b:
            # ... but past its deadline it is never matched and the slot is free again
            wait_for(lambda: initiate(b, timeout=0.1)[0] == 408, timeout=10, what="the slot to free")
            assert checkin(b)[0] == 404
    finally:
        stop_process(proc)


def test_another_secret_or_no_redis_refuses_to_start(redis_server):
    with start_server(config(redis_server)):
        pass
    with pytest.raises(ConfigError, match="another key-hashing secret"):
        start_server(config(redis_server, key_secret=b"some-other-secret-of-32-bytes---"))
    with pytest.raises(ConfigError, match="same secret"):
        ServerConfig(redis_url=redis_server.url)
    down = RedisServer()
    with pytest.raises(ConfigError, match="cannot use the Redis at redis://127.0.0.1:%d" % down.port):
        start_server(config(down))
    down.close()


def test_redis_lost_answers_503_and_service_resumes_by_itself(redis_server):
    with start_server(config(redis_server)) as a:
        thread, result = in_background(initiate, a, timeout=20)
        wait_for(lambda: waiting(a) == 1, what="the initiator")
        redis_server.stop()
        thread.join(15)
        status, body = result["value"]
        assert status == 503 and body["error"] == "store-unavailable"  # answered, never a hang
        status, body = initiate(a, timeout=1)
        assert status == 503 and body["error"] == "store-unavailable" and "Redis" in body["message"]
        assert checkin(a)[0] == 503
        assert request(a, "GET", "/healthz")[0] == 200
        redis_server.start()
        wait_for(lambda: initiate(a, timeout=0.1)[0] == 408, timeout=15, what="pairing to resume")
        thread, result = in_background(initiate, a, timeout=10)
        wait_for(lambda: waiting(a) == 1, what="a new initiator")
        assert checkin(a)[0] == 200
        thread.join(10)
        assert result["value"][0] == 200


def answers_ping(redis_server) -> bool:
    try:
        return redis_server.command("PING", timeout=0.3) == b"+PONG"
    except OSError:  # socket.timeout included
        return False


def test_a_paused_redis_never_stalls_the_hub_with_1000_waiters(redis_server):
    n = 1000
    cfg = config(redis_server, max_waiters_per_ip=n, max_connections_per_ip=2 * n, redis_pool_size=16)
    with start_server(cfg) as a:
        socks = []
        try:
            for i in range(n):
                sock = socket.create_connection(a.http_address, timeout=10)
                body = json.dumps({"rendezvous": _rv(f"paused-key-{i:05d}"), "target_ip": RECEIVER,
                                   "protocol": "udp"}).encode()
                sock.sendall(b"POST /v1/initiate HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n" % len(body) + body)
                socks.append(sock)
            wait_for(lambda: waiting(a) == n, timeout=60, what=f"{n} waiters")
            sleeper = threading.Thread(target=redis_server.command, args=("DEBUG", "SLEEP", "3"),
                                       kwargs={"timeout": 10})
            sleeper.start()
            wait_for(lambda: not answers_ping(redis_server), what="Redis to be paused")
            during = []
            while sleeper.is_alive() and len(during) < 20:
                h = request(a, "GET", "/healthz", timeout=2)
                i = request(a, "GET", "/v1/info", timeout=2)
                during.append((h[0], h[1]["waiting"], i[0]))
            sleeper.join(10)
            assert during, "Redis did not stay paused long enough to probe"
            assert all(s1 == 200 and w == n and s2 == 200 for s1, w, s2 in during), during
            status, _ = checkin(a, key="paused-key-00007")
            assert status == 200  # and pairing goes on once Redis answers again
        finally:
            for sock in socks:
                sock.close()


def test_metrics_count_pairing_events(pair):
    a, b = pair
    thread, _ = in_background(initiate, a)
    wait_for(lambda: waiting(a) == 1, what="the initiator")
    assert checkin(b)[0] == 200
    thread.join(10)
    assert checkin(b)[0] == 404
    with urllib.request.urlopen(b.http_url + "/metrics", timeout=10) as response:
        text_b = response.read().decode()
        assert response.headers["Content-Type"].startswith("text/plain")
    with urllib.request.urlopen(a.http_url + "/metrics", timeout=10) as response:
        text_a = response.read().decode()
    assert 'stunturn_checkins_total{result="matched"} 1.0' in text_b
    assert 'stunturn_checkins_total{result="no-initiator"} 1.0' in text_b
    assert "stunturn_matches_total 1.0" in text_b
    assert "stunturn_initiates_total 1.0" in text_a and "stunturn_waiters 0.0" in text_a
    assert "stunturn_pairing_latency_seconds_count 1.0" in text_b
    assert "stunturn_initiator_wait_seconds_count 1.0" in text_a


def test_tls_and_a_password_from_a_file(tmp_path):
    """``rediss://`` with the CA in the URL and the password in a file; the plain port stays
    for the test's own control connection (which needs the password too)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    tls_port = free_tcp_port()
    password = tmp_path / "redis-password"
    password.write_text("tls-test-password\n")
    server = RedisServer(extra=["--tls-port", str(tls_port), "--tls-cert-file", str(cert),
                                "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
                                "--tls-auth-clients", "no"])
    try:
        server.start()
        server.command("CONFIG", "SET", "requirepass", "tls-test-password")
        url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={cert}"
        tls = dict(redis_url=url, redis_password=read_password_file(str(password)))
        with start_server(config(server, **tls)) as a, start_server(config(server, **tls)) as b:
            thread, result = in_background(initiate, a)
            wait_for(lambda: waiting(a) == 1, what="the initiator on A")
            assert checkin(b)[0] == 200
            thread.join(10)
            assert result["value"][0] == 200
        with pytest.raises(ConfigError, match="cannot use the Redis at rediss://"):
            start_server(config(server, redis_url=url))  # no password
    finally:
        server.close()


def test_a_cancel_never_deletes_a_newer_waiter_and_expired_ones_are_never_taken(redis_server):
    """The store's Lua steps on their own (in this thread's gevent hub): W1 lapses, W2 takes
    the slot, W1's late cancel must leave W2 alone; a lapsed record is not taken."""
    from stunturn_server.sansio.matching import Slot, Waiter
    from stunturn_server.redis_store import RedisStore, secret_fingerprint

    store = RedisStore(config(redis_server), fingerprint=secret_fingerprint(SECRET))
    store.start()
    try:
        slot = Slot(b"\x01" * 32, RECEIVER)
        old = Waiter("a" * 16, slot, "udp", ("127.0.0.1", 1000), {}, deadline=0.05)
        new = Waiter("b" * 16, slot, "udp", ("127.0.0.1", 1001), {}, deadline=30)
        store.open_mailbox(old.waiter_id)
        assert store.put_waiter(old, now=0)
        assert not store.put_waiter(new, now=0)  # occupied while W1 is live: 409
        key = store._slot_key(slot)

        def lapsed() -> bool:  # on Redis's clock, the one the scripts read
            deadline = int(redis_server.command("GET", key).split(b"|")[1])
            now = redis_server.command("EVAL", "local t = redis.call('TIME') "
                                       "return t[1] * 1000 + math.floor(t[2] / 1000)", "0")
            return int(now[1:]) >= deadline
        wait_for(lapsed, what="W1's deadline to pass")
        assert store.take_waiter(slot, now=0) is None      # lapsed: never taken ...
        assert redis_server.keys("stunturn:w:*") == 1       # ... though its record is still there
        assert store.put_waiter(new, now=0)     # a lapsed record gives way at once
        assert store.remove_waiter(old) is False  # W1's late cancel: not W1's record any more
        taken = store.take_waiter(slot, now=0)
        assert taken is not None and taken.waiter_id == new.waiter_id and taken.observed[1] == 1001
        assert store.take_waiter(slot, now=0) is None  # taken once
    finally:
        store.stop()


def test_one_claim_takes_a_dual_stack_initiator_everywhere_and_releases_its_admission(redis_server):
    """The claim script in one step (stores A and B in this thread's gevent hub): the
    initiator waits on A in one slot per receiver IP; B's check-in from one IP takes it,
    empties the other slot, releases its per-source admission and delivers to A."""
    from stunturn_server.sansio.matching import KeyHasher, Matcher
    from stunturn_server.redis_store import RedisStore, secret_fingerprint

    a, b = (RedisStore(config(redis_server), fingerprint=secret_fingerprint(SECRET)) for _ in range(2))
    a.start()
    b.start()
    try:
        ids = iter(range(100))
        on_a, on_b = (Matcher(store, KeyHasher(SECRET), new_id=lambda: f"{next(ids):016x}")
                      for store in (a, b))
        admission = a.admit_source("127.0.0.9", 5)
        reg = on_a.register("k" * 64, ("127.0.0.1", "::1"), "udp", observed=("127.0.0.9", 4000),
                            details={"x": 1}, now=0, timeout=30, admission=admission)
        assert redis_server.keys("stunturn:w:*") == 2
        assert redis_server.command("ZCARD", "stunturn:src:127.0.0.9") == b":1"
        match = on_b.checkin("k" * 64, observed=("::1", 5000), details={"y": 2}, now=0)
        assert match is not None and match.initiator.details == {"x": 1}
        assert redis_server.keys("stunturn:w:*") == 0   # both slots gone in the same step
        assert redis_server.command("ZCARD", "stunturn:src:127.0.0.9") == b":0"
        got = reg.mailbox.wait(5)  # through A's subscriber
        assert got is not None and got.match_id == match.match_id and got.protocol == "udp"
        assert got.receiver_observed == ("::1", 5000) and got.receiver_details == {"y": 2}
        assert admission.released  # A's release sends nothing more
        assert on_b.checkin("k" * 64, observed=("127.0.0.1", 5001), details={}, now=0) is None
    finally:
        b.stop()
        a.stop()
