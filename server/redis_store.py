"""A match store in Redis, so several server instances pair with each other.

An initiator held by instance A and a receiver arriving at instance B meet in Redis:

* ``put_waiter``/``claim``/``remove_waiter`` are one Lua script each (``EVALSHA``), so
  every step is atomic on the Redis side. A waiter record lives under its slot key
  ``<prefix>w:<key digest hex>:<target ip>`` as ``<waiter id>|<deadline ms>|<n>|<meta
  json of n bytes><record json>`` (meta: holding instance, sibling target IPs, per-source
  admission; record: protocol, observed address, details); the deadline is on *Redis's*
  clock (``TIME``), the one clock every instance shares, and the record's TTL is the wait
  plus a margin, so a crashed instance's waiters expire. A take ignores a record past its
  deadline (a timed-out initiator is never matched) and ``put`` overwrites one (the key
  works again at once); ``remove`` deletes only a record carrying the same waiter id, so
  a cancel never deletes a newer waiter.
* A receiver's check-in is one round trip, the claim script: it takes the record, empties
  the waiter's sibling slots (dual stack: only where they still carry its id), releases
  its per-source admission and, when another instance A holds the waiter, delivers: it
  ``LPUSH``es the match onto the waiter's mailbox list (with a TTL) and ``PUBLISH``es it
  on A's channel ``<prefix>wake:<instance id>``. A's one subscriber connection hands it to
  the waiting greenlet. A notification lost while A's subscriber reconnects is not lost
  data: after every (re)subscription A reads the mailbox lists of the waiters it holds,
  and a waiter whose record was taken reads its list before it gives up. A match for a
  waiter of this very instance is handed over in memory. Take and delivery being one step,
  no check-in can take a waiter without its match being on the way to it. (The script reaches the
  sibling, mailbox and source keys it derives from the record: a single Redis, not a
  Redis Cluster.)
* Per-source waiter limits are a sorted set per source in Redis (member = one waiting
  initiator, score = when it lapses), so they hold across instances and a crashed
  instance's entries lapse by themselves; a matched initiator's entry goes with the claim,
  so its end costs no round trip.
* The key-hashing secret's fingerprint is stored once (``<prefix>secret-fingerprint``);
  an instance configured with another secret refuses to start against that Redis.

Concurrency: every socket is a gevent socket (redis-py's connection and hiredis parser,
with :meth:`_GeventConnection._connect` making cooperative sockets), and the pool is a
bounded :class:`gevent.queue.LifoQueue`, so a slow or paused Redis suspends only the
greenlets that wait for it, never the hub; waiting initiators hold no connection.

Faults: a Redis command that fails or times out raises :class:`StoreUnavailable` (the
API answers 503). When the subscriber loses Redis and cannot reconnect, every waiter
of this instance is woken and answered 503; removals that could not be sent then are
sent once Redis is back. The store never reads the local clock for pairing decisions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from typing import Iterable

import gevent
import gevent.event
import gevent.queue
import gevent.socket
import gevent.ssl
import redis.connection
from redis.exceptions import NoScriptError, RedisError, ResponseError

from stunturn_diag.errors import ConfigError, StoreUnavailable

from .config import ServerConfig, redact_url
from .sansio.matching import Address, Mailbox, Match, MatchStore, RelayPost, Slot, Waiter

log = logging.getLogger("stunturn_server.redis")

#: a waiter record outlives its wait by this much (ms): the holding instance removes it
#: itself; the TTL only cleans up after an instance that crashed
RECORD_MARGIN_MS = 5_000
#: a delivered match waits this long in its mailbox list (ms) for the initiator to read it
MAILBOX_TTL_MS = 30_000
#: subscriber health: PING after this many idle seconds ...
PING_INTERVAL = 2.0
#: ... and declare the connection dead after this many seconds without any answer
DEAD_AFTER = 10.0
#: seconds between reconnection attempts while Redis is away
RECONNECT_INTERVAL = 0.5
#: a request queues for a free pool connection up to this many times ``redis_timeout``: a burst
#: of requests (thousands of initiators arriving at once) waits its turn in this process
#: instead of failing; a Redis that does not answer still fails each command after redis_timeout
POOL_WAIT_FACTOR = 4
#: seconds between reads of a taken waiter's mailbox list while its notification is late
LIST_POLL_INTERVAL = 0.05
#: mailbox lists read per round trip when catching up after a (re)subscription
_RESYNC_BATCH = 500

_DEADLINE = "tonumber(string.match(v, '^[^|]*|(%d+)|'))"
_NOW = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000)"

#: KEYS: slot; ARGV: waiter id, wait ms, margin ms, record json -> 1 stored / 0 occupied
PUT_SCRIPT = f"""{_NOW}
local v = redis.call('GET', KEYS[1])
if v then
  local deadline = {_DEADLINE}
  if deadline and deadline > now then return 0 end
