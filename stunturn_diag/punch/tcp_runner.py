"""The TCP punch loop: one ``select`` loop that carries out
:class:`stunturn_diag.sansio.punch.tcp_machine.TcpPunchMachine`'s actions.

This module holds the sockets, the clock and the random ISNs; every decision
(rounds, retries, settle times, nomination) is the machine's. The sequence and its
reasons are in the docstring of :mod:`stunturn_diag.punch.tcp`.
"""

from __future__ import annotations

import secrets
import select
import socket
import struct
import threading
import time
from typing import Callable

from stunturn_diag.sansio.punch import tcp_machine as m
from stunturn_diag.sansio.punch.tcp_machine import (LISTENER, MAX_CONNECTS, NOMINATE,
                                                    STRATEGY_LISTEN, STRATEGY_SIMULTANEOUS,
                                                    TcpPunchMachine, retry_delay)
from stunturn_diag.sansio.punch.wire import Role
from ..errors import PunchError

from .tcp_sockets import (TCP_SYN_RECV, TCP_SYN_SENT, attach_blackhole, can_pin_isn, get_ttl,
                          set_ttl, shared_port_socket, tcp_state, unacked)
from stunturn_diag.sansio.netaddr import Address


__all__ = ["TcpPunchRunner", "MAX_CONNECTS", "NOMINATE", "STRATEGY_LISTEN",
           "STRATEGY_SIMULTANEOUS", "retry_delay"]

#: most actions one event may lead to (a bound on the action queue; a run needs a few)
_MAX_ACTIONS = 100_000


