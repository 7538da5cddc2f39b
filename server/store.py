"""The in-memory match store: :class:`~stunturn_server.sansio.matching.MatchStore` for one process.

A lock makes each operation atomic across threads. Waking is pluggable: the store gets a
*signal factory* (``threading.Event`` for threads and Flask's test client,
``gevent.event.Event`` inside the gevent server). The store never reads a clock; ``now``
comes from the caller.
"""

from __future__ import annotations

import threading
from typing import Callable, Protocol

from .sansio.matching import Address, Mailbox, Match, MatchStore, RelayPost, Slot, Waiter

#: relay addresses the in-memory store holds at most (two per match)
RELAY_CAPACITY = 8192


class Signal(Protocol):
    """What the in-memory mailbox needs from an event: ``threading.Event`` or ``gevent.event.Event``."""

    def set(self) -> None: ...

    def wait(self, timeout: float | None = None) -> bool: ...


class _MemoryMailbox(Mailbox):
    def __init__(self, store: "InMemoryStore", waiter_id: str, signal: Signal) -> None:
        self._store = store
        self._waiter_id = waiter_id
        self._signal = signal
        self.match: Match | None = None

    def _put(self, match: Match) -> None:
        self.match = match
        self._signal.set()

    def wait(self, timeout: float) -> Match | None:
        if self.match is None:
            self._signal.wait(max(0.0, timeout))
        return self.match

    def interrupt(self) -> None:
        self._signal.set()

    def close(self) -> None:
        self._store._drop_mailbox(self._waiter_id, self)


class InMemoryStore(MatchStore):
    """Dict-backed store for one process; a lock makes each operation atomic across threads."""

    def __init__(self, signal_factory: Callable[[], Signal] = threading.Event) -> None:
        self._signal_factory = signal_factory
        self._lock = threading.Lock()
        self._waiters: dict[Slot, Waiter] = {}
        self._mailboxes: dict[str, _MemoryMailbox] = {}
        self._by_source: dict[str, int] = {}
        #: (match_id, role) -> (address, expires)
        self._relays: dict[tuple[str, str], tuple[Address, float]] = {}
        self.relay_capacity = RELAY_CAPACITY

    def put_waiter(self, waiter: Waiter, now: float) -> bool:
        with self._lock:
            current = self._waiters.get(waiter.slot)
            if current is not None and not current.expired(now):
                return False
            self._waiters[waiter.slot] = waiter
            return True

    def occupant(self, slot: Slot, now: float) -> tuple[str, int] | None:
        with self._lock:
            current = self._waiters.get(slot)
        if current is None or current.expired(now) or not current.slot.same_key(slot):
            return None
        return current.observed

    def take_waiter(self, slot: Slot, now: float) -> Waiter | None:
        with self._lock:
            waiter = self._waiters.pop(slot, None)
        if waiter is None or waiter.expired(now) or not waiter.slot.same_key(slot):
            return None
        return waiter

    def remove_waiter(self, waiter: Waiter) -> bool:
        with self._lock:
            current = self._waiters.get(waiter.slot)
            if current is None or current.waiter_id != waiter.waiter_id:
                return False
            del self._waiters[waiter.slot]
            return True

    def open_mailbox(self, waiter_id: str) -> Mailbox:
        mailbox = _MemoryMailbox(self, waiter_id, self._signal_factory())
        with self._lock:
            self._mailboxes[waiter_id] = mailbox
        return mailbox

    def deliver(self, match: Match) -> bool:
        with self._lock:
            mailbox = self._mailboxes.pop(match.initiator.waiter_id, None)
        if mailbox is None:
            return False
        mailbox._put(match)
        return True

    def _drop_mailbox(self, waiter_id: str, mailbox: _MemoryMailbox) -> None:
        with self._lock:
            if self._mailboxes.get(waiter_id) is mailbox:
                del self._mailboxes[waiter_id]

    def waiting_count(self) -> int:
        with self._lock:
            return len(self._waiters)

    def admit_source(self, source: str, limit: int) -> object | None:
        with self._lock:
            count = self._by_source.get(source, 0)
            if count >= limit:
                return None
            self._by_source[source] = count + 1
            return source

    def release_source(self, source: str, token: object) -> None:
        with self._lock:
            count = self._by_source.get(source, 0) - 1
            if count > 0:
                self._by_source[source] = count
            else:
                self._by_source.pop(source, None)

    def put_relay_address(self, match_id: str, role: str, address: Address, expires: float,
                          now: float) -> RelayPost:
        entry = (match_id, role)
        with self._lock:
            for k in [k for k, (_a, exp) in self._relays.items() if exp <= now]:
                del self._relays[k]
            current = self._relays.get(entry)
            if current is not None:
                return "stored" if current[0] == tuple(address) else "conflict"
            if len(self._relays) >= self.relay_capacity:
                return "full"
            self._relays[entry] = (tuple(address), expires)
            return "stored"

    def relay_address(self, match_id: str, role: str, now: float) -> Address | None:
        with self._lock:
            current = self._relays.get((match_id, role))
        if current is None or current[1] <= now:
            return None
        return current[0]

    def mailbox_count(self) -> int:
        """Open mailboxes (for tests: proves nothing leaks)."""
        with self._lock:
            return len(self._mailboxes)
