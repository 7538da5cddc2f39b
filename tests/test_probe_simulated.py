"""Plan + engine + classifier against a simulated NAT and the real (pure) STUN responder.

Everything is sans-IO: a fake clock, an event queue, a toy NAT model with RFC 4787
mapping / filtering / allocation / hairpinning and the Linux conntrack collision,
seeded loss, duplication and reordering. The UDP verdicts must equal the model.
"""

from __future__ import annotations

import heapq
import itertools
import os
import random

import pytest

from stunturn_diag.behaviour import Filtering, Mapping, PortAllocation
from stunturn_diag.sansio.probe import classify as C
from stunturn_diag.sansio.probe.endpoints import Endpoints
from stunturn_diag.sansio.probe.engine import Engine
from stunturn_diag.sansio.probe.plan import ALLOC_SOCKETS, UdpPlan, feed_outcome, sockets_for
from stunturn_diag.sansio.stun import decode
from stunturn_server.sansio.stun_responder import StunEndpoint, StunResponder

S1, S2, PUB, HOST = "198.51.100.10", "198.51.100.20", "203.0.113.2", "192.168.1.10"
EPS = [StunEndpoint(S1, 3478, "primary"), StunEndpoint(S1, 3479, "alt-port"),
       StunEndpoint(S2, 3478, "alt-ip"), StunEndpoint(S2, 3479, "alt-both")]


class SimNat:
    """A toy NAT: mapping/filtering per RFC 4787, port allocation, hairpin, collisions."""

    def __init__(self, mapping, filtering, alloc=PortAllocation.PRESERVING, hairpin=False,
                 collide=False, rng=None):
        self.mapping, self.filtering, self.alloc = mapping, filtering, alloc
        self.hairpin, self.collide, self.rng = hairpin, collide, rng or random.Random(1)
        self.maps: dict = {}          # key -> public port
        self.owner: dict = {}         # public port -> inner address
        self.permits: set = set()     # (public port, remote ip, remote port)
        self.stale: set = set()       # (public port, remote) conntrack entries of unsolicited packets
        self.counter = 20000

    def _key(self, inner, dest):
        if self.mapping is Mapping.ENDPOINT_INDEPENDENT:
            return (inner,)
        if self.mapping is Mapping.ADDRESS_DEPENDENT:
            return (inner, dest[0])
        return (inner, dest)

    def _new_port(self, inner):
        if self.alloc is PortAllocation.PRESERVING and inner[1] not in self.owner:
            return inner[1]
        if self.alloc is PortAllocation.SEQUENTIAL:
            self.counter += 1
            return self.counter
        while True:
            p = self.rng.randrange(1024, 65536)
            if p not in self.owner:
                return p

    def outbound(self, inner, dest):
        """-> public (ip, port) for a packet from ``inner`` to ``dest``."""
        if self.mapping is Mapping.NO_NAT:
            return inner
        key = self._key(inner, dest)
        port = self.maps.get(key)
        if port is None or (port, dest) in self.stale:
            port = self._new_port(inner) if port is None else self._new_port((inner[0], -1))
            if (key, dest) not in self.maps:
                self.maps[key if port == self.maps.get(key, port) else (key, dest)] = port
            self.owner[port] = inner
        self.permits.add((port, dest[0], dest[1]))
        return (PUB, port)

    def inbound(self, src, port):
        """-> inner address or None (filtered)."""
        if self.mapping is Mapping.NO_NAT:
            return (HOST, port)
        inner = self.owner.get(port)
        if inner is None:
            return None
        ok = {Filtering.ENDPOINT_INDEPENDENT: True,
              Filtering.ADDRESS_DEPENDENT: any(p == port and ip == src[0] for p, ip, _ in self.permits),
              Filtering.ADDRESS_AND_PORT_DEPENDENT: (port, src[0], src[1]) in self.permits}[self.filtering]
        if not ok and self.collide:
            self.stale.add((port, src))
        return inner if ok else None