def abort(sock: socket.socket) -> None:
    """Close with SO_LINGER 0 (see :class:`tcp_machine.Abort`)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class TcpPunchRunner:
    """One punch run; ``run()`` returns the nominated socket or raises PunchError."""

    def __init__(self, local: Address, listener: socket.socket, candidates: list[Address], *,
                 role: Role | str, deadline: float, prime_ttl: int | None, strategy: str,
                 label: str | None = None, max_connects: int = MAX_CONNECTS,
                 clock: Callable[[], float] = time.monotonic,
                 cancel: threading.Event | None = None) -> None:
        """``cancel``: set by the other IP family's win (:mod:`.family_race`): the run
        stops with reason ``cancelled``."""
        self.local = local
        self.cancel = cancel
        self.clock = clock
        pin = bool(prime_ttl) and strategy == STRATEGY_SIMULTANEOUS and can_pin_isn()
        self.machine = TcpPunchMachine(candidates, role=role, deadline=deadline,
                                       prime_ttl=prime_ttl, strategy=strategy, pin=pin,
                                       isn_source=lambda: secrets.randbits(32), label=label,
                                       max_connects=max_connects)
        #: handle -> socket (LISTENER: the caller's listener)
        self.socks: dict[int, socket.socket] = {LISTENER: listener}

    # -- carrying out actions ---------------------------------------------------

    def execute(self, actions: list[m.Action]) -> None:
        """Carry out ``actions`` in order; what an answer returns goes first."""
        queue = list(reversed(actions))
        for _ in range(_MAX_ACTIONS):
            if not queue:
                return
            more = self._do(queue.pop())
            queue.extend(reversed(more))
        raise RuntimeError("the TCP punch machine asked for too many actions")

    def _do(self, action: m.Action) -> list[m.Action]:
        mach = self.machine
        if isinstance(action, m.OpenConnect):
            try:
                sock = shared_port_socket(*self.local, isn=action.isn)
            except OSError as exc:
                return mach.on_socket_failed(action.handle, exc.errno or 0, self.clock())
            full_ttl = get_ttl(sock)
            if action.ttl is not None:
                set_ttl(sock, action.ttl)
            rc = sock.connect_ex(action.address)
            self.socks[action.handle] = sock
            return mach.on_connect_started(action.handle, rc, full_ttl, self.clock())
        if isinstance(action, m.SetTtl):
            set_ttl(self.socks[action.handle], action.ttl)
            return []
        if isinstance(action, m.CheckSynSent):
            state = tcp_state(self.socks[action.handle])
            return mach.on_syn_sent(action.handle, state == TCP_SYN_SENT, self.clock())
        if isinstance(action, m.CheckSynReceived):
            state = tcp_state(self.socks[action.handle])
            return mach.on_syn_received(action.handle, state == TCP_SYN_RECV, self.clock())
        if isinstance(action, m.Close):
            self.socks.pop(action.handle).close()
            return []
        if isinstance(action, m.Abort):
            abort(self.socks.pop(action.handle))
            return []
        if isinstance(action, m.StreamSend):
            try:
                self.socks[action.handle].send(action.data)
            except OSError as exc:
                return mach.on_send_result(action.handle, exc.strerror or str(exc),
                                           self.clock())
            return mach.on_send_result(action.handle, None, self.clock())
        if isinstance(action, m.StreamRecv):
            try:
                data = self.socks[action.handle].recv(action.size)
            except BlockingIOError:
                return []
            except OSError as exc:
                data, why = b"", exc.strerror or str(exc)
            else:
                why = "closed by the peer"
            return mach.on_data(action.handle, data, why, self.clock())
        if isinstance(action, m.CheckUnacked):
            return mach.on_unacked(action.handle, unacked(self.socks[action.handle]),
                                   self.clock())
        if isinstance(action, m.DrainAccepts):
            self._drain(self.socks[action.listener])
            return []
        if isinstance(action, m.OpenListener):
            try:
                self.socks[action.handle] = shared_port_socket(*self.local)
            except OSError as exc:
                return mach.on_listener_opened(action.handle, exc.strerror)
            return mach.on_listener_opened(action.handle, None)
        if isinstance(action, m.FilterListener):
            return mach.on_filtered(attach_blackhole(self.socks[action.handle],
                                                     list(action.sources)))
        if isinstance(action, m.Listen):
            self.socks[action.handle].listen(action.backlog)
            return []
        if isinstance(action, m.Resume):
            return mach.resume(action.step, action.index, self.clock())
        raise TypeError(f"unknown action {action!r}")

    def _drain(self, listener: socket.socket) -> None:
        for _ in range(m.ACCEPT_DRAIN):  # bounded drain of the accept queue
            try:
                sock, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.execute(self.machine.on_accept_failed(exc.strerror))
                return
            sock.setblocking(False)
            handle = self.machine.allocate()
            self.socks[handle] = sock
            self.execute(self.machine.on_accepted(handle, peer, self.clock()))

    # -- the loop ---------------------------------------------------------------

    def run(self) -> socket.socket:
        mach = self.machine
        winner: socket.socket | None = None
        try:
            self.execute(mach.start(self.clock()))
            while mach.winner is None:
                now = self.clock()
                if now >= mach.deadline:
                    raise mach.failure()
                if self.cancel is not None and self.cancel.is_set():
                    raise PunchError("TCP punch cancelled: the other IP family won",
                                     reason="cancelled")
                self.execute(mach.on_timers(now))
                self.execute(mach.expire(now))
                if mach.winner is not None:     # the receiver's nominated one confirmed
                    break
                readers, writers, timeout = mach.wait(now)
                if self.cancel is not None:
                    timeout = min(timeout, 0.02)
                readable, writable, _ = select.select(
                    [self.socks[h] for h in readers], [self.socks[h] for h in writers], [],
                    timeout)
                now = self.clock()
                for i in range(len(mach.candidates)):
                    handle = mach.candidates[i].handle
                    if handle is not None and self.socks[handle] in writable:
                        err = self.socks[handle].getsockopt(socket.SOL_SOCKET,
                                                            socket.SO_ERROR)
                        self.execute(mach.on_connect_result(handle, err, now))
                if self.socks[mach.listener] in readable:
                    self._drain(self.socks[mach.listener])
                for handle in [c.handle for c in mach.conns]:
                    sock = self.socks.get(handle)
                    if sock is not None and sock in readable:
                        self.execute(mach.on_readable(handle, now))
                        if mach.winner is not None:
                            break
            winner = self.socks[mach.winner]
        finally:
            self._cleanup()
        winner.setblocking(True)
        return winner

    def _cleanup(self) -> None:
        for handle in self.machine.leftover():
            sock = self.socks.pop(handle, None)
            if sock is not None:
                sock.close()
