"""Matching store: the atomic operations pairing needs, plus waking a waiting initiator.

:class:`MatchStore` is the interface; :class:`InMemoryStore` is the single-process
implementation. A shared store (e.g. Redis, so several server instances pair with
each other) maps the operations onto ``SET NX PX`` (put), ``GETDEL`` (take), a
compare-and-delete script (remove) and a per-waiter list or channel (mailbox:
``deliver`` = ``LPUSH``/``PUBLISH``, ``wait`` = ``BLPOP``/subscribe).

Waking is pluggable: the in-memory store gets a *signal factory* (``threading.Event``
for threads and Flask's test client, ``gevent.event.Event`` inside the gevent server).
The store never reads a clock; ``now`` comes from the caller.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import Callable, Literal, Protocol

from .matching import Address, Match, Slot, Waiter

#: outcome of :meth:`MatchStore.put_relay_address`
RelayPost = Literal["stored", "conflict", "full"]
#: relay addresses the in-memory store holds at most (two per match)
RELAY_CAPACITY = 8192


class Signal(Protocol):
    """What the in-memory mailbox needs from an event: ``threading.Event`` or ``gevent.event.Event``."""

    def set(self) -> None: ...

    def wait(self, timeout: float | None = None) -> bool: ...


class Mailbox(ABC):
    """Where one initiator's match arrives."""

    @abstractmethod
    def wait(self, timeout: float) -> Match | None:
        """Block (cooperatively) until a match arrives, :meth:`interrupt` is called or ``timeout``."""

    @abstractmethod
    def interrupt(self) -> None:
        """Wake :meth:`wait` without a match (the client hung up)."""

    @abstractmethod
    def close(self) -> None:
        """Forget the mailbox; later deliveries to it are dropped."""


class MatchStore(ABC):
    """Atomic pairing storage. Every method is atomic with respect to the others."""

    @abstractmethod
    def put_waiter(self, waiter: Waiter, now: float) -> bool:
        """Store ``waiter`` in its slot unless a live (unexpired at ``now``) waiter is there."""

    @abstractmethod
    def take_waiter(self, slot: Slot, now: float) -> Waiter | None:
        """Remove and return the live waiter in ``slot`` (expired ones are dropped, not returned)."""

    @abstractmethod
    def remove_waiter(self, waiter: Waiter) -> bool:
        """Remove exactly this waiter (same slot, same id); ``False`` if it is no longer there."""

    @abstractmethod
    def open_mailbox(self, waiter_id: str) -> Mailbox:
        """Create the mailbox a match for ``waiter_id`` will be delivered to."""

    @abstractmethod
    def deliver(self, match: Match) -> bool:
        """Hand ``match`` to its initiator's mailbox and wake it; ``False`` if nobody listens."""

    @abstractmethod
    def waiting_count(self) -> int:
        """Number of waiters this server holds now (expired but not yet removed ones included)."""

    @abstractmethod
    def admit_source(self, source: str, limit: int) -> object | None:
        """Count one more waiting initiator from ``source`` unless ``limit`` wait already;
        returns a token for :meth:`release_source`, or ``None`` at the limit."""

    @abstractmethod
    def release_source(self, source: str, token: object) -> None:
        """The initiator admitted with ``token`` has stopped waiting."""

    def occupant(self, slot: Slot, now: float) -> tuple[str, int] | None:
        """The observed address of the live waiter in ``slot`` (a read, nothing changes), or
        ``None``: tells a second initiator from the first one's source apart (409) from any
        other (held apart, no oracle). A store that cannot say returns ``None``."""
        return None

    def start(self) -> None:
        """Connect and start background work; called once in the thread (hub) that serves."""

    def stop(self) -> None:
        """Forget this server's waiters and stop background work (idempotent)."""

    # -- the per-match relay address exchange (server/relay_api.py) -------------------------
    @abstractmethod
    def put_relay_address(self, match_id: str, role: str, address: Address, expires: float,
                          now: float) -> RelayPost:
        """Keep ``role``'s TURN relayed address for ``match_id`` until ``expires``.

        ``"conflict"`` when that role already posted another address (the first one
        stays), ``"full"`` when the store holds its limit of live entries. Expired entries
        are dropped, never returned. A shared store: ``SET NX PXAT`` on
        ``relay:<match_id>:<role>`` (``"conflict"`` when it exists with another value)."""

    @abstractmethod
    def relay_address(self, match_id: str, role: str, now: float) -> Address | None:
        """``role``'s live relayed address for ``match_id``, None when none was posted."""


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
