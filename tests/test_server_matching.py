"""Pure pairing logic (server/sansio/matching.py + the in-memory store) with a fake clock."""

from __future__ import annotations

import itertools

import pytest

from stunturn_server.app import key_hasher
from stunturn_server.sansio.matching import Conflict, KeyHasher, Matcher, Slot
from stunturn_server.store import InMemoryStore

KEY = "correct horse battery"
OTHER_KEY = "another key 1234"
INIT_ADDR = ("198.51.100.10", 40000)
RECV_ADDR = ("203.0.113.7", 50000)


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store() -> InMemoryStore:
    return InMemoryStore()


@pytest.fixture
def matcher(store) -> Matcher:
    ids = itertools.count(1)
    return Matcher(store, KeyHasher(b"s" * 32), new_id=lambda: f"id{next(ids)}")


def register(matcher, clock, *, key=KEY, target=RECV_ADDR[0], timeout=30.0, details=None):
    return matcher.register(key, target, "udp", observed=INIT_ADDR, details=details or {"software": "i"},
                            now=clock.now, timeout=timeout)


def test_match_exchanges_details_and_observed_addresses(matcher, clock, store):
    reg = register(matcher, clock)
    clock.advance(5)
    match = matcher.checkin(KEY, observed=RECV_ADDR, details={"software": "r"}, now=clock.now)
    assert match is not None
    assert reg.mailbox.wait(0) is match  # delivered before checkin returned
    init_answer, recv_answer = match.initiator_answer(), match.receiver_answer()
    assert init_answer == {"role": "initiator", "protocol": "udp", "match_id": match.match_id,
                           "peer": {"observed": {"ip": RECV_ADDR[0], "port": RECV_ADDR[1]},
                                    "details": {"software": "r"}}}
    assert recv_answer["role"] == "receiver"
    assert recv_answer["peer"] == {"observed": {"ip": INIT_ADDR[0], "port": INIT_ADDR[1]},
                                   "details": {"software": "i"}}
    assert recv_answer["match_id"] == init_answer["match_id"]
    assert store.waiting_count() == 0
    assert matcher.leave(reg.waiter) is False  # taken by the receiver, not left


def test_receiver_must_come_from_the_named_ip(matcher, clock, store):
    register(matcher, clock, target="203.0.113.8")
    assert matcher.checkin(KEY, observed=RECV_ADDR, details={}, now=clock.now) is None
    assert store.waiting_count() == 1  # the wrong receiver does not disturb the waiter
    assert matcher.checkin(KEY, observed=("203.0.113.8", 1), details={}, now=clock.now) is not None


def test_receiver_needs_the_same_key(matcher, clock, store):
    register(matcher, clock)
    assert matcher.checkin(OTHER_KEY, observed=RECV_ADDR, details={}, now=clock.now) is None
    assert store.waiting_count() == 1


def test_nobody_waiting(matcher, clock):
    assert matcher.checkin(KEY, observed=RECV_ADDR, details={}, now=clock.now) is None


def test_second_initiator_for_same_key_and_ip_conflicts(matcher, clock, store):
    register(matcher, clock)
    with pytest.raises(Conflict):
        register(matcher, clock)
    assert store.mailbox_count() == 1  # the refused initiator's mailbox is not kept
    register(matcher, clock, target="203.0.113.99")  # other IP: its own slot
    register(matcher, clock, key=OTHER_KEY)  # other key: its own slot
    assert store.waiting_count() == 3


def test_expired_waiter_is_never_matched(matcher, clock, store):
    register(matcher, clock, timeout=10)
    clock.advance(10)  # deadline reached, the runner has not called leave() yet
    assert matcher.checkin(KEY, observed=RECV_ADDR, details={}, now=clock.now) is None


def test_expired_waiter_does_not_block_a_new_initiator(matcher, clock):
    old = register(matcher, clock, timeout=10)
    clock.advance(10.5)
    new = register(matcher, clock, timeout=10)
    assert matcher.leave(old.waiter) is False  # the late leave() cannot remove the new waiter
    match = matcher.checkin(KEY, observed=RECV_ADDR, details={}, now=clock.now)
    assert match is not None and match.initiator.waiter_id == new.waiter.waiter_id


def test_leave_frees_the_slot_at_once(matcher, clock, store):
    reg = register(matcher, clock, timeout=30)
    clock.advance(1)
    assert matcher.leave(reg.waiter) is True
    reg.mailbox.close()
    assert store.waiting_count() == 0 and store.mailbox_count() == 0
    assert matcher.checkin(KEY, observed=RECV_ADDR, details={}, now=clock.now) is None
    register(matcher, clock)  # the same key works again immediately


def test_leave_removes_under_the_slot_it_was_stored_with(matcher, clock, store):
    """Regression for the Go server's leak: the entry is deleted under the key it was stored with."""
    for i in range(50):
        reg = register(matcher, clock, key=f"key-number-{i:04d}", target=f"203.0.113.{i}", timeout=1)
        clock.advance(1)
        assert matcher.leave(reg.waiter) is True
        reg.mailbox.close()
    assert store.waiting_count() == 0 and store.mailbox_count() == 0


def test_interrupt_wakes_without_match(matcher, clock):
    reg = register(matcher, clock)
    reg.mailbox.interrupt()
    assert reg.mailbox.wait(5) is None


def test_keys_are_stored_hashed(matcher, clock, store):
    reg = register(matcher, clock)
    assert KEY.encode() not in reg.waiter.slot.key_digest
    assert KEY not in repr(store._waiters)
    assert len(reg.waiter.slot.label) == 8 and reg.waiter.slot.label not in KEY


def test_hash_is_keyed_per_process():
    assert key_hasher(None).digest(KEY) != key_hasher(None).digest(KEY)
    assert KeyHasher(b"x" * 32).digest(KEY) == KeyHasher(b"x" * 32).digest(KEY)
    with pytest.raises(ValueError):
        KeyHasher(b"short")


def test_slot_comparison():
    a = Slot(b"\x01" * 32, "203.0.113.7")
    assert a.same_key(Slot(b"\x01" * 32, "203.0.113.7"))
    assert not a.same_key(Slot(b"\x02" * 32, "203.0.113.7"))
    assert not a.same_key(Slot(b"\x01" * 32, "203.0.113.8"))
