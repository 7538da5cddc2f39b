"""The failed-attempt limits in a real redis-server (started here, ended by PID): one budget
for every instance sharing the Redis, the pure limiter's arithmetic, TTLs, key names that
name no address, and 503 (never a 500 or a hang) when Redis is gone."""

from __future__ import annotations

import random

import pytest

from redislib import RedisServer
from stunturn_diag.errors import StoreUnavailable
from stunturn_server.redis_limits import RedisFailureLimiter
from stunturn_server.redis_store import RedisStore, secret_fingerprint
from stunturn_server.runner import start_server
from stunturn_server.sansio.limits import FailureLimiter
from test_server_limits import failures_per_source_and_per_target, retry_after_whole_seconds_rounded_up
from test_server_longpoll import KEY, _rv, checkin, initiate
from test_server_redis import SECRET, config
from testlib import wait_for

GUESSER, HONEST, TARGET = "127.0.0.5", "127.0.0.6", "127.0.0.7"


@pytest.fixture
def redis_server():
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture
def store(redis_server):
    """A started store (in this thread's gevent hub) whose pool the limiters use."""
    store = RedisStore(config(redis_server), fingerprint=secret_fingerprint(SECRET))
    store.start()
    yield store
    store.stop()


def _redis_limiter(store, **limits) -> RedisFailureLimiter:
    return RedisFailureLimiter(store, secret=SECRET, time_from_caller=True, **limits)


@pytest.mark.parametrize("table", [failures_per_source_and_per_target, retry_after_whole_seconds_rounded_up])
def test_the_pure_limiters_tables_hold_for_the_buckets_in_redis(store, redis_server, table):
    redis_server.command("FLUSHDB")
    table(lambda **limits: _redis_limiter(store, **limits))


def test_redis_buckets_answer_exactly_what_the_pure_ones_answer(store):
    """A random run of checks and charges at fractional times, the same on both."""
    rng = random.Random(4787)
    limits = dict(source_burst=3, source_rate=0.7, target_burst=5, target_rate=1.3)
    pure, shared = FailureLimiter(**limits), _redis_limiter(store, **limits)
    now, answers = 1000.0, []
    for _ in range(400):
        now += rng.choice((0.0, 0.01, 0.1, 0.37, 1.0, 2.5))
        source, target = rng.choice("abc"), rng.choice(["t", "u", None])
        if rng.random() < 0.6:
            pure.failed(source, target, now)
            shared.failed(source, target, now)
        expected = pure.retry_after(source, target, now)
        assert shared.retry_after(source, target, now) == expected, (source, target, now)
        answers.append(expected)
    assert None in answers and {1.0, 2.0} <= set(answers)  # the run reached both sides


def test_bucket_keys_expire_and_name_no_address(store, redis_server):
    limiter = RedisFailureLimiter(store, secret=SECRET, source_burst=2, source_rate=1.0,
                                  target_burst=4, target_rate=1.0)
    limiter.failed(GUESSER, TARGET, 0.0)      # Redis's clock: the 0.0 is not read
    keys = redis_server.command("EVAL", "return table.concat(redis.call('KEYS', 'stunturn:fail:*'), ' ')",
                                "0").decode().split()
    assert sorted(keys) == sorted([limiter.key("s", GUESSER), limiter.key("t", TARGET)])
    assert all(GUESSER not in k and TARGET not in k for k in keys)
    assert limiter.key("s", TARGET) != limiter.key("t", TARGET)  # sources and targets apart
    ttls = {k: int(redis_server.command("PTTL", k)[1:]) for k in keys}
    # an empty bucket is full again after burst / rate; the key lives that long plus a margin
    assert 0 < ttls[limiter.key("s", GUESSER)] <= 2_000 + 5_000
    assert 2_000 + 5_000 < ttls[limiter.key("t", TARGET)] <= 4_000 + 5_000
    assert limiter.retry_after(GUESSER, TARGET, 0.0) is None  # one of two tokens left
    limiter.failed(GUESSER, None, 0.0)
    assert limiter.retry_after(GUESSER, TARGET, 0.0) == 1.0
    assert limiter.retry_after(HONEST, TARGET, 0.0) is None


def test_a_stopped_redis_raises_store_unavailable(store, redis_server):
    limiter = RedisFailureLimiter(store, secret=SECRET, source_burst=2, source_rate=1.0,
                                  target_burst=4, target_rate=1.0)
    redis_server.stop()
    with pytest.raises(StoreUnavailable):
        limiter.retry_after(GUESSER, TARGET, 0.0)
    with pytest.raises(StoreUnavailable):
        limiter.failed(GUESSER, TARGET, 0.0)


def test_failures_spent_on_one_instance_are_refused_on_the_other_until_they_refill(redis_server):
    limits = dict(failure_burst=3, failure_rate=0.2, target_failure_burst=1000)
    with start_server(config(redis_server, **limits)) as a, start_server(config(redis_server, **limits)) as b:
        assert [checkin(a, source=GUESSER)[0] for _ in range(3)] == [404] * 3
        status, body = checkin(b, source=GUESSER)
        assert status == 429 and body["error"] == "rate-limited" and body["retry_after"] >= 1
        assert initiate(b, source=GUESSER, timeout=0.1)[0] == 429  # every pairing route
        assert initiate(a, source=GUESSER, timeout=0.1)[0] == 429
        assert checkin(b, source=HONEST)[0] == 404                # another source is untouched
        assert redis_server.keys(f"*{KEY}*") == redis_server.keys(f"*{_rv(KEY)}*") == 0
        assert redis_server.keys(f"*{GUESSER}*") == 0
        # a token comes back after 1 / rate = 5 s, on Redis's clock: the same for A and B
        assert wait_for(lambda: checkin(b, source=GUESSER)[0] == 404, timeout=30,
                        what="the guesser's bucket to refill")
        assert checkin(a, source=GUESSER)[0] == 429               # and that one token is spent


def test_failures_for_one_target_ip_count_across_instances(redis_server):
    limits = dict(failure_burst=1000, target_failure_burst=2, target_failure_rate=0.05)
    with start_server(config(redis_server, **limits)) as a, start_server(config(redis_server, **limits)) as b:
        assert initiate(a, source=GUESSER, target=TARGET, timeout=0.1)[0] == 408
        assert initiate(b, source=HONEST, target=TARGET, timeout=0.1)[0] == 408
        status, body = initiate(a, source="127.0.0.8", target=TARGET, timeout=0.1)
        assert status == 429 and body["error"] == "rate-limited"
        assert initiate(b, source="127.0.0.8", target="127.0.0.9", timeout=0.1)[0] == 408


def test_redis_gone_answers_503_store_unavailable_on_every_pairing_route(redis_server):
    with start_server(config(redis_server, redis_timeout=1.0)) as a:
        assert checkin(a, source=GUESSER)[0] == 404
        redis_server.stop()
        for status, body in (checkin(a, source=GUESSER), initiate(a, source=GUESSER, timeout=0.1)):
            assert status == 503 and body["error"] == "store-unavailable"
