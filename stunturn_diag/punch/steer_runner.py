"""I/O for :mod:`stunturn_diag.sansio.punch.counter`: read and steer a sequential NAT's counter.

Every decision (how many flows to burn, when to read again, when to give up) is
:func:`counter.after_reading`'s; this module opens the flows and reads the clock.

A reading is one STUN Binding over UDP from a fresh socket (one new flow through
the NAT; its mapped port is the counter's value); a burn is one datagram from
each of ``n`` fresh sockets. Time is injected (``clock``), every loop is bounded
(:data:`counter.MAX_STEPS`, :data:`counter.MAX_LEAD` flows per burn,
:data:`FRESH_TRIES` binds per fresh socket).

Where the flows go, and why (found in the lab, ``conntrack -E`` on the NAT box):

- Readings go to the signaling server's STUN endpoint; burns do NOT. The server
  answers STUN over UDP only up to a per-source budget (``serve``: burst 200, 50/s,
  the rest dropped); a burn of ~200 Binding requests spent it, so the confirming
  reading right after was dropped and answered only on its retransmission ~100 ms
  later, and by then others behind the NAT had taken the promised window (at 100
  flows/s: 10 ports). Burns go to the discard port (:data:`DISCARD_PORT`, RFC 863)
  of the same host: a new mapping each all the same, nothing answers them and the
  STUN budget stays for the readings.
- Every flow needs a local port this object has not used toward that destination
  while the NAT may still remember it (30 s and more): a fresh socket that the
  kernel gives such a port would reuse the old mapping, move nothing and (a
  reading) report an old port. Burn sockets stay open until the whole burn is
  sent, and the ports used are remembered per destination; a reading that is not
  above the previous one is such a reused mapping and is taken again.
- A reading's time is when its request left (its mapping was made then), not when
  the answer came: :meth:`steer_to` counts what others opened since then.
"""

from __future__ import annotations

import socket
import time
from typing import Callable

from ..errors import PunchError, StunturnError
from stunturn_diag.sansio.stun import binding_request, encode
from stunturn_diag.sansio.punch import counter
from stunturn_diag.sansio.punch.counter import Reading, UsedPorts
from .udp import UdpRendezvous
from stunturn_diag.sansio.netaddr import Address

#: where burns go, on the STUN server's host: the discard service (RFC 863)
DISCARD_PORT = 9
#: binds tried for one fresh local port before taking what the kernel gave
FRESH_TRIES = 8
#: readings tried when the NAT answers with an old mapping (not above the last reading)
READ_TRIES = 3
_BURN_PAYLOAD = b"stunturn-diag counter burn"


class CounterSteer:
    """Readings toward ``stun_server`` and burns toward ``burn_to`` through our NAT (UDP)."""

    def __init__(self, stun_server: Address, timeout: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, *,
                 burn_to: Address | None = None) -> None:
        self.stun_server = stun_server
        self.burn_to = burn_to or (stun_server[0], DISCARD_PORT)
        self.timeout = timeout
        self.clock = clock
        self.readings: list[Reading] = []
        #: flows this object opened (readings and burns)
        self.flows = 0
        #: local ports used toward each destination (each one a mapping on the NAT)
        self._used = UsedPorts()

    def _fresh(self, make: Callable[[], object], port_of: Callable[[object], int],
               destination: Address, held: list) -> object:
        """A socket (``make()``) on a local port not used toward ``destination`` yet.

        Rejected ones are appended to ``held`` (kept open so the kernel does not hand
        the same port out again; the caller closes them)."""
        for _ in range(FRESH_TRIES):
            sock = make()
            if self._used.take(destination, port_of(sock)):
                return sock
            held.append(sock)
        return held.pop()      # every try was a used port (not seen in practice): take it

    def _read_once(self, held: list) -> Reading:
        rv = self._fresh(lambda: UdpRendezvous("0.0.0.0", 0), lambda r: r.local_address[1],
                         self.stun_server, held)
        sent: list[float] = []
        try:
            self.flows += 1
            mapped = rv.learn_mapping(self.stun_server, self.timeout,
                                      on_first_send=lambda: sent.append(self.clock()))
        finally:
            rv.close()
        return Reading(int(mapped[1]), sent[0] if sent else self.clock())

    def read(self) -> Reading:
        """One reading (one new flow, or more when the NAT reused an old mapping);
        PunchError(stun-failed) without an answer."""
        held: list = []
        try:
            for _ in range(READ_TRIES):
                reading = self._read_once(held)
                if not self.readings or reading.port > self.readings[-1].port:
                    break
                self.flows -= 1       # an old mapping answered: no new flow
        finally:
            for rv in held:
                rv.close()
        self.readings.append(reading)
        return reading

    def burn(self, n: int) -> None:
        """Open ``n`` throw-away flows (at most :data:`counter.MAX_LEAD`) toward ``burn_to``."""
        held: list[socket.socket] = []
        burnt: list[socket.socket] = []

        def make() -> socket.socket:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("0.0.0.0", 0))
            return sock

        try:
            for _ in range(min(n, counter.MAX_LEAD)):
                sock = self._fresh(make, lambda s: s.getsockname()[1], self.burn_to, held)
                burnt.append(sock)        # open until the burn ends: no port twice
                try:
                    sock.sendto(_BURN_PAYLOAD, self.burn_to)
                    self.flows += 1
                except OSError:
                    pass
        finally:
            for sock in burnt + held:
                sock.close()

    def steer_to(self, next_port: int, window: int, first: Reading,
                 own_flows_since_first: int) -> int:
        """Move the counter so our next flow lands in ``next_port..+window-1``.

        Returns how many of our targets to skip (the overshoot). Raises
        PunchError(reason ``port-counter-too-fast``) when the counter is already
        past the window, naming the rate observed since ``first`` (a reading taken
        before ``own_flows_since_first`` flows of ours, not counting these here).
        The steps are :func:`counter.after_reading`'s.
        """
        before = self.flows
        for step_no in range(counter.MAX_STEPS):
            reading = self.read()
            own = own_flows_since_first + (self.flows - before) - 1
            age = max(0.0, self.clock() - reading.t)
            move = counter.after_reading(first, reading, own, age, next_port, window,
                                         last_step=step_no + 1 >= counter.MAX_STEPS)
            if move.action == "go":
                return move.count
            if move.action == "read":
                continue      # a stale reading, not a fast counter: read again
            if move.action == "too-fast":
                raise PunchError(counter.too_fast_message(first, reading, own, next_port,
                                                          window),
                                 hint="a relay (TURN) is needed while the NAT hands out "
                                      "ports this fast; fewer parallel flows behind this "
                                      "NAT make prediction possible",
                                 reason="port-counter-too-fast")
            self.burn(move.count)
        return 0    # could not confirm within MAX_STEPS: punch anyway