def simulate(nat: SimNat, *, loss=0.0, dup=0.0, jitter=0.0, seed=0, lifetime=None,
             punch_profile=False):
    rng = random.Random(seed)
    responder = StunResponder(EPS)
    labels = sockets_for(lifetime, punch_profile=punch_profile)
    local_ip = HOST if nat.mapping is not Mapping.NO_NAT else HOST
    locals_ = {lab: (local_ip, 40000 + i * 7) for i, lab in enumerate(labels)}
    by_addr = {a: lab for lab, a in locals_.items()}
    eng = Engine()
    plan = UdpPlan(Endpoints((S1, 3478), (S1, 3479), (S2, 3478), (S2, 3479), "info"), locals_,
                   punch_profile=punch_profile, rand=os.urandom)
    queue: list = []
    seq = itertools.count()

    def later(t, what):
        if rng.random() < loss:
            return
        for _ in range(2 if rng.random() < dup else 1):
            heapq.heappush(queue, (t + 0.005 + rng.random() * jitter, next(seq), what))

    def feed(out, now):
        feed_outcome(plan, eng, out, now)

    now = 0.0
    for p in plan.start(now):
        eng.add(p)
    for _ in range(100000):
        sends, concluded = eng.poll(now)
        for s in sends:
            inner = locals_[s.sock]
            if s.dest[0] == HOST:  # no NAT: straight to our own socket
                later(now, ("in", inner, s.dest[1], s.payload))
                continue
            if s.dest[0] == PUB:  # hairpin
                if nat.hairpin:
                    later(now, ("in", nat.outbound(inner, s.dest), s.dest[1], s.payload))
                continue
            later(now, ("srv", nat.outbound(inner, s.dest), s.dest, s.payload))
        for out in concluded:
            feed(out, now)
        if eng.idle and not queue:
            break
        wake = [w for w in (eng.next_wakeup(), queue[0][0] if queue else None) if w is not None]
        now = max(now, min(wake))
        while queue and queue[0][0] <= now:
            _, _, ev = heapq.heappop(queue)
            if ev[0] == "srv":
                _, src, dest, data = ev
                role = next(e.role for e in EPS if (e.ip, e.port) == dest)
                for rep in responder.handle(data, src, role).replies:
                    later(now, ("in", (rep.local.ip, rep.local.port), rep.destination[1], rep.data))
            else:
                _, src, port, data = ev
                inner = nat.inbound(src, port) if nat.mapping is not Mapping.NO_NAT else (HOST, port)
                if inner is None or inner not in by_addr:
                    continue
                msg = decode(data)
                got = eng.on_packet(msg.transaction_id, now, message=msg, source=src, sock=by_addr[inner])
                if got is not None and not got.passive:
                    feed(got, now)
    o = {x.name: x for x in eng.outcomes}
    mapping = C.classify_mapping(o, locals_["map"])
    pairs = [(locals_["map"], C.mapped(o["map.primary"]))] + [
        (locals_[f"alloc{i}"], C.mapped(o.get(f"alloc.{i}"))) for i in range(1, ALLOC_SOCKETS + 1)]
    return {
        "mapping": mapping.value,
        "filtering": C.classify_filtering(o, plan.endpoints).value,
        "allocation": C.classify_allocation([p for p in pairs if p[1]]),
        "hairpin": C.classify_hairpin(o).value,
        "moves": C.classify_unsolicited(o, mapping.value).value,
        "elapsed": now,
        "outcomes": o,
        "sent": eng.stats["sent"],
    }


EIM, ADM, APDM = Mapping.ENDPOINT_INDEPENDENT, Mapping.ADDRESS_DEPENDENT, Mapping.ADDRESS_AND_PORT_DEPENDENT
EIF, ADF, APDF = Filtering.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_DEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT
CASES = [
    (EIM, EIF, PortAllocation.PRESERVING, True, False),
    (EIM, ADF, PortAllocation.PRESERVING, False, False),
    (EIM, APDF, PortAllocation.PRESERVING, False, True),
    (EIM, APDF, PortAllocation.PRESERVING, True, False),
    (ADM, APDF, PortAllocation.RANDOM, False, False),
    (APDM, APDF, PortAllocation.SEQUENTIAL, False, False),
    (APDM, ADF, PortAllocation.RANDOM, False, False),
]


@pytest.mark.parametrize("mapping,filtering,alloc,hairpin,collide", CASES)
@pytest.mark.parametrize("loss,seed", [(0.0, 1), (0.1, 2), (0.1, 3), (0.2, 4)])
def test_verdicts_equal_the_model(mapping, filtering, alloc, hairpin, collide, loss, seed):
    nat = SimNat(mapping, filtering, alloc, hairpin, collide, rng=random.Random(seed))
    got = simulate(nat, loss=loss, dup=0.05, jitter=0.004, seed=seed)
    assert got["mapping"] is mapping
    assert got["filtering"] is filtering
    assert got["allocation"].value is alloc
    if alloc is PortAllocation.SEQUENTIAL:
        assert got["allocation"].extra["delta"] == 1
    assert got["hairpin"] is hairpin
    if mapping is EIM:
        assert got["moves"] is collide


@pytest.mark.parametrize("mapping,filtering,alloc,hairpin,collide", CASES)
@pytest.mark.parametrize("loss,seed", [(0.0, 1), (0.1, 2), (0.2, 4)])
def test_punch_profile_verdicts_equal_the_model_with_fewer_packets(mapping, filtering, alloc, hairpin,
                                                                   collide, loss, seed):
    """What the punch decision reads (mapping, filtering, allocation) is decided as by the
    full plan, also under loss, duplication and reordering; the rest is not tested."""
    def run(punch_profile):
        nat = SimNat(mapping, filtering, alloc, hairpin, collide, rng=random.Random(seed))
        return simulate(nat, loss=loss, dup=0.05, jitter=0.004, seed=seed, punch_profile=punch_profile)
    got, full = run(True), run(False)
    assert got["mapping"] is mapping and got["filtering"] is filtering
    assert got["allocation"].value is alloc
    if alloc is PortAllocation.SEQUENTIAL:
        assert got["allocation"].extra["delta"] == 1
    assert got["hairpin"] is None and got["moves"] is None
    assert not any(n.startswith(("hair.", "unsol.")) for n in got["outcomes"])
    if loss == 0.0:
        assert got["sent"] < full["sent"] and got["elapsed"] <= full["elapsed"]


def test_no_nat():
    got = simulate(SimNat(Mapping.NO_NAT, EIF))
    assert got["mapping"] is Mapping.NO_NAT and got["filtering"] is EIF


def test_loss_free_filtered_probe_concludes_within_a_few_rtos():
    got = simulate(SimNat(EIM, APDF))
    assert got["filtering"] is APDF
    out = got["outcomes"]["filt.change_both"]
    assert out.status == "no-reply" and out.attempts == 3
    assert out.concluded_at - out.first_sent < 0.5


def test_server_ignoring_change_request_is_undetermined_not_wrong():
    o = simulate(SimNat(EIM, EIF))["outcomes"]
    o["filt.change_both"].source = (S1, 3478)  # as if the answer came from the primary
    assert C.classify_filtering(o, Endpoints((S1, 3478), (S1, 3479), (S2, 3478), (S2, 3479))).value is None
