"""I/O for :mod:`stunturn_diag.punch.counter`: read and steer a sequential NAT's counter.

A reading is one STUN Binding over UDP from a fresh socket (one new flow through
the NAT; its mapped port is the counter's value); a burn is one datagram from
each of ``n`` fresh sockets. Both go to the signaling server's STUN endpoint.
Time is injected (``clock``), every loop is bounded (:data:`counter.MAX_STEPS`,
:data:`counter.MAX_LEAD` flows per burn).
"""

from __future__ import annotations

import socket
import time
from typing import Callable

from ..errors import PunchError
from ..stun import binding_request, encode
from . import counter
from .counter import Reading
from .udp import UdpRendezvous

Address = tuple[str, int]


class CounterSteer:
    """Readings and burns through our NAT toward ``stun_server`` (UDP)."""

    def __init__(self, stun_server: Address, timeout: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stun_server = stun_server
        self.timeout = timeout
        self.clock = clock
        self.readings: list[Reading] = []
        #: flows this object opened (readings and burns)
        self.flows = 0

    def read(self) -> Reading:
        """One reading (one new flow); PunchError(stun-failed) without an answer."""
        rv = UdpRendezvous("0.0.0.0", 0)
        try:
            self.flows += 1
            mapped = rv.learn_mapping(self.stun_server, self.timeout)
        finally:
            rv.close()
        reading = Reading(int(mapped[1]), self.clock())
        self.readings.append(reading)
        return reading

    def burn(self, n: int) -> None:
        """Open ``n`` throw-away flows (at most :data:`counter.MAX_LEAD`)."""
        wire = encode(binding_request(software="stunturn-diag counter"))
        for _ in range(min(n, counter.MAX_LEAD)):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.sendto(wire, self.stun_server)
                self.flows += 1
            except OSError:
                pass
            finally:
                sock.close()

    def steer_to(self, next_port: int, window: int, first: Reading,
                 own_flows_since_first: int) -> int:
        """Move the counter so our next flow lands in ``next_port..+window-1``.

        Returns how many of our targets to skip (the overshoot). Raises
        PunchError(reason ``port-counter-too-fast``) when the counter is already
        past the window, naming the rate observed since ``first`` (a reading taken
        before ``own_flows_since_first`` flows of ours, not counting these here).
        """
        before = self.flows
        for _ in range(counter.MAX_STEPS):
            reading = self.read()
            step = counter.steer(reading, next_port, window)
            own = own_flows_since_first + (self.flows - before) - 1
            if step.action == "go" and not counter.outruns_window(
                    counter.rate(first, reading, own), window, step.count):
                return step.count
            if step.action in ("go", "late"):
                raise PunchError(counter.too_fast_message(first, reading, own, next_port,
                                                          window),
                                 hint="a relay (TURN) is needed while the NAT hands out "
                                      "ports this fast; fewer parallel flows behind this "
                                      "NAT make prediction possible",
                                 reason="port-counter-too-fast")
            self.burn(step.count)
        return 0    # could not confirm within MAX_STEPS: punch anyway
