"""Pure limits: token buckets, failed-attempt limiter, concurrency shares, log throttle (time injected)."""

from __future__ import annotations

import pytest

from stunturn_server.sansio.limits import ConcurrencyLimiter, FailureLimiter, LogThrottle, TokenBucket


def test_bucket_refills_at_its_rate_and_says_when():
    b = TokenBucket(burst=3, rate=2.0)
    assert [b.take("k", 0.0) for _ in range(4)] == [True, True, True, False]
    assert b.retry_after("k", 0.0) == pytest.approx(0.5)
    assert not b.take("k", 0.25) and b.take("k", 0.5)
    assert b.tokens("other", 0.5) == 3


def test_charge_never_goes_below_zero():
    b = TokenBucket(burst=1, rate=1.0)
    b.charge("k", 0.0)
    b.charge("k", 0.0)
    assert b.retry_after("k", 0.0) == pytest.approx(1.0)


def test_bad_bucket_is_refused():
    with pytest.raises(ValueError):
        TokenBucket(burst=0, rate=1.0)


def pure_failures(**limits) -> FailureLimiter:
    return FailureLimiter(**limits)


def failures_per_source_and_per_target(make) -> None:
    """A table for any failure limiter ``make(**limits)`` builds (tests/test_server_redis_limits.py
    runs it against the buckets in Redis too)."""
    f = make(source_burst=2, source_rate=1.0, target_burst=3, target_rate=1.0)
    assert f.retry_after("a", "t", 0.0) is None
    f.failed("a", "t", 0.0)
    f.failed("a", "t", 0.0)
    assert f.retry_after("a", "t", 0.0) == 1.0          # the source is out
    assert f.retry_after("b", "t", 0.0) is None         # another source, same target: still fine
    f.failed("b", "t", 0.0)
    assert f.retry_after("c", "t", 0.0) == 1.0          # the target has had 3 failures
    assert f.retry_after("c", "u", 0.0) is None
    assert f.retry_after("a", "t", 1.0) is None         # refilled


def retry_after_whole_seconds_rounded_up(make) -> None:
    f = make(source_burst=1, source_rate=0.4, target_burst=1, target_rate=100)
    f.failed("a", None, 0.0)
    assert f.retry_after("a", None, 0.0) == 3.0  # 2.5 s -> 3
    assert f.retry_after("a", None, 2.4) == 1.0  # 0.1 s -> at least 1
    assert f.retry_after("a", None, 2.5) is None
    f.failed("a", None, 2.5)
    f.failed("a", None, 2.5)                     # never below zero: still 2.5 s to wait
    assert f.retry_after("a", None, 2.5) == 3.0


def test_failures_limit_per_source_and_per_target():
    failures_per_source_and_per_target(pure_failures)


def test_retry_after_is_whole_seconds_rounded_up():
    retry_after_whole_seconds_rounded_up(pure_failures)


def test_concurrency_share_per_source_and_total():
    c = ConcurrencyLimiter(per_source=2, total=3)
    assert c.acquire("a", 2) is None
    assert c.acquire("a") == "source"
    assert c.acquire("b") is None
    assert c.acquire("c") == "total"
    c.release("a", 2)
    assert c.acquire("c") is None and c.count == 2 and c.held == {"b": 1, "c": 1}
    assert c.acquire("d", 4) == "total"  # more than the server has at all


def test_log_throttle_reports_once_per_interval_with_the_count():
    t = LogThrottle(interval=10.0)
    assert t.note("k", 0.0) == 1
    assert [t.note("k", s) for s in (1.0, 2.0, 3.0)] == [None, None, None]
    assert t.note("other", 3.0) == 1
    assert t.note("k", 10.0) == 4  # three suppressed + this one