#: seconds between the first two counter readings (the first rate estimate). It is on
#: the receiver's way to its check-in; 0.1 s sees ~10 flows at 100 flows/s (a rate in
#: steps of 10 flows/s, which the lead's margin covers) and keeps the default probe's
#: whole cost before the check-in near 250 ms (0.2 s gave ~340 ms behind this NAT)
RATE_SAMPLE = 0.1


class PortPromise:
    """A sequential NAT's port promise while pairing, and the steering after the match.

    Before each signaling request :meth:`refresh` reads our NAT's counter (one STUN
    reading, a new flow) and renews :attr:`next_port`; the rate comes from the last
    two readings minus our own flows in between. After the match :meth:`steer` brings
    the counter to the promise. ``stun_server`` is called once, at the first reading.
    """

    def __init__(self, stun_server: Callable[[], Address], *, timeout: float,
                 say: Callable[[str], None], sleep: Callable[[float], None] = time.sleep) -> None:
        self._stun_server = stun_server
        self._timeout = timeout
        self._say = say
        self._sleep = sleep
        #: the port our first punch flow is promised (None: no promise)
        self.next_port: int | None = None
        #: flows per second others opened, as last measured
        self.counter_rate: float | None = None
        self._steer: CounterSteer | None = None
        self._marks: list[tuple[Reading, int]] = []   # (reading, our flows so far)

    def refresh(self, own_flows: int, horizon: float) -> bool:
        """Read the counter and renew :attr:`next_port` for a punch ``horizon`` seconds
        away; ``own_flows``: our signaling requests so far. False when it cannot be read."""
        if self._steer is None:
            self._steer = CounterSteer(self._stun_server(), timeout=self._timeout)
        try:
            if not self._marks:
                # a first rate: two readings RATE_SAMPLE apart, before the first promise
                self._marks.append((self._steer.read(), own_flows + self._steer.flows))
                self._sleep(RATE_SAMPLE)
            reading = self._steer.read()
        except StunturnError as exc:
            self._say(f"cannot read the NAT's port counter ({exc.message}); "
                      "the peer predicts from flows_after_stun")
            self.next_port = None
            return False
        self._marks.append((reading, own_flows + self._steer.flows))
        if len(self._marks) >= 2:
            (r0, f0), (r1, f1) = self._marks[-2], self._marks[-1]
            measured = counter.rate(r0, r1, own_flows=f1 - f0 - 1)
            if measured is not None:
                self.counter_rate = measured
        # after this reading: the signaling request itself, then the first punch flow
        self.next_port = counter.promise(reading, 1, self.counter_rate, horizon)
        return True

    def steer(self, window: int) -> int:
        """After the match: steer to :attr:`next_port` (``window`` ports); the number of
        our targets to skip. PunchError(port-counter-too-fast) when it is past."""
        assert self._steer is not None and self.next_port is not None
        first, _flows = self._marks[-1]
        # since that reading: our signaling request (the one that was answered)
        return self._steer.steer_to(self.next_port, window, first, 1)
