"""The pure UDP punch engine against simulated NATs on a fake clock.

A tiny NAT model (RFC 4787 mapping/filtering/allocation, plus Linux's conntrack
port collision) sits between two engines; time only moves in the event loop.
"""

from __future__ import annotations

import os
import heapq
import random

import pytest

from stunturn_diag.sansio.punch.handshake import Handshake, Role
from stunturn_diag.sansio.punch.engine import MAX_PACKETS, PRIME_GAP, UdpPunchEngine

HOP = 0.002          # one-way delay per hop (host-NAT, NAT-core, core-NAT, NAT-host)


class SimNat:
    """A NAT with one inside host. ``collide``: an unsolicited inbound packet leaves a
    conntrack entry, so a later outbound packet to that endpoint gets another port."""

    def __init__(self, ip, *, eim=True, alloc="preserve", filtering="apdf", collide=False,
                 rng=None):
        self.ip, self.eim, self.alloc, self.filtering, self.collide = \
            ip, eim, alloc, filtering, collide
        self.map = {}            # key -> public port
        self.permits = {}        # public port -> {(ip, port)}
        self.unsolicited = set()
        self.next_seq = 20000
        self.rng = rng or random.Random(7)

    def outbound(self, lport, dst):
        if self.collide and (dst, self.map.get(lport, lport)) in self.unsolicited:
            # Linux masquerade: the new conntrack entry's tuple is taken -> another port
            key = (lport, dst)
            port = self.map.setdefault(key, lport + 1000)
            self.permits.setdefault(port, set()).add(dst)
            return port
        key = lport if self.eim else (lport, dst)
        port = self.map.get(key)
        if port is None:
            if self.alloc == "preserve":
                port = lport
            elif self.alloc == "seq":
                port, self.next_seq = self.next_seq, self.next_seq + 1
            else:
                port = self.rng.randrange(1024, 65536)
            self.map[key] = port
        self.permits.setdefault(port, set()).add(dst)
        return port

    def inbound(self, src, port):
        permits = self.permits.get(port)
        if permits is not None:
            if self.filtering == "eif" or src in permits or \
                    (self.filtering == "adf" and src[0] in {p[0] for p in permits}):
                return True
        if self.collide:
            self.unsolicited.add((src, port))
        return False


class World:
    """Two hosts (port 5000 each) behind two NATs, one core router, an event queue."""

    def __init__(self, nat_a, nat_b, *, loss=0.0, seed=1):
        self.nats = {"a": nat_a, "b": nat_b}
        self.q = []
        self.n = 0
        self.rng = random.Random(seed)
        self.loss = loss
        self.engines = {}

    def mapped(self, side):
        return (self.nats[side].ip, self.nats[side].outbound(5000, ("198.51.100.10", 3478)))

    def send(self, side, item, now):
        ttl = item.ttl or 64
        if ttl <= 1:
            return                                    # expires at our own NAT
        nat = self.nats[side]
        sport = nat.outbound(5000, item.dst)
        if ttl <= 2 or self.rng.random() < self.loss:
            return                                    # expires at the core router / lost
        other = "b" if side == "a" else "a"
        if item.dst[0] != self.nats[other].ip:
            return
        self.n += 1
        heapq.heappush(self.q, (now + 2 * HOP, self.n, other, (nat.ip, sport), item.dst[1],
                                item.data))

    def run(self, until):
        now = 0.0
        while now < until:
            wake = min(e.next_wakeup() for e in self.engines.values())
            t = min(wake, self.q[0][0] if self.q else until, until)
            now = max(now, t)
            while self.q and self.q[0][0] <= now:
                _, _, side, src, port, data = heapq.heappop(self.q)
                if self.nats[side].inbound(src, port):
                    for item in self.engines[side].receive(data, src, now + HOP):
                        self.send(side, item, now + HOP)
            for side, eng in self.engines.items():
                for item in eng.poll(now):
                    self.send(side, item, now)
            if all(e.confirmed for e in self.engines.values()):
                return now
            if all(e.expired(now) for e in self.engines.values()):
                return None
            if now == t and t == until:
                break
        return None


def make(world, *, prime=2, skew=0.0, targets=None, deadline=3.0, key_b="k" * 10,
         gap=PRIME_GAP):
    ma, mb = world.mapped("a"), world.mapped("b")
    t = targets or {"a": [mb], "b": [ma]}
    world.engines = {
        "a": UdpPunchEngine(Handshake("k" * 10, "m", Role.INITIATOR, entropy=os.urandom), t["a"], start=0.0,
                            deadline=deadline, prime_ttl=prime, prime_targets=list(t["a"]),
                            gap=gap),
        "b": UdpPunchEngine(Handshake(key_b, "m", Role.RECEIVER, entropy=os.urandom), t["b"], start=skew,
                            deadline=deadline + skew, prime_ttl=prime,
                            prime_targets=list(t["b"]), gap=gap),
    }
    return world.engines


def masquerade(ip):
    return SimNat(ip, collide=True)


def test_masquerade_pair_connects_with_priming_despite_start_skew():
    w = World(masquerade("203.0.113.2"), masquerade("203.0.113.18"))
    a, b = make(w, skew=0.015).values()
    assert w.run(3.0) is not None
    assert a.peer == ("203.0.113.18", 5000) and b.peer == ("203.0.113.2", 5000)


