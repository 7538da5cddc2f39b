"""Pure rate and concurrency limits: no sockets, no clocks (every call takes ``now``), no threads.

- :func:`source_of`: what a per-source limit counts (an IPv4 address, an IPv6 /64);
- :class:`TokenBucket`: keyed token buckets with bounded memory;
- :class:`FailureLimiter`: failed pairing attempts (408/409 initiates, 404 check-ins) per
  source and per target IP, so keys cannot be guessed online; :class:`FailureBudget` is
  what the API needs of it (``stunturn_server.redis_limits`` holds the same buckets in
  Redis, shared by every instance, with the arithmetic of :class:`TokenBucket`);
- :class:`ConcurrencyLimiter`: at most N things per source and M in all;
- :class:`LogThrottle`: one log line per key and interval, with the count of what it stood for.

Counting needs a lock only where threads share an instance (Flask's threaded test server,
probe-assist's simultaneous-open thread): the caller that has threads passes one
(``lock=threading.Lock()``); under gevent every caller runs in one hub, and the STUN service
in one thread, so the default is no lock at all.
"""

from __future__ import annotations

import functools
import ipaddress
import math
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Protocol

from stunturn_diag.sansio.netaddr import unmapped_address

#: what a limit holds while it counts: a ``threading.Lock`` where threads share it, else nothing
Lock = AbstractContextManager


@functools.lru_cache(maxsize=8192)
def source_of(ip: str) -> str:
    """What a per-source limit counts: an IPv4 address, or an IPv6 address's /64 (one host
    usually holds a whole /64, RFC 4291 section 2.5.1). IPv4-mapped IPv6 counts as IPv4."""
    address = unmapped_address(ipaddress.ip_address(ip))
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def check_bucket(burst: float, rate: float) -> None:
    """``ValueError`` unless a bucket of ``burst`` tokens refilled at ``rate`` per second works."""
    if not (burst >= 1 and rate > 0):
        raise ValueError(f"a token bucket needs burst >= 1 and rate > 0, got {burst}, {rate}")


def retry_after_header(wait: float) -> float | None:
    """``None`` when nothing need wait (``wait <= 0``), else ``wait`` seconds as an HTTP
    Retry-After (RFC 9110 section 10.2.3: whole seconds), rounded up, at least 1."""
    return None if wait <= 0 else float(max(1, math.ceil(wait)))


