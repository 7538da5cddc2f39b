"""Pure pairing logic: initiators wait in a slot, a receiver takes the slot it owns.

Pairing as tunnels-is/stunturn designed it: an *initiator* names the access key and
the *receiver's* public IP and waits; a *receiver* checks in with the key and is
matched only if an initiator waits for that key AND named exactly the IP the server
observes the receiver coming from. A slot is ``(keyed hash of the key, canonical
target IP)``; a :class:`Waiter` carries its own :class:`Slot`, so an entry is
always removed under the very key it was stored with (the original Go server
leaked timed-out entries by deleting under a different key).

No sockets, no clocks: every call takes ``now`` (monotonic seconds) from the caller;
atomic storage and waking live behind :class:`stunturn_server.store.MatchStore`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # pragma: no cover
    from .store import Mailbox, MatchStore

Address = tuple[str, int]


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


class KeyHasher:
    """Keyed BLAKE2b of rendezvous identifiers; the secret is per process unless shared on purpose.

    Clients send ``rendezvous`` (a slow KDF of the access key, never the key); the
    ``access_key`` parameter names below are that identifier.

    Instances sharing a store (e.g. Redis) must share the secret too.
    """

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret if secret is not None else secrets.token_bytes(32)
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
    mailbox: "Mailbox"


class Matcher:
    """Pairing decisions over a :class:`MatchStore`. Time is always passed in."""

    def __init__(self, store: "MatchStore", hasher: KeyHasher | None = None, *,
                 new_id: Callable[[], str] | None = None) -> None:
        self.store = store
        self.hasher = hasher or KeyHasher()
        self._new_id = new_id or (lambda: secrets.token_hex(8))

    def slot(self, access_key: str, ip: str) -> Slot:
        return Slot(self.hasher.digest(access_key), ip)

    def register(self, access_key: str, target_ip: str | tuple[str, ...] | list[str], protocol: str, *,
                 observed: Address, details: dict, now: float, timeout: float) -> Registration:
        """Put an initiator in its slot until ``now + timeout``; :class:`Conflict` if occupied.

        ``target_ip`` may name several receiver IPs (dual stack: one per family): the
        initiator then waits in one slot per IP and the first receiver to arrive from
        any of them takes it (all or none are stored).

        The mailbox is opened before the waiter becomes visible, so a receiver that
        arrives at once still finds somewhere to deliver.
        """
        ips = (target_ip,) if isinstance(target_ip, str) else tuple(dict.fromkeys(target_ip))
        waiter = Waiter(self._new_id(), self.slot(access_key, ips[0]), protocol, observed,
                        dict(details), now + timeout, also=ips[1:])
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
        waiter = self.store.take_waiter(self.slot(access_key, observed[0]), now)
        if waiter is None:
            return None
        for sibling in waiter.siblings():   # dual stack: its other slots are empty now
            self.store.remove_waiter(sibling)
        match = Match(self._new_id(), waiter.protocol, waiter, observed, dict(details))
        self.store.deliver(match)
        return match

    def leave(self, waiter: Waiter) -> bool:
        """The initiator stops waiting (timeout, hang-up, shutdown).

        Returns ``True`` if its entry was still there and is now gone; ``False`` if a
        receiver took it first (its match is then in the mailbox already or on its way).
        With several target IPs, ``True`` only when every entry was there (a receiver
        that took one of them removes the others).
        """
        removed = [self.store.remove_waiter(entry) for entry in (waiter, *waiter.siblings())]
        return all(removed)
