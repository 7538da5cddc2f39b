"""What the runners measured, as plain records for the classifier (pure: no sockets, no clock).

The runners (:mod:`stunturn_diag.probe.udp_runner`, :mod:`stunturn_diag.probe.tcp_runner`) fill
these in; every time in them was read by the runner and is passed in as a number. A
connection the TCP runner keeps open between two tests stays with the runner.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stunturn_diag.sansio.netaddr import Address
from stunturn_diag.sansio.probe.engine import Engine, Outcome
from stunturn_diag.sansio.probe.plan import UdpPlan


@dataclass
class UdpEvidence:
    """What the UDP phase produced: outcomes by name, socket addresses, the engine state."""

    plan: UdpPlan
    engine: Engine
    locals: dict[str, Address]
    local_ip: str
    #: the runner's clock when the plan started and when the loop ended (seconds)
    started: float
    finished: float
    errors: list[str] = field(default_factory=list)

    @property
    def outcomes(self) -> dict[str, Outcome]:
        return dict(self.plan.outcomes)


@dataclass
class TcpEvidence:
    """Raw TCP evidence for the classifier."""

    local_map: Address | None = None
    mapped: dict[str, Address | None] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    filt_local: Address | None = None
    filt_mapped: Address | None = None
    assist: dict[str, dict] | None = None
    assist_error: str | None = None
    accepted: list[dict] = field(default_factory=list)
    simopen: dict | None = None
    skipped: list[dict] = field(default_factory=list)
    elapsed_ms: float = 0.0
    alloc: list[tuple[Address, Address | None]] = field(default_factory=list)
    rtts: list[float] = field(default_factory=list)
    #: SYNs the runner resent itself (a connect's SYN unanswered within its RTO): lost packets
    syn_resends: int = 0
    #: seconds from SYN to connection of the connects that needed no resend (~1 RTT each)
    connect_times: list[float] = field(default_factory=list)
    #: milliseconds per test, for the JSON timings
    phase_ms: dict[str, float] = field(default_factory=dict)

    @property
    def reachable(self) -> bool:
        return any(m is not None for _, m in self.alloc)

    @property
    def loss_seen(self) -> bool:
        """A SYN was resent, or a TCP allocation exchange took a retransmission (>= 200 ms TCP
        RTO over the fastest)."""
        return self.syn_resends > 0 or (bool(self.rtts) and max(self.rtts) > min(self.rtts) + 0.15)

    @property
    def connect_rtt(self) -> float | None:
        """The fastest clean connect (a round trip free of data retransmissions), or None."""
        return min(self.connect_times, default=None)

    def count(self, exchange) -> None:
        """Record a connect's resends and its clean connect time (a ``TcpExchange``)."""
        self.syn_resends += exchange.resends
        if exchange.connect_s is not None:
            self.connect_times.append(exchange.connect_s)

    @property
    def rtt(self) -> float | None:
        return min(self.rtts) / 2 if self.rtts else None  # connect + one STUN exchange ~ 2 RTT