end
local wait = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. (now + wait) .. '|' .. ARGV[4], 'PX', wait + tonumber(ARGV[3]))
return 1"""

#: KEYS: slot; ARGV: caller's instance id, match payload ('' = take only), key prefix,
#: mailbox TTL ms, the slot key without its IP -> the live record (now deleted) or nil; an
#: expired record is left alone. One step: the waiter's sibling slots (dual stack) are
#: emptied where it still is, its per-source admission is released, and unless its holder
#: is the caller the match goes to its mailbox list and its holder's channel.
CLAIM_SCRIPT = f"""{_NOW}
local v = redis.call('GET', KEYS[1])
if not v then return false end
local id, deadline, n, at = string.match(v, '^([^|]*)|(%d+)|(%d+)|()')
if not deadline or tonumber(deadline) <= now then return false end
redis.call('DEL', KEYS[1])
local meta = cjson.decode(string.sub(v, at, at + tonumber(n) - 1))
for _, ip in ipairs(meta.a) do
  local key = ARGV[5] .. ip
  local s = redis.call('GET', key)
  if s and string.sub(s, 1, #id + 1) == id .. '|' then redis.call('DEL', key) end
end
if meta.z then redis.call('ZREM', meta.z[1], meta.z[2]) end
if ARGV[2] ~= '' and meta.i ~= ARGV[1] then
  local mailbox = ARGV[3] .. 'mb:' .. id
  redis.call('LPUSH', mailbox, ARGV[2])
  redis.call('PEXPIRE', mailbox, ARGV[4])
  redis.call('PUBLISH', ARGV[3] .. 'wake:' .. meta.i, id .. '|' .. ARGV[2])
end
return v"""

#: KEYS: slot; ARGV: waiter id -> 1 removed / 0 not (taken, expired away or a newer waiter)
CANCEL_SCRIPT = """local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, #ARGV[1] + 1) == ARGV[1] .. '|' then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0"""

#: KEYS: source set; ARGV: token, limit, lapse ms -> 1 admitted / 0 at the limit
ADMIT_SCRIPT = f"""{_NOW}
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1"""


def _match_payload(match_id: str, receiver_observed: Address, receiver_details: dict) -> str:
    """A match as its waiter's mailbox list and its holder's channel carry it."""
    return json.dumps({"m": match_id, "o": list(receiver_observed), "d": receiver_details},
                      separators=(",", ":"))


class LuaScript:
    """A Lua script run by ``EVALSHA`` (``EVAL`` once after Redis forgot it)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


class _GeventConnection(redis.connection.Connection):
    """redis-py's connection over a gevent socket: waiting for Redis yields to the hub."""

    def _connect(self):
        sock = gevent.socket.create_connection((self.host, self.port), timeout=self.socket_connect_timeout)
        try:
            sock.setsockopt(gevent.socket.IPPROTO_TCP, gevent.socket.TCP_NODELAY, 1)
            if self.socket_keepalive:
                sock.setsockopt(gevent.socket.SOL_SOCKET, gevent.socket.SO_KEEPALIVE, 1)
            sock.settimeout(self.socket_timeout)
            return self._wrap(sock)
        except BaseException:
            sock.close()
            raise

    def _wrap(self, sock):
        return sock


class _GeventSSLConnection(_GeventConnection):
    """``rediss://``: TLS through gevent's cooperative SSL sockets.

    Understands the URL options ``ssl_cert_reqs`` (required|optional|none),
    ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile`` and ``ssl_check_hostname``.
    """

    def __init__(self, *, ssl_cert_reqs="required", ssl_ca_certs=None, ssl_certfile=None,
                 ssl_keyfile=None, ssl_check_hostname=True, **kwargs) -> None:
        super().__init__(**kwargs)
        self._tls = (ssl_cert_reqs, ssl_ca_certs, ssl_certfile, ssl_keyfile, ssl_check_hostname)

    def _wrap(self, sock):
        cert_reqs, ca_certs, certfile, keyfile, check_hostname = self._tls
        reqs = {"none": gevent.ssl.CERT_NONE, "optional": gevent.ssl.CERT_OPTIONAL,
                "required": gevent.ssl.CERT_REQUIRED}.get(str(cert_reqs).lower(), gevent.ssl.CERT_REQUIRED)
        context = gevent.ssl.create_default_context(cafile=ca_certs)
        context.check_hostname = bool(check_hostname) and reqs != gevent.ssl.CERT_NONE
        context.verify_mode = reqs
        if certfile:
            context.load_cert_chain(certfile, keyfile)
        return context.wrap_socket(sock, server_hostname=self.host)


def connection_kwargs(config: ServerConfig) -> dict:
    """Keyword arguments for one cooperative connection to ``config.redis_url``."""
    kwargs = redis.connection.parse_url(config.redis_url)
    tls = kwargs.pop("connection_class", None) is redis.connection.SSLConnection
    if config.redis_password and not kwargs.get("password"):
        kwargs["password"] = config.redis_password
    kwargs.setdefault("socket_timeout", config.redis_timeout)
    kwargs.setdefault("socket_connect_timeout", min(config.redis_timeout, 3.0))
    kwargs["retry_on_timeout"] = False
    kwargs["protocol"] = 2  # RESP2: pub/sub messages are plain replies on the subscriber connection
    kwargs["connection_class"] = _GeventSSLConnection if tls else _GeventConnection
    return kwargs


def _unavailable(config: ServerConfig, exc: BaseException) -> StoreUnavailable:
    error = StoreUnavailable(f"the match store at {redact_url(config.redis_url)} is unavailable: "
                             f"{exc or type(exc).__name__}",
                             hint="check that Redis runs and answers; pairing resumes by itself "
                                  "once it is back")
    error.detail = str(exc or type(exc).__name__)  # type: ignore[attr-defined]
    return error


class RedisPool:
    """A bounded pool of cooperative Redis connections (created in the serving hub)."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        kwargs = connection_kwargs(config)
        cls = kwargs.pop("connection_class")
        self._make = lambda: cls(**kwargs)
        self._idle: gevent.queue.LifoQueue = gevent.queue.LifoQueue()
        for _ in range(config.redis_pool_size):
            self._idle.put(self._make())
        self._all = list(self._idle.queue)

    def new_connection(self):
        """A connection outside the pool (the subscriber's)."""
        return self._make()

    def run(self, commands: list[tuple], scripts: dict[str, LuaScript] | None = None) -> list:
        """Send ``commands`` in one round trip and return their replies (a failed command's
        reply is its :class:`ResponseError`). Connection trouble raises :class:`StoreUnavailable`."""
        wait = self.config.redis_timeout * POOL_WAIT_FACTOR
        try:
            conn = self._idle.get(timeout=wait)
        except gevent.queue.Empty:
            raise StoreUnavailable(f"all {self.config.redis_pool_size} Redis connections stayed busy "
                                   f"for {wait:g}s",
                                   hint="raise --redis-pool-size or check Redis latency") from None
        try:
            conn.send_packed_command(conn.pack_commands(commands), check_health=False)
            replies = []
            for _ in commands:
                try:
                    replies.append(conn.read_response())
                except ResponseError as exc:
                    replies.append(exc)
            return replies
        except (RedisError, OSError) as exc:
            conn.disconnect()
            raise _unavailable(self.config, exc) from None
        except BaseException:
            conn.disconnect()  # a greenlet killed mid-reply leaves the connection unusable
            raise
        finally:
            self._idle.put(conn)

    def call(self, *command):
        reply = self.run([command])[0]
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    def script(self, script: LuaScript, keys: list, args: list):
        reply = self.run([("EVALSHA", script.sha, len(keys), *keys, *args)])[0]
        if isinstance(reply, NoScriptError):
            reply = self.run([("EVAL", script.source, len(keys), *keys, *args)])[0]
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    def close(self) -> None:
        for conn in self._all:
            conn.disconnect()


class _RedisMailbox(Mailbox):
    def __init__(self, store: "RedisStore", waiter_id: str) -> None:
        self._store = store
        self.waiter_id = waiter_id
        self._event = gevent.event.Event()
        self.match: Match | None = None
        self.lost: StoreUnavailable | None = None  # Redis went away while waiting
        self.taken = False  # its record was gone when it tried to leave: a receiver took it
        self.waiter: Waiter | None = None

    def _put(self, match: Match) -> None:
        """A match came; every match comes from the claim script, which released the waiter's
        admission already."""
        if self.match is None:
            self.match = match
        if self.waiter is not None and isinstance(self.waiter.admission, _Admission):
            self.waiter.admission.released = True
        self._event.set()

    def _lose(self, error: StoreUnavailable) -> None:
        self.lost = error
        self._event.set()

    def wait(self, timeout: float) -> Match | None:
        if self.taken:
            return self._read_list(timeout)
        if self.match is None and self.lost is None:
            self._event.wait(max(0.0, timeout))
        if self.match is None and self.lost is not None:
            raise self.lost
        return self.match

    def _read_list(self, timeout: float) -> Match | None:
        """A receiver took this waiter but its notification has not come: the match is (or
        soon will be) in the mailbox list. Read it there, bounded by ``timeout``."""
        deadline = time.monotonic() + max(0.0, timeout)
        while self.match is None:
            self._store._read_mailbox(self)
            left = deadline - time.monotonic()
            if self.match is not None or left <= 0:
                break
            self._event.wait(min(left, LIST_POLL_INTERVAL))
        return self.match

    def interrupt(self) -> None:
        self._event.set()

    def close(self) -> None:
        self._store._drop_mailbox(self)


class RedisStore(MatchStore):
    """:class:`MatchStore` over Redis for several instances. Use inside a gevent hub;
    :meth:`start` (in that hub) connects, checks the secret and subscribes."""

    def __init__(self, config: ServerConfig, *, fingerprint: bytes,
                 instance_id: str | None = None) -> None:
        if not config.redis_url:
            raise ConfigError("RedisStore needs config.redis_url")
        self.config = config
        self.instance_id = instance_id or secrets.token_hex(8)
        self._fingerprint = fingerprint.hex()
        p = config.redis_prefix
        self._fingerprint_key = f"{p}secret-fingerprint"
        self._channel = f"{p}wake:{self.instance_id}"
        self._pool: RedisPool | None = None
        self._mailboxes: dict[str, _RedisMailbox] = {}
        self._holders: dict[str, str] = {}  # waiter id -> holding instance, between take and deliver
        self._pending_removals: dict[str, Waiter] = {}  # removals Redis could not take yet
        self._pending_releases: list[tuple[str, str]] = []  # (source set key, token)
        self._subscriber = None
        self._stopped = False
        self.connected: gevent.event.Event | None = None  # set while subscribed (from start())
        self.resyncs = 0  # (re)subscriptions after the first: for tests and metrics
        self._scripts = {name: LuaScript(src) for name, src in (
            ("put", PUT_SCRIPT), ("claim", CLAIM_SCRIPT), ("cancel", CANCEL_SCRIPT), ("admit", ADMIT_SCRIPT))}

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Connect, check the secret's fingerprint, load the scripts and subscribe.
        Raises :class:`ConfigError` when Redis is unreachable or holds another secret."""
        if self._pool is not None:
            return
        self._pool = RedisPool(self.config)
        where = redact_url(self.config.redis_url)
        try:
            self._pool.call("SET", self._fingerprint_key, self._fingerprint, "NX")
            stored = self._pool.call("GET", self._fingerprint_key)
            for script in self._scripts.values():
                self._pool.call("SCRIPT", "LOAD", script.source)
        except (StoreUnavailable, ResponseError) as exc:
            self._pool.close()
            self._pool = None
            raise ConfigError(f"cannot use the Redis at {where}: {getattr(exc, 'detail', exc)}",
                              hint="start Redis (or fix --redis / its password) before the server") from None
        if not secrets.compare_digest(stored or b"", self._fingerprint.encode()):
            self._pool.close()
            self._pool = None
            raise ConfigError(f"the Redis at {where} holds records made with another key-hashing secret",
                              hint="give every instance the same --secret-file / STUNTURN_SERVER_SECRET, "
                                   "or use another Redis database or --redis-prefix")
        self.connected = gevent.event.Event()
        self._subscriber = gevent.spawn(self._subscribe_forever)
        if not self.connected.wait(self.config.redis_timeout):
            self.stop()
            raise ConfigError(f"cannot subscribe to the Redis at {where}")
        log.info("match store: Redis at %s (instance %s)", where, self.instance_id)

    def stop(self) -> None:
        """Remove this instance's waiters from Redis at once and stop the subscriber."""
        if self._stopped:
            return
        self._stopped = True
        if self._subscriber is not None:
            self._subscriber.kill(block=True, timeout=2)
        if self._pool is None:
            return
        waiters = [mb.waiter for mb in list(self._mailboxes.values()) if mb.waiter is not None]
        waiters += list(self._pending_removals.values())
        for batch in _batches(waiters, _RESYNC_BATCH):
            try:
                self._cancel_many(batch)
            except StoreUnavailable:
                log.warning("Redis unavailable at stop: %d waiter(s) of this instance lapse by TTL",
                            len(waiters))
                break
        self._pool.close()

    # -- keys -----------------------------------------------------------------------------
    def _slot_key(self, slot: Slot) -> str:
        return f"{self._slot_key_base(slot)}{slot.target_ip}"

    def _slot_key_base(self, slot: Slot) -> str:
        """The slot key without its target IP (the claim script adds a sibling's IP)."""
        return f"{self.config.redis_prefix}w:{slot.key_digest.hex()}:"

    def _mailbox_key(self, waiter_id: str) -> str:
        return f"{self.config.redis_prefix}mb:{waiter_id}"

    def pool(self) -> RedisPool:
        """The command pool (for what shares this store's Redis: :mod:`.redis_limits`);
        :class:`StoreUnavailable` before :meth:`start`."""
        return self._pool_or_raise()

    def _pool_or_raise(self) -> RedisPool:
        if self._pool is None:
            raise StoreUnavailable("the Redis match store is not started", hint="call start() first")
        return self._pool

    # -- MatchStore -----------------------------------------------------------------------
    def put_waiter(self, waiter: Waiter, now: float) -> bool:
        wait_ms = max(1, int((waiter.deadline - now) * 1000))
        meta: dict = {"i": self.instance_id, "a": list(waiter.also)}
        if isinstance(waiter.admission, _Admission):
            meta["z"] = [waiter.admission.key, waiter.admission.token]
        meta = json.dumps(meta, separators=(",", ":"))
        record = f"{len(meta.encode())}|{meta}" + json.dumps(
            {"p": waiter.protocol, "o": list(waiter.observed), "d": waiter.details}, separators=(",", ":"))
        stored = self._pool_or_raise().script(self._scripts["put"], [self._slot_key(waiter.slot)],
                                              [waiter.waiter_id, wait_ms, RECORD_MARGIN_MS, record])
        if stored:
            mailbox = self._mailboxes.get(waiter.waiter_id)
            if mailbox is not None:
                mailbox.waiter = waiter
        return bool(stored)

    def occupant(self, slot: Slot, now: float) -> tuple[str, int] | None:
        value = self._pool_or_raise().call("GET", self._slot_key(slot))
        if value is None:
            return None
        try:  # a lapsed record is gone by itself soon
            observed = _parse_record(value)[3]["o"]
            return observed[0], int(observed[1])
        except (ValueError, KeyError, IndexError, TypeError):
            return None

    def _claim(self, slot: Slot, payload: str, now: float) -> tuple[Waiter, str] | None:
        """The claim script on ``slot``: the waiter taken and its holder's instance id."""
        value = self._pool_or_raise().script(self._scripts["claim"], [self._slot_key(slot)], [
            self.instance_id, payload, self.config.redis_prefix, MAILBOX_TTL_MS, self._slot_key_base(slot)])
        if value is None:
            return None
        waiter_id, _deadline, meta, data = _parse_record(value)
        waiter = Waiter(waiter_id, slot, data["p"], (data["o"][0], int(data["o"][1])), data["d"], now,
                        also=tuple(meta["a"]))
        return waiter, meta["i"]

    def take_waiter(self, slot: Slot, now: float) -> Waiter | None:
        claimed = self._claim(slot, "", now)
        if claimed is None:
            return None
        waiter, holder = claimed
        self._holders[waiter.waiter_id] = holder
        return waiter

    def claim(self, slot: Slot, now: float, match_id: str, receiver_observed: Address,
              receiver_details: dict) -> Match | None:
        """One round trip (the claim script): take the waiter, empty its sibling slots, release
        its admission, and deliver to another instance's waiter through Redis; a waiter held
        here gets its match in memory."""
        claimed = self._claim(slot, _match_payload(match_id, receiver_observed, receiver_details), now)
        if claimed is None:
            return None
        waiter, holder = claimed
        match = Match(match_id, waiter.protocol, waiter, receiver_observed, receiver_details)
        if holder == self.instance_id:
            mailbox = self._mailboxes.get(waiter.waiter_id)
            if mailbox is not None:
                mailbox._put(match)
        return match

    def remove_waiter(self, waiter: Waiter) -> bool:
        mailbox = self._mailboxes.get(waiter.waiter_id)
        if mailbox is not None and (mailbox.match is not None or mailbox.waiter is None or mailbox.taken):
            return False  # taken (its match is here) or removed already: no round trip needed
        try:
            removed = self._pool_or_raise().script(self._scripts["cancel"], [self._slot_key(waiter.slot)],
                                                   [waiter.waiter_id])
        except StoreUnavailable:
            self._pending_removals[waiter.waiter_id] = waiter  # sent once Redis is back
            raise
        self._pending_removals.pop(waiter.waiter_id, None)
        if mailbox is not None and not removed:
            mailbox.taken = True
        elif mailbox is not None:
            mailbox.waiter = None
        return bool(removed)

    def open_mailbox(self, waiter_id: str) -> Mailbox:
        mailbox = _RedisMailbox(self, waiter_id)
        self._mailboxes[waiter_id] = mailbox
        return mailbox

    def deliver(self, match: Match) -> bool:
        waiter_id = match.initiator.waiter_id
        holder = self._holders.pop(waiter_id, None)
        if holder == self.instance_id or holder is None:
            mailbox = self._mailboxes.get(waiter_id)
            if mailbox is None:
                return False
            mailbox._put(match)
            return True
        payload = _match_payload(match.match_id, match.receiver_observed, match.receiver_details)
        mailbox_key = self._mailbox_key(waiter_id)
        replies = self._pool_or_raise().run([
            ("LPUSH", mailbox_key, payload),
            ("PEXPIRE", mailbox_key, MAILBOX_TTL_MS),
            ("PUBLISH", f"{self.config.redis_prefix}wake:{holder}", f"{waiter_id}|{payload}"),
        ])
        return not isinstance(replies[0], Exception)

    def waiting_count(self) -> int:
        return sum(1 for mb in self._mailboxes.values() if mb.waiter is not None)

    def admit_source(self, source: str, limit: int) -> object | None:
        admission = _Admission(f"{self.config.redis_prefix}src:{source}", secrets.token_hex(8))
        lapse_ms = int(self.config.wait_timeout * 1000) + RECORD_MARGIN_MS
        admitted = self._pool_or_raise().script(self._scripts["admit"], [admission.key],
                                                [admission.token, limit, lapse_ms])
        return admission if admitted else None

    def release_source(self, source: str, token: object) -> None:
        if not isinstance(token, _Admission):
            token = _Admission(f"{self.config.redis_prefix}src:{source}", str(token))
        if token.released:
            return  # the claim that took its waiter released it already: no round trip
        try:
            self._pool_or_raise().call("ZREM", token.key, token.token)
        except StoreUnavailable:
            self._pending_releases.append((token.key, token.token))
            raise

    # -- the relayed-address exchange (server/relay_api.py) --------------------------------
    def _relay_key(self, match_id: str, role: str) -> str:
        return f"{self.config.redis_prefix}relay:{match_id}:{role}"

    def put_relay_address(self, match_id: str, role: str, address: Address, expires: float,
                          now: float) -> RelayPost:
        """``SET NX PX`` (the TTL from the token's expiry) and ``GET`` in one round trip:
        the first address of a role stays. Never ``"full"``: every key expires with its
        match's credential (at most ``turn_ttl``), which bounds what Redis holds."""
        key, value = self._relay_key(match_id, role), f"{address[0]}|{address[1]}"
        ttl_ms = max(1, int((expires - now) * 1000))
        _set, current = self._pool_or_raise().run([("SET", key, value, "NX", "PX", ttl_ms),
                                                   ("GET", key)])
        if isinstance(current, Exception):
            raise _unavailable(self.config, current)
        return "stored" if current is None or current.decode() == value else "conflict"

    def relay_address(self, match_id: str, role: str, now: float) -> Address | None:
        value = self._pool_or_raise().call("GET", self._relay_key(match_id, role))
        if value is None:
            return None
        ip, _, port = value.decode().rpartition("|")
        return ip, int(port)

    # -- mailboxes ------------------------------------------------------------------------
    def _drop_mailbox(self, mailbox: _RedisMailbox) -> None:
        if self._mailboxes.get(mailbox.waiter_id) is mailbox:
            del self._mailboxes[mailbox.waiter_id]

    def _match_for(self, mailbox: _RedisMailbox, payload: bytes | str) -> Match | None:
        waiter = mailbox.waiter
        if waiter is None:
            return None
        data = json.loads(payload)
        return Match(data["m"], waiter.protocol, waiter, (data["o"][0], int(data["o"][1])), data["d"])

    def _on_message(self, data: bytes) -> None:
        waiter_id, _, payload = data.decode().partition("|")
        mailbox = self._mailboxes.get(waiter_id)
        if mailbox is not None:
            match = self._match_for(mailbox, payload)
            if match is not None:
                mailbox._put(match)

    def _read_mailbox(self, mailbox: _RedisMailbox) -> None:
        reply = self._pool_or_raise().call("LPOP", self._mailbox_key(mailbox.waiter_id))
        if reply:
            match = self._match_for(mailbox, reply)
            if match is not None:
                mailbox._put(match)

    def _resync(self) -> None:
        """Read the mailbox lists of every waiter held here (deliveries whose notification
        may have been missed), then send the removals and releases Redis could not take."""
        pool = self._pool_or_raise()
        for batch in _batches(list(self._mailboxes.values()), _RESYNC_BATCH):
            replies = pool.run([("LPOP", self._mailbox_key(mb.waiter_id)) for mb in batch])
            for mailbox, reply in zip(batch, replies):
                if reply and not isinstance(reply, Exception):
                    match = self._match_for(mailbox, reply)
                    if match is not None:
                        mailbox._put(match)
        if self._pending_removals:
            self._cancel_many(list(self._pending_removals.values()))
        releases, self._pending_releases = self._pending_releases, []
        for batch in _batches(releases, _RESYNC_BATCH):
            pool.run([("ZREM", key, token) for key, token in batch])

    def _cancel_many(self, waiters: list[Waiter]) -> None:
        script = self._scripts["cancel"]
        self._pool_or_raise().run([("EVAL", script.source, 1, self._slot_key(w.slot), w.waiter_id)
                                   for w in waiters])
        for waiter in waiters:
            self._pending_removals.pop(waiter.waiter_id, None)

    def _lose_all(self, error: StoreUnavailable) -> None:
        for mailbox in list(self._mailboxes.values()):
            mailbox._lose(error)

    def _subscribe_forever(self) -> None:
        first, down_since, failures = True, None, 0
        conn = self._pool_or_raise().new_connection()
        while not self._stopped:
            try:
                conn.connect()
                conn.send_command("SUBSCRIBE", self._channel)
                conn.read_response()  # the subscribe confirmation
                if not first:
                    self.resyncs += 1
                    self._resync()
                if down_since is not None:
                    log.warning("match store: Redis is back after %.1fs", time.monotonic() - down_since)
                first, down_since, failures = False, None, 0
                self.connected.set()
                self._listen(conn)
            except (RedisError, OSError, StoreUnavailable) as exc:
                conn.disconnect()
                if self._stopped:
                    break
                failures += 1
                if failures == 1:  # a dropped connection with Redis still up costs no waiter
                    gevent.sleep(0.05)
                    continue
                if down_since is None:
                    down_since = time.monotonic()
                    self.connected.clear()
                    log.warning("match store: lost Redis (%s); waiting initiators answer 503", exc)
                    self._lose_all(_unavailable(self.config, exc))
                gevent.sleep(RECONNECT_INTERVAL)
        conn.disconnect()

    def _listen(self, conn) -> None:
        last_heard = time.monotonic()
        pinged = False
        while True:
            # redis-py's can_read(timeout) would poll() and block the hub: wait the gevent way
            if conn.can_read(timeout=0) or _readable(conn, PING_INTERVAL):
                reply = conn.read_response()
                last_heard, pinged = time.monotonic(), False
                if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message":
                    self._on_message(reply[2])
                continue
            if time.monotonic() - last_heard > DEAD_AFTER:
                raise redis.exceptions.TimeoutError(f"no answer from Redis for {DEAD_AFTER:g}s")
            if not pinged:
                conn.send_command("PING")
                pinged = True


def _readable(conn, timeout: float) -> bool:
    sock = getattr(conn, "_sock", None)
    if sock is None:
        raise redis.exceptions.ConnectionError("the subscriber connection is closed")
    try:
        gevent.socket.wait_read(sock.fileno(), timeout=timeout)
    except gevent.socket.timeout:
        return False
    return True


class _Admission:
    """One admitted initiator's entry in its source's sorted set (``key``, member ``token``);
    ``released`` once the claim script removed it (its waiter was taken)."""

    __slots__ = ("key", "token", "released")

    def __init__(self, key: str, token: str) -> None:
        self.key, self.token, self.released = key, token, False


def _parse_record(value: bytes) -> tuple[str, str, dict, dict]:
    """``<waiter id>|<deadline ms>|<n>|<meta json, n bytes><record json>`` -> waiter id,
    deadline, meta (``i`` holder instance, ``a`` sibling IPs, ``z`` admission), record
    (``p`` protocol, ``o`` observed address, ``d`` details)."""
    waiter_id, deadline, n, rest = value.split(b"|", 3)
    size = int(n)
    return waiter_id.decode(), deadline.decode(), json.loads(rest[:size]), json.loads(rest[size:])


def _batches(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def secret_fingerprint(secret: bytes) -> bytes:
    """What is stored in Redis to tell whether instances share the secret (not the secret)."""
    return hashlib.blake2b(b"stunturn secret fingerprint", key=secret, digest_size=16).digest()