@pytest.mark.parametrize("skew", [0.025, 0.035, 0.045])
def test_masquerade_pair_connects_when_one_side_starts_up_to_45_ms_late(skew):
    """The skew a loaded host gives (above 20 ms once in CI): the late side's prime
    still leaves its NAT before the early side's first full-TTL packet gets there."""
    w = World(masquerade("203.0.113.2"), masquerade("203.0.113.18"))
    a, b = make(w, skew=skew).values()
    assert w.run(3.0) is not None
    assert not w.nats["b"].unsolicited               # nothing of a's met b's NAT unprimed
    assert a.peer == ("203.0.113.18", 5000) and b.peer == ("203.0.113.2", 5000)


def test_a_skew_past_the_priming_gap_moves_the_late_sides_mapping():
    """The 20 ms gap of before against a 35 ms skew: the pair never meets."""
    w = World(masquerade("203.0.113.2"), masquerade("203.0.113.18"))
    a, b = make(w, skew=0.035, gap=0.020, deadline=1.0).values()
    assert w.run(1.0) is None
    assert 6000 in w.nats["b"].map.values()          # b's mapping toward a moved
    assert a.failure()[0] == b.failure()[0] == "timeout"


def test_masquerade_pair_collides_without_priming():
    w = World(masquerade("203.0.113.2"), masquerade("203.0.113.18"))
    a, b = make(w, prime=None, skew=0.015, deadline=1.0).values()
    assert w.run(1.0) is None
    assert w.nats["b"].unsolicited                  # a's early packet left its trace
    assert 6000 in w.nats["b"].map.values()          # b's mapping toward a moved
    assert a.failure()[0] == b.failure()[0] == "timeout"


def test_sequential_symmetric_pair_meets_on_the_predicted_diagonal():
    w = World(SimNat("203.0.113.2", eim=False, alloc="seq"),
              SimNat("203.0.113.18", eim=False, alloc="seq"))
    ma, mb = w.mapped("a"), w.mapped("b")
    window = {"a": [(mb[0], mb[1] + k) for k in range(1, 9)],
              "b": [(ma[0], ma[1] + k) for k in range(1, 9)]}
    a, b = make(w, targets=window).values()
    assert w.run(3.0) is not None
    assert a.peer == (mb[0], mb[1] + 1) and b.peer == (ma[0], ma[1] + 1)


def test_random_symmetric_behind_full_cone_peer_answers_where_packets_come_from():
    w = World(SimNat("203.0.113.2", eim=False, alloc="random"),
              SimNat("203.0.113.18", filtering="eif"))
    a, b = make(w).values()
    assert w.run(3.0) is not None
    assert b.peer != w.mapped("a")                   # not the STUN-learned port
    assert b.peer[0] == "203.0.113.2"


@pytest.mark.parametrize("seed", range(5))
def test_lossy_path_still_connects(seed):
    w = World(masquerade("203.0.113.2"), SimNat("203.0.113.18", filtering="eif"),
              loss=0.3, seed=seed)
    make(w)
    assert w.run(3.0) is not None


def test_wrong_key_fails_as_auth_failed_and_the_loop_is_bounded():
    w = World(SimNat("203.0.113.2", filtering="eif"), SimNat("203.0.113.18", filtering="eif"))
    a, b = make(w, key_b="another key", deadline=2.0).values()
    assert w.run(2.5) is None
    assert a.failure()[0] == b.failure()[0] == "auth-failed"
    assert a.packets_sent <= MAX_PACKETS and not a.complete


def test_silent_peer_times_out_with_attempts_listed():
    h = Handshake("k" * 10, "m", Role.INITIATOR, entropy=os.urandom)
    eng = UdpPunchEngine(h, [("203.0.113.18", 4000)], start=0.0, deadline=1.0,
                         prime_targets=[("203.0.113.18", 4000)])
    now, sent = 0.0, 0
    while not eng.expired(now):
        sent += len(eng.poll(now))
        now = eng.next_wakeup() if eng.next_wakeup() > now else now + 0.001
    reason, message, attempts = eng.failure()
    assert reason == "timeout" and "no packet" in message
    assert attempts[0]["target"] == "203.0.113.18:4000" and attempts[0]["sent"] == sent
    assert 10 < sent < 100                          # paced, not flooded


def test_non_handshake_datagrams_are_ignored():
    h = Handshake("k" * 10, "m", Role.INITIATOR, entropy=os.urandom)
    eng = UdpPunchEngine(h, [("203.0.113.18", 4000)], start=0.0, deadline=1.0)
    assert eng.receive(b"\x00\x01\x00\x00" + b"\x21\x12\xa4\x42" + bytes(12), ("1.2.3.4", 3478),
                       0.1) == []
    assert eng.ignored == 1 and not eng.complete


def test_an_old_version_peer_is_named_in_the_failure_not_silently_ignored():
    """A v1 peer's HELLOs reach us: the punch fails with version-mismatch, not a timeout."""
    import os

    from stunturn_diag.sansio.punch.wire import MAGIC, Kind

    eng = UdpPunchEngine(Handshake("k" * 10, "m", Role.INITIATOR, entropy=os.urandom), [("203.0.113.18", 4000)],
                         start=0.0, deadline=1.0)
    v1_hello = MAGIC + bytes([1, Kind.HELLO, 1, 0]) + os.urandom(32)
    assert eng.receive(v1_hello, ("203.0.113.18", 4000), 0.1) == []
    reason, message, _attempts = eng.failure()
    assert reason == "version-mismatch" and "peer speaks handshake v1" in message
