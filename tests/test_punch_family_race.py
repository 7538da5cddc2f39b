"""punch/family_race.py with stand-in attempts (no sockets): the initiator keeps the first
authenticated path and nominates it, the receiver follows the nomination, the loser is
cancelled or abandoned, and when every attempt fails the IPv4 error comes out."""

from __future__ import annotations

import threading
import time

import pytest

from stunturn_diag.errors import PunchError
from stunturn_diag.punch.family_race import race
from stunturn_diag.sansio.punch.families import FamilyPlan
from stunturn_diag.sansio.punch.wire import Role


class FakeChannel:
    def __init__(self, fam):
        self.fam = fam
        self.heard = threading.Event()
        self.nominated = self.abandoned = self.closed = False

    def nominate(self):
        self.nominated = True

    def abandon(self):
        self.abandoned = True

    def close(self):
        self.closed = True


def attempt(fam, *, after=0.0, fail=None, log=None):
    def run(cancel):
        if log is not None:
            log.append((fam, time.monotonic()))
        if cancel.wait(after):
            raise PunchError("cancelled", reason="cancelled")
        if fail:
            raise PunchError(f"IPv{fam} {fail}", reason=fail, attempts=[{"target": str(fam)}])
        return FakeChannel(fam)
    return run


PLAN = FamilyPlan(start={6: 0.0, 4: 0.05})


def test_initiator_keeps_the_first_and_cancels_the_other():
    ch, fam, failures = race({6: attempt(6, after=0.01), 4: attempt(4, after=5)}, PLAN,
                             Role.INITIATOR, time.monotonic() + 10, lambda m: None)
    assert fam == 6 and ch.nominated and failures == {}


def test_the_head_start_delays_ipv4_unless_ipv6_fails_first():
    log: list = []
    ch, fam, failures = race({6: attempt(6, after=0.3, log=log), 4: attempt(4, log=log)}, PLAN,
                             Role.INITIATOR, time.monotonic() + 10, lambda m: None)
    assert fam == 4 and [f for f, _t in log] == [6, 4]
    # a head start longer than the punch: IPv4 can only win by starting when IPv6 failed
    ch, fam, failures = race({6: attempt(6, fail="unreachable"), 4: attempt(4)},
                             FamilyPlan(start={6: 0.0, 4: 60.0}), Role.INITIATOR,
                             time.monotonic() + 5, lambda m: None)
    assert fam == 4 and failures == {6: "IPv6 unreachable"}


def test_the_receiver_follows_the_nominated_path():
    chans: dict = {}

    def made(fam, after):
        def run(cancel):
            time.sleep(after)
            chans[fam] = FakeChannel(fam)
            if fam == 4:                      # the initiator nominated IPv4
                threading.Timer(0.1, chans[fam].heard.set).start()
            return chans[fam]
        return run

    ch, fam, _ = race({6: made(6, 0.0), 4: made(4, 0.05)}, PLAN, Role.RECEIVER,
                      time.monotonic() + 10, lambda m: None)
    assert fam == 4 and ch is chans[4] and chans[6].abandoned and not ch.nominated


def test_every_attempt_failed_raises_the_ipv4_error_with_both():
    with pytest.raises(PunchError) as info:
        race({6: attempt(6, fail="timeout"), 4: attempt(4, fail="one-way")}, PLAN,
             Role.INITIATOR, time.monotonic() + 10, lambda m: None)
    exc = info.value
    assert exc.reason == "one-way" and "IPv6: IPv6 timeout" in exc.message
    assert {a["target"] for a in exc.attempts} == {"4", "6"}
    assert exc.family_failures == {6: "IPv6 timeout", 4: "IPv4 one-way"}
