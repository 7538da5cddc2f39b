"""Pure UDP test plan: which STUN transactions to run, from which socket, in which order.

Sans-IO. The runner owns the sockets (one per label in :data:`SOCKETS`, all bound to
the same local IP) and feeds every concluded transaction back via ``on_outcome``;
the plan answers with the next transactions. Tests that could disturb each other use
separate sockets (an unsolicited inbound packet can leave Linux conntrack state that
changes a later mapping of the same socket), so the order tests finish in cannot
change a verdict.

Phases:

1. ``map.primary`` from socket ``map`` (RFC 5780 section 4.3 test I): the mapped
   address, and OTHER-ADDRESS when the alternates are not known yet.
2. Port allocation (RFC 4787 section 4.2.1): fresh sockets ``alloc1..`` each send one
   Binding request, strictly one after another so the NAT sees them in order.
3. Everything else at once: mapping tests II/III (+ alternate port), filtering
   (section 4.4, one socket per CHANGE-REQUEST), hairpinning (section 3.4), the
   unsolicited-inbound mapping move test, and binding lifetime (section 4.6) probes.

The *punch profile* (``punch_profile=True``, what ``punch`` runs before pairing) keeps
phases 1 and 2 as they are and, of phase 3, only the tests behind the verdicts the punch
decision reads: mapping and filtering (no hairpin, no move test, no lifetime).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from stunturn_diag.sansio.stun import binding_request, encode
from stunturn_diag.sansio.netaddr import Address
from stunturn_diag.sansio.probe.endpoints import Endpoints
from stunturn_diag.sansio.probe.engine import Engine, Outcome, Probe
from stunturn_diag.sansio.probe.names import Kind, ProbeName, alloc, life_x, life_y

ALLOC_SOCKETS = 4
ALLOC_LABELS = tuple(f"alloc{i}" for i in range(1, ALLOC_SOCKETS + 1))
BASE_SOCKETS = ("map", "filt-both", "filt-port", "unsol", "hair-a", "hair-b") + ALLOC_LABELS
#: the punch profile's sockets: mapping, filtering and allocation only
PUNCH_SOCKETS = ("map", "filt-both", "filt-port") + ALLOC_LABELS
#: the UDP verdicts the punch profile leaves out (not read by the punch decision)
PUNCH_LEFT_OUT = ("hairpin", "mapping_moves_on_unsolicited")
#: why the punch profile leaves a test out (``skipped``)
PUNCH_SKIP_REASON = ("not part of the punch profile (punch reads only mapping, filtering and "
                     "port allocation)")
SOFTWARE = "stunturn-diag probe"
#: extra sends for transactions whose silence would only mean loss
PATIENCE = 3
#: bytes in a transaction ID (RFC 8489 section 5)
TID_LENGTH = 12


def lifetime_schedule(max_seconds: float) -> list[float]:
    """Probe delays for the binding lifetime test: 1, 2, 4, 8, 15, 30, 60, 120, ... <= max."""
    steps = [1, 2, 4, 8, 15, 30, 45, 60, 90, 120, 180, 240, 300, 450, 600, 900, 1200]
    return [float(s) for s in steps if s <= max_seconds]


def sockets_for(lifetime_max: float | None, *, punch_profile: bool = False) -> tuple[str, ...]:
    """Socket labels the runner must open for this plan."""
    if punch_profile:
        return PUNCH_SOCKETS
    extra: tuple[str, ...] = ()
    if lifetime_max:
        for i, _ in enumerate(lifetime_schedule(lifetime_max)):
            extra += (f"life-x{i}", f"life-y{i}")
    return BASE_SOCKETS + extra


@dataclass
class UdpPlan:
    """State machine producing :class:`Probe`s; evidence accumulates in ``outcomes``.

    ``rand(n)`` returns ``n`` random bytes (the runner passes ``os.urandom``): every
    transaction ID (12 bytes, RFC 8489 section 5) is drawn from it."""

    endpoints: Endpoints
    locals: dict[str, Address]
    lifetime_max: float | None = None
    #: guard between the last confirmation of the unsolicited packet and the move test
    guard: float = 0.005
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    _passive: list[tuple[str, str, bytes]] = field(default_factory=list)
    _cancel: list[bytes] = field(default_factory=list)
    _life_y: dict[int, bytes] = field(default_factory=dict)
    _srtt: float | None = None
    _hair_started: bool = False
    #: True once the serial allocation phase is over (other mappings may now interleave)
    concurrent: bool = False
    #: only the tests of the punch decision's verdicts (mapping, filtering, allocation)
    punch_profile: bool = False
    rand: Callable[[int], bytes] = field(kw_only=True)

    def __post_init__(self) -> None:
        if self.punch_profile and self.lifetime_max:
            raise ValueError("the punch profile measures no binding lifetime")

    # -- helpers -----------------------------------------------------------------
    def _probe(self, name: ProbeName | Kind, sock: str, dest: Address, *, not_before: float = 0.0,
               change_ip: bool = False, change_port: bool = False,
               response_port: int | None = None, prelude=(), patience: int | None = None) -> Probe:
        """A Binding request transaction. Plain requests after the server has answered once
        are expected to be answered: they get extra patience (silence is loss, not a verdict)."""
        name = name if isinstance(name, ProbeName) else ProbeName(name)
        tid = self.rand(TID_LENGTH)
        msg = binding_request(tid, change_ip=change_ip, change_port=change_port,
                              response_port=response_port, software=SOFTWARE)
        if patience is None:
            patience = 0 if (change_ip or change_port or name.kind is Kind.MAP_PRIMARY) else PATIENCE
        return Probe(name, sock, dest, encode(msg), tid, not_before=not_before, prelude=prelude,
                     patience=patience)

    def take_passive(self) -> list[tuple[str, str, bytes]]:
        """Transaction IDs sent as preludes that the engine must also watch for."""
        out, self._passive = self._passive, []
        return out

    def take_cancelled(self) -> list[bytes]:
        """Transaction IDs that are no longer worth sending (the engine drops them)."""
        out, self._cancel = self._cancel, []
        return out

    def set_srtt(self, srtt: float | None) -> None:
        self._srtt = srtt

    # -- phases ------------------------------------------------------------------
    def start(self, now: float) -> list[Probe]:
        """The gate of everything: sent twice per attempt, so that before any RTT is known
        a lossy path does not read as "UDP blocked" (duplicates are harmless)."""
        p = self._probe(Kind.MAP_PRIMARY, "map", self.endpoints.primary)
        return [Probe(p.name, p.sock, p.dest, p.payload, p.tid, prelude=((p.dest, p.payload),))]

    def on_outcome(self, out: Outcome, now: float) -> list[Probe]:
        """React to one concluded transaction (answered or no reply)."""
        name = ProbeName.of(out.name)
        kind, first = name.kind, name not in self.outcomes
        self.outcomes[name] = out
        if kind is Kind.MAP_PRIMARY:
            if not out.answered:
                return []  # UDP unreachable: nothing else can be learned
            self.endpoints = self.endpoints.with_other_address(
                getattr(out.message, "other_address", None))
            return [self._probe(alloc(1), "alloc1", self.endpoints.primary)]
        if kind is Kind.ALLOC and first:
            i = name.index
            if i < ALLOC_SOCKETS:
                return [self._probe(alloc(i + 1), f"alloc{i + 1}", self.endpoints.primary)]
            return self._concurrent_phase(now)
        if kind is Kind.UNSOL_BIND and out.answered:
            return [self._unsolicited_step(now)]
        if kind is Kind.UNSOL_CONFIRM and out.answered:
            delay = max(self.guard, self._srtt or 0.0)
            return [self._probe(Kind.UNSOL_AFTER, "unsol", self.endpoints.alt_both, not_before=now + delay)]
        if kind in (Kind.HAIR_A, Kind.HAIR_B):
            return self._hairpin_step()
        if kind is Kind.LIFE_X and out.answered:
            i = name.index
            t = lifetime_schedule(self.lifetime_max or 0)[i]
            mapped = out.message.mapped_address
            p = self._probe(life_y(i), f"life-y{i}", self.endpoints.primary,
                            not_before=out.replied_at + t, response_port=mapped[1], patience=0)
            self._life_y[i] = p.tid
            return [p]
        if kind is Kind.LIFE_Y and out.status == "no-reply":
            # expired by t_i: every later probe would only confirm it (RFC 5780 4.6 bracket)
            i = name.index
            self._cancel += [tid for j, tid in self._life_y.items() if j > i]
        return []

    def _concurrent_phase(self, now: float) -> list[Probe]:
        ep = self.endpoints
        self.concurrent = True
        probes = [] if self.punch_profile else [self._probe(Kind.HAIR_A, "hair-a", ep.primary),
                                                self._probe(Kind.HAIR_B, "hair-b", ep.primary)]
        for attr, name in (("alt_ip", Kind.MAP_ALT_IP), ("alt_both", Kind.MAP_ALT_BOTH),
                           ("alt_port", Kind.MAP_ALT_PORT)):
            dest = getattr(ep, attr)
            if dest is not None:
                probes.append(self._probe(name, "map", dest))
        if ep.behaviour_tests:
            # each attempt sends two copies: each copy is answered on its own, so an attempt
            # fails only if both round trips are lost (a filtering verdict rests on silence)
            for p in (self._probe(Kind.FILT_CHANGE_BOTH, "filt-both", ep.primary, change_ip=True,
                                  change_port=True),
                      self._probe(Kind.FILT_CHANGE_PORT, "filt-port", ep.primary, change_port=True)):
                probes.append(Probe(p.name, p.sock, p.dest, p.payload, p.tid, prelude=((p.dest, p.payload),)))
            if not self.punch_profile:
                probes.append(self._probe(Kind.UNSOL_BIND, "unsol", ep.primary))
        else:
            self.notes.append("the server has no alternate address (no OTHER-ADDRESS): filtering "
                              + ("needs" if self.punch_profile else
                                 "and the unsolicited-packet test need") + " one")
        if self.lifetime_max:
            for i, _ in enumerate(lifetime_schedule(self.lifetime_max)):
                probes.append(self._probe(life_x(i), f"life-x{i}", ep.primary))
        return probes

    def _unsolicited_step(self, now: float) -> Probe:
        """Make the server send to ``unsol``'s mapping from alt IP+port (CHANGE-REQUEST),
        confirmed by a plain request sent right after it on every attempt. Four copies:
        with 10 % loss per direction all of them are lost with probability ~0.1 %."""
        ep = self.endpoints
        tid = self.rand(TID_LENGTH)
        change = encode(binding_request(tid, change_ip=True, change_port=True, software=SOFTWARE))
        self._passive.append((ProbeName(Kind.UNSOL_INBOUND), "unsol", tid))
        return self._probe(Kind.UNSOL_CONFIRM, "unsol", ep.primary, prelude=((ep.primary, change),) * 4)

    def _hairpin_step(self) -> list[Probe]:
        a, b = self.outcomes.get(Kind.HAIR_A), self.outcomes.get(Kind.HAIR_B)
        if a is None or b is None or self._hair_started or not (a.answered and b.answered):
            return []
        xa, xb = a.message.mapped_address, b.message.mapped_address
        self._hair_started = True
        # each socket sends to the other's mapped address, so an address(-and-port)-
        # dependent filter is opened from both sides (RFC 5780 section 3.4)
        pa = self._probe(Kind.HAIR_B_TO_A, "hair-b", xa, patience=0)
        pb = self._probe(Kind.HAIR_A_TO_B, "hair-a", xb, patience=0)
        return [Probe(p.name, p.sock, p.dest, p.payload, p.tid, expect="request") for p in (pa, pb)]


def feed_outcome(plan: UdpPlan, engine: Engine, out: Outcome, now: float) -> None:
    """Hand one concluded transaction to the plan and its answer back to the engine: the
    next probes, the preludes' transaction IDs to watch, and the ones to drop (pure glue,
    shared by the runner and the simulated-NAT tests)."""
    plan.set_srtt(engine.srtt)
    for p in plan.on_outcome(out, now):
        engine.add(p)
    for name, sock, tid in plan.take_passive():
        engine.expect(name, sock, tid)
    for tid in plan.take_cancelled():
        engine.cancel(tid)
