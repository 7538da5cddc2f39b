"""Pure port-counter reasoning for sequentially allocating NATs (no sockets, no clocks).

A sequential NAT in the wild has ONE port counter for every new flow of every host
behind it, TCP and UDP alike (RFC 4787 section 4.2.1 port assignment; RFC 5128
section 3.4 port prediction): the host's own check-ins, its DNS, other hosts and
the probe all move it between the diagnosis and the punch. Counting our own flows
(``details.nat.punch.flows_after_stun``) therefore misses the rest.

So the sequential side *promises* where its punch will land and steers its own
counter there (:func:`promise`, :func:`steer`):

1. Before each signaling request it reads the counter (a STUN Binding from a fresh
   socket is one flow; its mapped port is the counter's value) and announces
   ``details.nat.punch.next_port``: the reading, plus the flows it will open itself
   before punching, plus a lead for the flows others open meanwhile (the observed
   rate times how long until the punch, :func:`lead`).
2. After the match it reads again. If the counter is still short of the promise
   it burns the difference with throw-away flows (one datagram each from fresh
   sockets, toward a port that does not answer, so the STUN server's per-source
   budget stays for the readings) and confirms with one more reading; past the
   promised window, the prediction failed and the observed rate says why
   (:func:`too_fast_message`).
3. The peer aims at ``next_port .. next_port + window - 1``; we skip as many of our
   own targets as the counter overshot the promise, so the k-th flows of two
   sequential sides still meet.

Readings are ``(port, t)`` with ``t`` in seconds on any one clock of the caller's:
when the reading's request left (its mapping was made then), not when it was answered.
Ports are compared linearly (a counter that wraps inside the window is not handled).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: flows added to the lead beyond what the observed rate predicts
LEAD_MARGIN = 2
#: the most flows a promise may lead by (more is burning the NAT's ports wholesale)
MAX_LEAD = 256
#: readings plus burns after the match, at most (bounds the steering loop)
MAX_STEPS = 4
#: seconds from the confirming reading to the last punch flow: a counter that others
#: move by more than the window in that time cannot be hit even when steered
PUNCH_SPAN = 0.02


@dataclass(frozen=True)
class Reading:
    port: int
    t: float


def rate(first: Reading, last: Reading, own_flows: int = 0) -> float | None:
    """Flows per second that others opened between two readings.

    ``own_flows``: flows we opened ourselves strictly between them (the second
    reading itself is not one). None when the readings are too close in time, or
    when the second is below the first (the counter wrapped at the end of the NAT's
    port range: the rate is unknown, not zero).
    """
    dt = last.t - first.t
    if dt <= 0.02 or last.port < first.port:
        return None
    return max(0.0, (last.port - first.port - 1 - own_flows) / dt)


def lead(flows_per_s: float | None, horizon_s: float) -> int:
    """Flows to lead by when the punch is ``horizon_s`` seconds away."""
    r = flows_per_s or 0.0
    return min(MAX_LEAD, math.ceil(r * horizon_s * 1.5) + LEAD_MARGIN)


def promise(reading: Reading, own_flows_before_punch: int, flows_per_s: float | None,
            horizon_s: float) -> int:
    """The port our first punch flow will get (we steer the counter there)."""
    return reading.port + 1 + own_flows_before_punch + lead(flows_per_s, horizon_s)


@dataclass(frozen=True)
class Step:
    """What to do next: ``burn`` flows then read again, ``go`` (skip ``skip`` targets),
    or ``late`` (the counter is past the promised window)."""

    action: str          # "burn" | "go" | "late"
    count: int = 0       # flows to burn ("burn") or targets to skip ("go")


def drift(flows_per_s: float | None, age: float) -> int:
    """Flows others surely opened in the ``age`` seconds since a reading's request left
    (rounded down: burning too few costs one more step, too many loses the window)."""
    return int((flows_per_s or 0.0) * max(0.0, age))


def steer(reading: Reading, next_port: int, window: int, others: int = 0) -> Step:
    """After a reading: the next flow gets ``reading.port + 1`` (plus ``others``: flows
    of others since the reading, :func:`drift`, which a burn leaves out)."""
    nxt = reading.port + 1
    if nxt >= next_port + max(1, window):
        return Step("late")
    if nxt >= next_port:
        return Step("go", nxt - next_port)
    # burn all but one of the gap; the confirming reading takes the last slot
    return Step("burn", max(0, next_port - nxt - 1 - others))


def outruns_window(flows_per_s: float | None, window: int, skip: int = 0,
                   age: float = 0.0) -> bool:
    """True when others move the counter past the rest of the window (``window - skip``
    ports) in the :data:`PUNCH_SPAN` our punch flows need after the last reading, plus
    ``age``: the seconds since that reading's request left (its answer may come late,
    e.g. a retransmission, and others kept opening flows meanwhile)."""
    return bool(flows_per_s) and \
        flows_per_s * (PUNCH_SPAN + max(0.0, age)) >= max(1, window - skip)


@dataclass(frozen=True)
class Move:
    """What steering does after one reading: ``go`` (skip ``count`` targets), ``read``
    again (a stale reading, not a fast counter), ``too-fast`` (give up: the counter
    is past the window or will outrun it) or ``burn`` ``count`` flows, then read."""

    action: str          # "go" | "read" | "too-fast" | "burn"
    count: int = 0


def after_reading(first: Reading, reading: Reading, own_flows: int, age: float,
                  next_port: int, window: int, last_step: bool) -> Move:
    """One step of steering toward ``next_port .. +window-1`` (pure; the runner reads
    and burns). ``own_flows``: ours between ``first`` and ``reading``; ``age``: seconds
    since ``reading``'s request left; ``last_step``: no further reading is allowed.

    A reading whose answer came late counts what others opened since its request left
    (the rate times its age): a burn leaves those out, and a confirming reading after
    which they may have taken the rest of the window is taken again.
    """
    flows_per_s = rate(first, reading, own_flows)
    step = steer(reading, next_port, window, drift(flows_per_s, age))
    if step.action == "go":
        if not outruns_window(flows_per_s, window, step.count, age):
            return Move("go", step.count)
        if not outruns_window(flows_per_s, window, step.count) and not last_step:
            return Move("read")
    if step.action in ("go", "late"):
        return Move("too-fast")
    return Move("burn", step.count)


class UsedPorts:
    """Local ports used toward each destination (each one a mapping on the NAT while
    it remembers it): a flow needs a port not used toward its destination yet."""

    def __init__(self) -> None:
        self._used: dict[tuple[str, int], set[int]] = {}

    def take(self, destination: tuple[str, int], port: int) -> bool:
        """Record ``port`` toward ``destination``; False if it was used already."""
        used = self._used.setdefault(destination, set())
        if port in used:
            return False
        used.add(port)
        return True


def too_fast_message(first: Reading, last: Reading, own_flows: int, next_port: int,
                     window: int) -> str:
    """Why the prediction failed, with the observed rate (overrun, or about to be)."""
    r = rate(first, last, own_flows)
    if last.port + 1 < next_port + window:     # still inside: outruns it during the punch
        return (f"the NAT's port counter moves too fast to predict: "
                f"{r or 0:.1f} flows/s from other hosts and applications (measured from "
                f"mapped port {first.port} to {last.port} over {last.t - first.t:.2f} s by "
                f"STUN) pass the {window} promised ports {next_port}-{next_port + window - 1}"
                f" within the {PUNCH_SPAN * 1000:.0f} ms the punch takes")
    seen = (f"{r:.1f} flows/s from other hosts and applications" if r is not None
            else "an unknown rate")
    return (f"the NAT's port counter moved too fast to predict: it reached "
            f"{last.port + 1} while ports {next_port}-{next_port + window - 1} were "
            f"promised ({seen}, measured from mapped port {first.port} to {last.port} "
            f"over {last.t - first.t:.2f} s by STUN)")
