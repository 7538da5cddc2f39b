"""Thin UDP runner: non-blocking kernel sockets + ``selectors`` around the pure engine/plan.

No root needed. Every socket is bound to the local IP that routes to the server, so
"local address equals mapped address" really means "no NAT" (RFC 5780 section 4.3).
The loop is bounded: it ends when the engine is idle, or at ``hard_deadline``.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import time
from typing import Callable

from ..errors import ProbeError, StunDecodeError
from stunturn_diag.sansio.stun import decode, looks_like_stun
from stunturn_diag.sansio.netaddr import Address
from stunturn_diag.sansio.probe.endpoints import Endpoints
from stunturn_diag.sansio.probe.engine import Engine
from stunturn_diag.sansio.probe.evidence import UdpEvidence
from stunturn_diag.sansio.probe.plan import UdpPlan, feed_outcome, sockets_for


def _family(ip: str) -> int:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def route_source_ip(dest: Address) -> str:
    """The local IP the kernel would use toward ``dest`` (no packet is sent)."""
    s = socket.socket(_family(dest[0]), socket.SOCK_DGRAM)
    try:
        s.connect(dest)
        return s.getsockname()[0]
    except OSError as exc:
        raise ProbeError(f"no route to the STUN server {dest[0]}: {exc.strerror or exc}",
                         hint="check the server address and this host's network") from None
    finally:
        s.close()


def resolve(host: str, port: int) -> Address:
    """Numeric address for ``host`` (ProbeError when it does not resolve)."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise ProbeError(f"cannot resolve {host!r}: {exc.strerror}", hint="check the server name") from None
    return info[0][4][0], port


def run_udp(endpoints: Endpoints, local_ip: str | None = None, *,
            lifetime_max: float | None = None,
            clock: Callable[[], float] = time.monotonic, hard_limit: float = 20.0,
            engine: Engine | None = None, on_concurrent: Callable[[], None] | None = None,
            punch_profile: bool = False) -> UdpEvidence:
    """Run the UDP plan to the end (bounded by ``hard_limit`` + lifetime) and return the evidence.

    ``on_concurrent`` is called once when the serial port-allocation phase is over (or
    UDP turned out unreachable): other tests that create mappings may start then
    without disturbing the allocation pattern. ``local_ip``: the caller's
    :func:`route_source_ip` toward the primary, when it already has it. ``punch_profile``:
    only the tests of the punch decision's verdicts (see :mod:`.plan`).
    """
    local_ip = local_ip or route_source_ip(endpoints.primary)
    sel = selectors.DefaultSelector()
    socks: dict[str, socket.socket] = {}
    locals_: dict[str, Address] = {}
    errors: list[str] = []
    try:
        for label in sockets_for(lifetime_max, punch_profile=punch_profile):
            s = socket.socket(_family(local_ip), socket.SOCK_DGRAM)
            s.setblocking(False)
            s.bind((local_ip, 0))
            socks[label] = s
            locals_[label] = s.getsockname()[:2]
            sel.register(s, selectors.EVENT_READ, label)
        engine = engine or Engine()
        plan = UdpPlan(endpoints, locals_, lifetime_max=lifetime_max, punch_profile=punch_profile,
                       rand=os.urandom)
        started = clock()
        deadline = started + hard_limit + (lifetime_max or 0)
        for p in plan.start(started):
            engine.add(p)
        buf = bytearray(2048)
        while True:
            now = clock()
            sends, concluded = engine.poll(now)
            for snd in sends:
                try:
                    socks[snd.sock].sendto(snd.payload, snd.dest)
                except OSError as exc:  # counted, never fatal: a lost datagram is evidence too
                    if len(errors) < 20:
                        errors.append(f"send from {snd.sock} to {snd.dest[0]}:{snd.dest[1]}: "
                                      f"{exc.strerror or exc}")
            for out in concluded:
                feed_outcome(plan, engine, out, now)
            if on_concurrent is not None and (plan.concurrent or engine.idle):
                on_concurrent()
                on_concurrent = None
            if engine.idle or now >= deadline:
                break
            wake = engine.next_wakeup()
            timeout = max(0.0, min(wake if wake is not None else now + 0.05, deadline) - now)
            for key, _ in sel.select(timeout):
                s = key.fileobj
                for _ in range(64):
                    try:
                        n, src = s.recvfrom_into(buf)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError as exc:
                        if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                            continue
                        break
                    data = bytes(buf[:n])
                    if not looks_like_stun(data):
                        engine.stats["unmatched"] += 1
                        continue
                    try:
                        msg = decode(data)
                    except StunDecodeError:
                        engine.stats.setdefault("malformed", 0)
                        engine.stats["malformed"] += 1
                        continue
                    got = engine.on_packet(msg.transaction_id, clock(), message=msg,
                                           source=src[:2], sock=key.data)
                    if got is not None and not got.passive:
                        feed_outcome(plan, engine, got, clock())
        if on_concurrent is not None:
            on_concurrent()
        return UdpEvidence(plan, engine, locals_, local_ip, started, clock(), errors)
    finally:
        sel.close()
        for s in socks.values():
            s.close()

