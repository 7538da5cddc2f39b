"""Pure STUN transaction engine: retransmission, matching and "no reply" decisions.

Sans-IO: no sockets and no clock. A runner feeds it the current time and every
received transaction ID; the engine says which datagrams to send now and when it
next needs to be woken up. Replies are matched by transaction ID only (RFC 8489
section 6.3.1): a CHANGE-REQUEST answer arrives from another address by design
(RFC 5780 section 7.2).

Retransmission (RFC 8489 section 6.2.1 sets RTO from the RTT, RFC 6298 style):
before any RTT sample the interval starts at ``rto_initial`` and doubles; after the
first sample (Karn's rule: only from transactions answered after one send) the
interval is ``srtt + 4 * rttvar`` clamped to ``[rto_min, rto_max]``. A transaction
is concluded "no reply" only once it has been sent enough times that, at the round
trip loss measured so far, every copy being lost is improbable (``target_miss``),
and the last copy has had ``2 * RTO`` (at least ``final_wait_min``) to come back. So one lost packet never reads as
filtering, and a loss-free path concludes a filtered probe within a few RTOs instead
of RFC 8489's 39.5 s. A ``prior_rtt`` (an RTT to the same server measured otherwise, e.g.
the TCP connect of the probe's TCP tests: RFC 8489 section 6.2.1 lets the RTO start from
prior RTT knowledge) stands in for the first sample until UDP's own first sample replaces
it, so a server that never answers over UDP is given up after a few RTOs of that
RTT instead of the doubling ``rto_initial`` schedule. Replies that arrive after the conclusion still count
(``late``): the classifier only runs once the whole probe has finished.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from stunturn_diag.sansio.netaddr import Address
from stunturn_diag.sansio.probe.endpoints import addr_dict


@dataclass(frozen=True)
class Probe:
    """One transaction to run: a datagram sent (and resent) from a socket label to ``dest``."""

    name: str
    sock: str
    dest: Address
    payload: bytes
    tid: bytes
    #: earliest time of the first send
    not_before: float = 0.0
    #: extra datagrams sent from the same socket just before every attempt
    prelude: tuple[tuple[Address, bytes], ...] = ()
    #: "response": a STUN response is expected; "request": this very request is
    #: expected to arrive at another of our sockets (hairpinning, RFC 5780 section 3.4)
    expect: str = "response"
    #: silence here is a failure, not a verdict (e.g. a plain Binding request once the
    #: server is known to answer): allow ``patience`` more sends than a verdict needs
    patience: int = 0


@dataclass
class Send:
    """A datagram the runner must send now."""

    sock: str
    dest: Address
    payload: bytes


@dataclass
class Outcome:
    """The evidence one transaction produced ("a missing reply is evidence")."""

    name: str
    sock: str
    dest: Address | None
    tid: bytes
    status: str = "pending"  # pending | answered | no-reply | cancelled
    attempts: int = 0
    first_sent: float | None = None
    sent_at: list[float] = field(default_factory=list)
    replied_at: float | None = None
    concluded_at: float | None = None
    rtt: float | None = None
    message: Any = None
    source: Address | None = None
    received_on: str | None = None
    duplicates: int = 0
    late: bool = False
    passive: bool = False

    @property
    def answered(self) -> bool:
        return self.status == "answered"

    def as_dict(self) -> dict:
        """JSON-friendly evidence (times relative to the first send, in ms)."""
        t0 = self.first_sent
        return {
            "probe": self.name,
            "socket": self.sock,
            "to": addr_dict(self.dest),
            "status": self.status,
            "attempts": self.attempts,
            "reply_from": addr_dict(self.source),
            "received_on": self.received_on,
            "rtt_ms": None if self.rtt is None else round(self.rtt * 1000, 3),
            "elapsed_ms": None if t0 is None or (self.replied_at or self.concluded_at) is None
            else round(((self.replied_at or self.concluded_at) - t0) * 1000, 3),
            "duplicates": self.duplicates,
            "late": self.late,
        }


@dataclass
class _Tx:
    probe: Probe
    outcome: Outcome
    next_at: float
    interval: float


class Engine:
    """Runs many concurrent STUN transactions; see the module docstring."""

    def __init__(self, *, rto_initial: float = 0.2, rto_min: float = 0.03, rto_max: float = 1.0,
                 min_attempts: int = 3, max_attempts: int = 10, target_miss: float = 1e-3,
                 loss_floor: float = 0.1, final_wait_min: float = 0.1,
                 prior_rtt: float | None = None) -> None:
        if not (0 < rto_min <= rto_initial <= rto_max):
            raise ValueError("need 0 < rto_min <= rto_initial <= rto_max")
        self.rto_initial, self.rto_min, self.rto_max = rto_initial, rto_min, rto_max
        self.min_attempts, self.max_attempts = min_attempts, max_attempts
        self.target_miss, self.loss_floor = target_miss, loss_floor
        #: the last copy's reply may take this long at least (a busy host's scheduling delay
        #: must not read as filtering)
        self.final_wait_min = final_wait_min
        self.srtt: float | None = None
        self.rttvar: float = 0.0
        #: the RTT estimate still comes from ``prior_rtt`` only (no UDP sample yet)
        self.prior_only = False
        self.prior_rtt = prior_rtt
        if prior_rtt is not None:
            if not 0 < prior_rtt:
                raise ValueError("prior_rtt must be positive")
            self.srtt, self.rttvar, self.prior_only = prior_rtt, prior_rtt / 2, True
        self._pending: dict[bytes, _Tx] = {}
        self._outcomes: dict[bytes, Outcome] = {}
        self._sent_for_answered = 0
        self._answered = 0
        self.stats = {"sent": 0, "received": 0, "unmatched": 0, "duplicates": 0, "late": 0}

    # -- state -----------------------------------------------------------------
    @property
    def rto(self) -> float:
        """Current retransmission interval (RFC 6298 section 2)."""
        if self.srtt is None:
            return self.rto_initial
        return min(self.rto_max, max(self.rto_min, self.srtt + 4 * self.rttvar))

    @property
    def loss_estimate(self) -> float:
        """Round-trip loss seen on answered transactions (retransmissions before the reply),
        shrunk toward ``loss_floor`` by a prior worth five sends, so a few lucky samples
        do not read as a loss-free path."""
        lost = self._sent_for_answered - self._answered
        return (lost + 5 * self.loss_floor) / (self._sent_for_answered + 5)

    @property
    def loss_seen(self) -> bool:
        """Some answered transaction needed more than one send."""
        return self._sent_for_answered > self._answered

    def attempts_needed(self) -> int:
        """Sends after which silence is conclusive: loss**n <= target_miss."""
        loss = max(self.loss_estimate, self.loss_floor)
        n = math.ceil(math.log(self.target_miss) / math.log(loss) - 1e-9)
        return max(self.min_attempts, min(self.max_attempts, n))

    @property
    def idle(self) -> bool:
        """No transaction is waiting (passive expectations do not count)."""
        return not self._pending

    def outcome(self, tid: bytes) -> Outcome | None:
        return self._outcomes.get(tid)

    @property
    def outcomes(self) -> list[Outcome]:
        return list(self._outcomes.values())

    # -- input -----------------------------------------------------------------
    def add(self, probe: Probe) -> Outcome:
        """Start a transaction (first send at ``probe.not_before`` or the next poll)."""
        if probe.tid in self._outcomes:
            raise ValueError("duplicate transaction id")
        out = Outcome(probe.name, probe.sock, probe.dest, probe.tid)
        self._outcomes[probe.tid] = out
        self._pending[probe.tid] = _Tx(probe, out, probe.not_before, self.rto)
        return out

    def expect(self, name: str, sock: str, tid: bytes) -> Outcome:
        """Record a transaction someone else sends (e.g. a prelude); never retransmitted."""
        out = Outcome(name, sock, None, tid, passive=True)
        self._outcomes[tid] = out
        return out

    def cancel(self, tid: bytes) -> bool:
        """Stop a pending transaction (its outcome reads "cancelled"); False if not pending."""
        tx = self._pending.pop(tid, None)
        if tx is None:
            return False
        tx.outcome.status = "cancelled"
        return True

    def on_packet(self, tid: bytes, now: float, *, message: Any = None,
                  source: Address | None = None, sock: str | None = None) -> Outcome | None:
        """A datagram with this transaction ID arrived. Returns the outcome if this
        is the first answer (late answers included), else None (unknown/duplicate)."""
        self.stats["received"] += 1
        out = self._outcomes.get(tid)
        if out is None:
            self.stats["unmatched"] += 1
            return None
        if out.answered:
            out.duplicates += 1
            self.stats["duplicates"] += 1
            return None
        tx = self._pending.pop(tid, None)
        if out.status == "no-reply":
            out.late = True
            self.stats["late"] += 1
        out.status = "answered"
        out.replied_at = now
        out.message, out.source, out.received_on = message, source, sock
        if out.sent_at:
            out.rtt = now - out.sent_at[-1]
        if tx is not None and out.attempts >= 1:
            self._answered += 1
            self._sent_for_answered += out.attempts
            if out.attempts == 1 and tx.probe.expect == "response":
                self._sample(now - out.sent_at[0])
        return out

    def _sample(self, rtt: float) -> None:
        """RFC 6298 section 2.2/2.3 smoothing."""
        if self.srtt is None or self.prior_only:      # our own first sample beats a prior
            self.srtt, self.rttvar, self.prior_only = rtt, rtt / 2, False
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt

    def poll(self, now: float) -> tuple[list[Send], list[Outcome]]:
        """Datagrams due now, and transactions concluded "no reply" now."""
        sends: list[Send] = []
        concluded: list[Outcome] = []
        needed = self.attempts_needed()
        for tid, tx in list(self._pending.items()):
            if now < tx.next_at:
                continue
            out = tx.outcome
            if out.attempts >= needed + tx.probe.patience:
                out.status, out.concluded_at = "no-reply", now
                del self._pending[tid]
                concluded.append(out)
                continue
            for dest, payload in tx.probe.prelude:
                sends.append(Send(tx.probe.sock, dest, payload))
            sends.append(Send(tx.probe.sock, tx.probe.dest, tx.probe.payload))
            out.attempts += 1
            out.sent_at.append(now)
            if out.first_sent is None:
                out.first_sent = now
            if self.srtt is None:
                interval = self.rto_initial * (2 ** (out.attempts - 1))
            else:
                interval = self.rto
            interval = min(interval, self.rto_max)
            # after the last needed copy, wait 2 RTO for a reply before concluding
            last = out.attempts >= needed + tx.probe.patience
            tx.next_at = now + (max(2 * interval, self.final_wait_min) if last else interval)
        self.stats["sent"] += len(sends)
        return sends, concluded

    def next_wakeup(self) -> float | None:
        """When ``poll`` next has something to do (None when idle)."""
        if not self._pending:
            return None
        return min(tx.next_at for tx in self._pending.values())