@dataclass
class TokenBucket:
    """Per-key token buckets: ``burst`` tokens, refilled at ``rate`` per second.

    Memory is bounded: once more than ``sweep_at`` keys are stored, the buckets that are
    full again (the same as absent) are forgotten; the next sweep waits until the keys left
    have doubled (amortised cost).
    """

    burst: float
    rate: float
    sweep_at: int = 100_000
    lock: Lock = field(default_factory=nullcontext, repr=False)
    _state: dict[str, tuple[float, float]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        check_bucket(self.burst, self.rate)

    def _refilled(self, key: str, now: float) -> float:
        tokens, last = self._state.get(key, (self.burst, now))
        return min(self.burst, tokens + max(0.0, now - last) * self.rate)

    def tokens(self, key: str, now: float) -> float:
        """Tokens ``key`` holds at ``now``."""
        with self.lock:
            return self._refilled(key, now)

    def take(self, key: str, now: float) -> bool:
        """Spend one token of ``key``; ``False`` (nothing spent) when it has none."""
        with self.lock:
            tokens = self._refilled(key, now)
            ok = tokens >= 1.0
            self._store(key, tokens - 1.0 if ok else tokens, now)
            return ok

    def charge(self, key: str, now: float) -> None:
        """Spend one token of ``key`` if it has one (an event already happened: count it)."""
        with self.lock:
            self._store(key, max(0.0, self._refilled(key, now) - 1.0), now)

    def retry_after(self, key: str, now: float) -> float:
        """Seconds until ``key`` holds a whole token again (0 when it has one)."""
        with self.lock:
            missing = 1.0 - self._refilled(key, now)
        return max(0.0, missing / self.rate)

    def _store(self, key: str, tokens: float, now: float) -> None:
        self._state[key] = (tokens, now)
        if len(self._state) > self.sweep_at:
            for k in [k for k in self._state if self._refilled(k, now) >= self.burst]:
                del self._state[k]
            self.sweep_at = max(self.sweep_at, 2 * len(self._state))


class FailureBudget(Protocol):
    """What the API needs of a failed-attempt limiter (:class:`FailureLimiter` in this
    process, ``stunturn_server.redis_limits.RedisFailureLimiter`` across instances)."""

    def retry_after(self, source: str, target: str | None, now: float) -> float | None:
        """``None`` when a request from ``source`` naming ``target`` may go on; else the
        whole seconds to wait (:func:`retry_after_header`)."""

    def failed(self, source: str, target: str | None, now: float) -> None:
        """Spend one token of ``source`` and of ``target`` (those that have one)."""


class FailureLimiter:
    """Failed pairing attempts, per source (IPv4 address / IPv6 /64) and per target IP.

    A request is let through while both its source and its target have a token;
    :meth:`failed` spends one of each. Successful pairings spend nothing, so a busy but
    honest source is never limited.
    """

    def __init__(self, *, source_burst: float, source_rate: float, target_burst: float,
                 target_rate: float, lock: Lock | None = None) -> None:
        lock = lock or nullcontext()
        self.sources = TokenBucket(source_burst, source_rate, lock=lock)
        self.targets = TokenBucket(target_burst, target_rate, lock=lock)

    def retry_after(self, source: str, target: str | None, now: float) -> float | None:
        """``None`` when a request from ``source`` naming ``target`` may go on; else the
        seconds to wait (whole seconds, rounded up, at least 1: an HTTP Retry-After)."""
        wait = self.sources.retry_after(source, now)
        if target is not None:
            wait = max(wait, self.targets.retry_after(target, now))
        return retry_after_header(wait)

    def failed(self, source: str, target: str | None, now: float) -> None:
        self.sources.charge(source, now)
        if target is not None:
            self.targets.charge(target, now)


class ConcurrencyLimiter:
    """At most ``per_source`` holders per key and ``total`` in all."""

    def __init__(self, per_source: int, total: int, lock: Lock | None = None) -> None:
        if not 1 <= per_source <= total:
            raise ValueError(f"need 1 <= per_source <= total, got {per_source}, {total}")
        self.per_source, self.total = per_source, total
        self.held: dict[str, int] = {}
        self.count = 0
        self.lock = lock or nullcontext()

    def acquire(self, key: str, n: int = 1) -> str | None:
        """Take ``n`` places for ``key``; ``None`` on success, else which cap refused:
        ``"source"`` or ``"total"`` (nothing is taken then)."""
        with self.lock:
            have = self.held.get(key, 0)
            if self.count + n > self.total:
                return "total"
            if have + n > self.per_source:
                return "source"
            self.held[key] = have + n
            self.count += n
            return None

    def release(self, key: str, n: int = 1) -> None:
        with self.lock:
            left = self.held.get(key, 0) - n
            if left > 0:
                self.held[key] = left
            else:
                self.held.pop(key, None)
            self.count = max(0, self.count - n)


class LogThrottle:
    """``note(key, now)`` returns how many events to report in one log line, at most once per
    ``interval`` per key (the first event at once), else ``None``. Bounded memory."""

    def __init__(self, interval: float = 60.0, max_keys: int = 10_000, lock: Lock | None = None) -> None:
        self.interval, self.max_keys = interval, max_keys
        self._seen: dict[str, tuple[float, int]] = {}  # key -> (last logged, events since)
        self.lock = lock or nullcontext()

    def note(self, key: str, now: float) -> int | None:
        with self.lock:
            last, count = self._seen.get(key, (None, 0))
            count += 1
            if last is None or now - last >= self.interval:
                if len(self._seen) >= self.max_keys:
                    self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.interval}
                self._seen[key] = (now, 0)
                return count
            self._seen[key] = (last, count)
            return None
