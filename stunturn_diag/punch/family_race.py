"""Dual-stack UDP punch runner: IPv6 and IPv4 attempts in threads, first path wins.

The plan (which families, their head start) and both sides' choice of the winner are
pure (:mod:`stunturn_diag.sansio.punch.families`); this module starts the attempts at
their offsets, nominates (initiator) or follows the nomination (receiver), cancels
the losing attempt and closes its socket without a word to the peer.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from typing import Callable

from ..errors import PunchError
from stunturn_diag.sansio.punch.families import FamilyPlan, initiator_pick, receiver_pick
from stunturn_diag.sansio.punch.wire import Role

class _Peek:
    """``is_set()``: the peer's first bytes wait on this TCP connection (peeked, left
    for the handshake)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def is_set(self) -> bool:
        try:
            return bool(self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except OSError:           # nothing yet (EAGAIN), or reset by the initiator
            return False


class TcpPath:
    """A punched, not yet authenticated TCP connection in the race. The initiator's
    nomination is its handshake HELLO, sent first on the kept connection after the race;
    the receiver keeps the connection those bytes arrive on."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.heard = _Peek(sock)

    def nominate(self) -> None:
        """Nothing to send now: the HELLO that follows is the word."""

    def abandon(self) -> None:
        from .tcp_runner import abort
        abort(self.sock)          # RST: the peer's copy reads as reset, never as nominated

    def close(self) -> None:
        self.sock.close()


#: one attempt: punch with this cancel event; returns a UdpChannel or TcpPath, or raises
#: PunchError
Attempt = Callable[[threading.Event], object]
#: the receiver's poll period while it waits for the initiator's nomination
_POLL = 0.01


def race(attempts: dict[int, Attempt], plan: FamilyPlan, role: Role, deadline: float,
         say: Callable[[str], None], *, first: str = "authenticated"
         ) -> tuple[object, int, dict[int, str]]:
    """(channel, family, failures: family -> why it failed) or PunchError (the IPv4
    attempt's when it was made, so the relay fallback reads its reason; attempts of both)."""
    t0 = time.monotonic()
    cancel = {fam: threading.Event() for fam in attempts}
    go = {fam: threading.Event() for fam in attempts}
    results: queue.Queue = queue.Queue()

    def run(fam: int) -> None:
        if not go[fam].wait(max(0.0, deadline - time.monotonic())) or cancel[fam].is_set():
            results.put((fam, PunchError(f"IPv{fam} not started: the other family won or "
                                         "the punch timed out", reason="cancelled")))
            return
        try:
            results.put((fam, attempts[fam](cancel[fam])))
        except BaseException as exc:      # handed to the racing thread
            results.put((fam, exc))

    def starter() -> None:
        for fam in sorted(attempts, key=lambda f: plan.start[f]):
            left = plan.start[fam] - (time.monotonic() - t0)
            if left > 0 and not any(cancel[f].is_set() for f in attempts):
                failed_early.wait(left)   # the preferred attempt failed: start this one now
            go[fam].set()

    failed_early = threading.Event()
    threads = [threading.Thread(target=run, args=(fam,), name=f"punch-ipv{fam}", daemon=True)
               for fam in attempts]
    for t in threads:
        t.start()
    threading.Thread(target=starter, name="punch-eyeballs", daemon=True).start()
    done: dict[int, object] = {}
    errors: dict[int, BaseException] = {}
    order: list[int] = []
    winner: int | None = None
    try:
        while winner is None and (len(done) + len(errors) < len(attempts) or done):
            try:
                fam, got = results.get(timeout=_POLL)
            except queue.Empty:
                fam, got = None, None
            if fam is not None:
                if isinstance(got, BaseException):
                    errors[fam] = got
                    failed_early.set()
                else:
                    done[fam] = got
                    order.append(fam)
            if role is Role.INITIATOR:
                winner = initiator_pick(order)
            else:
                winner = receiver_pick({f: ch.heard.is_set() for f, ch in done.items()},
                                       running=len(attempts) - len(done) - len(errors),
                                       at_deadline=time.monotonic() >= deadline)
        if winner is None:
            # every attempt failed: the IPv4 error (the relay fallback reads its reason)
            main = errors.get(4) or errors[6]
            for exc in errors.values():
                if not isinstance(exc, PunchError):
                    raise exc
            main.family_failures = {f: e.message for f, e in errors.items()}
            other = [e for e in errors.values() if e is not main]
            main.attempts = list(main.attempts) + [a for e in other for a in e.attempts]
            for fam, exc in errors.items():
                if exc is not main:
                    main.message += f" (IPv{fam}: {exc.message})"
            raise main
        channel = done[winner]
        if role is Role.INITIATOR:
            channel.nominate()
    finally:
        for fam in attempts:
            if fam != winner:
                cancel[fam].set()
                go[fam].set()
        for t in threads:
            t.join(2.0)
        while True:
            try:
                fam, got = results.get_nowait()
            except queue.Empty:
                break
            if isinstance(got, BaseException):
                errors[fam] = got
            else:
                done[fam] = got
        for fam, ch in done.items():
            if fam != winner:
                ch.abandon()
    for exc in errors.values():
        if not isinstance(exc, PunchError):
            channel.close()
            raise exc                     # a bug, not a lost race: never hidden
    failures = {fam: exc.message for fam, exc in errors.items() if exc.reason != "cancelled"}
    say(f"IPv{winner} path {first} first"
        + (f" ({(time.monotonic() - t0) * 1000:.0f} ms)" if plan.raced else "")
        + ("; " + "; ".join(f"IPv{f} failed: {m}" for f, m in failures.items())
           if failures else ""))
    return channel, winner, failures
