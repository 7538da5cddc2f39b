"""Pure pairing logic: initiators wait in a slot, a receiver takes the slot it owns.

Pairing as tunnels-is/stunturn designed it: an *initiator* names the access key and
the *receiver's* public IP and waits; a *receiver* checks in with the key and is
matched only if an initiator waits for that key AND named exactly the IP the server
observes the receiver coming from. A slot is ``(keyed hash of the key, canonical
target IP)``; a :class:`Waiter` carries its own :class:`Slot`, so an entry is
always removed under the very key it was stored with (the original Go server
leaked timed-out entries by deleting under a different key).

No sockets, no clocks, no random source: every call takes ``now`` (monotonic seconds)
from the caller, and the ids and the hashing secret are drawn by whoever builds the
:class:`Matcher`. Atomic storage and waking live behind :class:`MatchStore`, the
interface defined here beside the logic that uses it; its implementations do the I/O:
:class:`stunturn_server.store.InMemoryStore` (one process) and
:class:`stunturn_server.redis_store.RedisStore` (instances sharing a Redis).
"""

from __future__ import annotations

import hashlib
import hmac
from stunturn_diag.sansio.netaddr import Address
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import Callable, Literal

#: outcome of :meth:`MatchStore.put_relay_address`
RelayPost = Literal["stored", "conflict", "full"]


@dataclass(frozen=True)
class Slot:
    """Where an initiator waits: the access key's keyed digest and the receiver IP it named."""

    key_digest: bytes
    target_ip: str

    def same_key(self, other: "Slot") -> bool:
        """Constant-time comparison of the key digests (plus the IP)."""
        return hmac.compare_digest(self.key_digest, other.key_digest) and self.target_ip == other.target_ip

    @property
    def label(self) -> str:
        """Short, non-reversible label for logs (never the key)."""
        return self.key_digest.hex()[:8]


@dataclass(frozen=True)
class Waiter:
    """One initiator's long-poll, registered in exactly one slot."""

    waiter_id: str
    slot: Slot
    protocol: str
    observed: Address
    details: dict
    deadline: float
    #: the other receiver IPs the initiator named (dual stack): its sibling entries, one
    #: per slot, share this waiter id and mailbox
    also: tuple[str, ...] = ()
    #: the store's token for this initiator's per-source admission
    #: (:meth:`MatchStore.admit_source`), or None; a store may release it when the waiter is
    #: taken (it waits no more), in the same step (:meth:`MatchStore.claim`)
    admission: object = field(default=None, compare=False)

    def siblings(self) -> list["Waiter"]:
        """The entries of this initiator in its other slots."""
        ips = (self.slot.target_ip, *self.also)
        return [replace(self, slot=Slot(self.slot.key_digest, ip),
                        also=tuple(x for x in ips if x != ip)) for ip in self.also]

    def expired(self, now: float) -> bool:
        return now >= self.deadline


@dataclass(frozen=True)
class Match:
    """A receiver met a waiting initiator; both answers are built from this."""

    match_id: str
    protocol: str
    initiator: Waiter
    receiver_observed: Address
    receiver_details: dict = field(default_factory=dict)

    def initiator_answer(self) -> dict:
        """``/v1/initiate`` 200 body: the receiver as the server saw it."""
        return {"role": "initiator", "protocol": self.protocol, "match_id": self.match_id,
                "peer": {"observed": _addr(self.receiver_observed), "details": self.receiver_details}}

    def receiver_answer(self) -> dict:
        """``/v1/checkin`` 200 body: the initiator as the server saw it."""
        return {"role": "receiver", "protocol": self.protocol, "match_id": self.match_id,
                "peer": {"observed": _addr(self.initiator.observed), "details": self.initiator.details}}


def _addr(address: Address) -> dict:
    return {"ip": address[0], "port": address[1]}


# -- the store interface: what Matcher (and the relay exchange) need of a store --------------

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
    """Atomic pairing storage, plus waking a waiting initiator. Every method is atomic with
    respect to the others, and none reads a clock: ``now`` comes from the caller.

    A shared store (Redis, so several server instances pair with each other) maps the
    operations onto scripts: put (set unless a live waiter is there), claim (take + empty
    the siblings + deliver, one step), a compare-and-delete (remove), and a per-waiter list
    and channel (mailbox: delivery = ``LPUSH``/``PUBLISH``, ``wait`` = subscribe).
    """

    @abstractmethod
    def put_waiter(self, waiter: Waiter, now: float) -> bool:
        """Store ``waiter`` in its slot unless a live (unexpired at ``now``) waiter is there."""

    @abstractmethod
    def take_waiter(self, slot: Slot, now: float) -> Waiter | None:
        """Remove and return the live waiter in ``slot`` (expired ones are dropped, not returned)."""

    @abstractmethod
    def remove_waiter(self, waiter: Waiter) -> bool:
        """Remove exactly this waiter (same slot, same id); ``False`` if it is no longer there."""

    def claim(self, slot: Slot, now: float, match_id: str, receiver_observed: Address,
              receiver_details: dict) -> Match | None:
        """A receiver's check-in: take the live waiter in ``slot``, empty its other slots and
        deliver the match ``match_id`` to its mailbox; the match, or ``None`` if nobody waits.

        This default composes :meth:`take_waiter`, :meth:`remove_waiter` and :meth:`deliver`;
        a shared store does it all in one atomic step (one round trip, no window in which a
        second receiver could take a sibling entry)."""
        waiter = self.take_waiter(slot, now)
        if waiter is None:
            return None
        for sibling in waiter.siblings():   # dual stack: its other slots are empty now
            self.remove_waiter(sibling)
        match = Match(match_id, waiter.protocol, waiter, receiver_observed, dict(receiver_details))
        self.deliver(match)
        return match

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


