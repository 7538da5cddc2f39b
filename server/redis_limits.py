"""The failed-attempt limits in Redis, so every instance sharing a Redis spends one budget.

The pure :class:`~stunturn_server.sansio.limits.FailureLimiter` counts in one process: N
instances behind a load balancer would give a key guesser N times its failed attempts.
:class:`RedisFailureLimiter` keeps the same two token buckets (per source: an IPv4
address or an IPv6 /64; per target IP) in Redis and does the same arithmetic as
:class:`~stunturn_server.sansio.limits.TokenBucket` in one Lua script per call, so a
check or a charge is atomic across instances and costs one round trip:

* a bucket is the string ``"<tokens> <last>"`` (``%.17g``: a double survives the trip
  exactly); an absent bucket is a full one, so every write sets a TTL of the time an
  empty bucket takes to fill again (``burst / rate``) plus a margin, and idle buckets
  vanish by themselves;
* ``now`` is Redis's clock (``TIME``), the one every instance shares; a test may pass
  its own (``time_from_caller``) to run the pure limiter's tables against Redis;
* key names carry no address in clear: ``<prefix>fail:s:<digest>`` and
  ``<prefix>fail:t:<digest>``, keyed BLAKE2b (RFC 7693) of the source or target under
  the server's key-hashing secret. Neither the access key nor the rendezvous id is
  ever part of a limit.

Redis unreachable or too slow: the pool raises
:class:`~stunturn_diag.errors.StoreUnavailable`, which the API answers 503
``store-unavailable`` like any other store failure.
"""

from __future__ import annotations

import hashlib
import math

from .redis_store import LuaScript, RedisStore
from .sansio.limits import check_bucket, retry_after_header

#: an idle bucket outlives its refill time by this much (ms) before Redis drops it
IDLE_MARGIN_MS = 5_000

#: ARGV[1]: now in seconds ('' = Redis TIME); per key i: burst, rate, TTL ms at ARGV[3i-1..3i+1]
_REFILLED = """local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function refilled(key, burst, rate)
  local v = redis.call('GET', key)
  if not v then return burst end
  local held, last = string.match(v, '^(%S+) (%S+)$')
  held, last = tonumber(held), tonumber(last)
  if not (held and last) then return burst end
  return math.min(burst, held + math.max(0, now - last) * rate)
end
"""

#: -> the seconds until every bucket named holds a whole token (0: go on), as '%.17g'
WAIT_SCRIPT = _REFILLED + """local wait = 0
for i, key in ipairs(KEYS) do
  local burst, rate = tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i])
  wait = math.max(wait, math.max(0, (1 - refilled(key, burst, rate)) / rate))
end
return string.format('%.17g', wait)"""

#: spend one token of every bucket named (those that have one; never below zero)
CHARGE_SCRIPT = _REFILLED + """for i, key in ipairs(KEYS) do
  local burst, rate = tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i])
  local left = math.max(0, refilled(key, burst, rate) - 1)
  redis.call('SET', key, string.format('%.17g %.17g', left, now), 'PX', ARGV[3 * i + 1])
end
return 1"""

_WAIT, _CHARGE = LuaScript(WAIT_SCRIPT), LuaScript(CHARGE_SCRIPT)


class RedisFailureLimiter:
    """:class:`~stunturn_server.sansio.limits.FailureBudget` in the Redis of ``store``
    (its command pool; usable once the store is started)."""

    def __init__(self, store: RedisStore, *, source_burst: float, source_rate: float,
                 target_burst: float, target_rate: float, secret: bytes | None,
                 time_from_caller: bool = False) -> None:
        check_bucket(source_burst, source_rate)
        check_bucket(target_burst, target_rate)
        self._store = store
        self._prefix = store.config.redis_prefix
        self._secret = (secret or b"")[:64]
        self._buckets = {kind: (repr(float(burst)), repr(float(rate)),
                                str(math.ceil(burst / rate * 1000) + IDLE_MARGIN_MS))
                         for kind, burst, rate in (("s", source_burst, source_rate),
                                                   ("t", target_burst, target_rate))}
        self.time_from_caller = time_from_caller

    def key(self, kind: str, value: str) -> str:
        """The Redis key of ``value``'s bucket (``kind``: ``"s"`` source, ``"t"`` target)."""
        digest = hashlib.blake2b(value.encode(), key=self._secret, digest_size=12,
                                 person=b"stunturn-fail-" + kind.encode())
        return f"{self._prefix}fail:{kind}:{digest.hexdigest()}"

    def _call(self, script: LuaScript, source: str, target: str | None, now: float):
        named = [("s", source)] + ([("t", target)] if target is not None else [])
        args = [repr(float(now)) if self.time_from_caller else ""]
        for kind, _ in named:
            args.extend(self._buckets[kind])
        return self._store.pool().script(script, [self.key(kind, value) for kind, value in named], args)

    def retry_after(self, source: str, target: str | None, now: float) -> float | None:
        reply = self._call(_WAIT, source, target, now)
        return retry_after_header(float(reply.decode() if isinstance(reply, bytes) else reply))

    def failed(self, source: str, target: str | None, now: float) -> None:
        self._call(_CHARGE, source, target, now)