class KeyHasher:
    """Keyed BLAKE2b of rendezvous identifiers under ``secret`` (16-64 bytes): random per
    process unless shared on purpose (:func:`stunturn_server.app.key_hasher` draws it).

    Clients send ``rendezvous`` (a slow KDF of the access key, never the key); the
    ``access_key`` parameter names below are that identifier.

    Instances sharing a store (e.g. Redis) must share the secret too.
    """

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        if not 16 <= len(self._secret) <= 64:
            raise ValueError("key hashing secret must be 16-64 bytes")

    def digest(self, access_key: str) -> bytes:
        return hashlib.blake2b(access_key.encode("ascii"), key=self._secret, digest_size=32,
                               person=b"stunturn-pair").digest()


class Conflict(Exception):
    """Another initiator already waits in this slot (HTTP 409)."""

    def __init__(self, slot: Slot) -> None:
        super().__init__("another initiator is already waiting for this access key and target IP")
        self.slot = slot


@dataclass
class Registration:
    """What :meth:`Matcher.register` hands back: the waiter and the mailbox its match arrives in."""

    waiter: Waiter
    mailbox: Mailbox


class Matcher:
    """Pairing decisions over a :class:`MatchStore`. Time is always passed in; ``new_id``
    draws the waiter and match ids (unguessable: the server passes ``secrets.token_hex``)."""

    def __init__(self, store: MatchStore, hasher: KeyHasher, *, new_id: Callable[[], str]) -> None:
        self.store = store
        self.hasher = hasher
        self._new_id = new_id

    def slot(self, access_key: str, ip: str) -> Slot:
        return Slot(self.hasher.digest(access_key), ip)

    def register(self, access_key: str, target_ip: str | tuple[str, ...] | list[str], protocol: str, *,
                 observed: Address, details: dict, now: float, timeout: float,
                 admission: object = None) -> Registration:
        """Put an initiator in its slot until ``now + timeout``; :class:`Conflict` if occupied.

        ``target_ip`` may name several receiver IPs (dual stack: one per family): the
        initiator then waits in one slot per IP and the first receiver to arrive from
        any of them takes it (all or none are stored). ``admission``: the store's token from
        :meth:`MatchStore.admit_source` for this initiator, carried by its waiter.

        The mailbox is opened before the waiter becomes visible, so a receiver that
        arrives at once still finds somewhere to deliver.
        """
        ips = (target_ip,) if isinstance(target_ip, str) else tuple(dict.fromkeys(target_ip))
        waiter = Waiter(self._new_id(), self.slot(access_key, ips[0]), protocol, observed,
                        dict(details), now + timeout, also=ips[1:], admission=admission)
        mailbox = self.store.open_mailbox(waiter.waiter_id)
        stored: list[Waiter] = []
        for entry in (waiter, *waiter.siblings()):
            if not self.store.put_waiter(entry, now):
                for done in stored:
                    self.store.remove_waiter(done)
                mailbox.close()
                raise Conflict(entry.slot)
            stored.append(entry)
        return Registration(waiter, mailbox)

    def checkin(self, access_key: str, *, observed: Address, details: dict, now: float) -> Match | None:
        """A receiver arrives from ``observed``: take the initiator waiting for it, or ``None``.

        The slot is looked up with the receiver's *observed* IP, never one it claims.
        On a match the initiator's mailbox receives the match before this returns.
        """
        return self.store.claim(self.slot(access_key, observed[0]), now, self._new_id(), observed,
                                dict(details))

    def leave(self, waiter: Waiter) -> bool:
        """The initiator stops waiting (timeout, hang-up, shutdown).

        Returns ``True`` if its entry was still there and is now gone; ``False`` if a
        receiver took it first (its match is then in the mailbox already or on its way).
        With several target IPs, ``True`` only when every entry was there (a receiver
        that took one of them removes the others).
        """
        removed = [self.store.remove_waiter(entry) for entry in (waiter, *waiter.siblings())]
        return all(removed)
