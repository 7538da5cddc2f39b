"""Probe-assist's socket actions: the server's own TCP connects back to a caller.

- :func:`connect_once`: one bounded connect attempt from a source address, with
  ``IP_RECVERR`` set so an ICMP error (:func:`icmp_error`) is told apart from a TCP RST
  that the kernel reports the same way ("refused");
- :func:`run_staggered`: groups of attempts, each group's one ``stagger`` apart (stopping
  at the first definitive answer), the groups concurrently, in greenlets;
- :func:`reserve_port` and :func:`connect_later`: a simultaneous-open connect from a port
  named at once, made ``delay`` later in an OS thread.

Nothing is ever sent on a connection but the fixed frame
(:func:`stunturn_diag.assist_frame.assist_frame`). What to connect to, from where and how
often is decided by the routes (:mod:`stunturn_server.probe_assist`) and the pure core
(:mod:`stunturn_server.sansio.probe_assist`).
"""

from __future__ import annotations

import errno
import socket
import threading
import time
from typing import Callable

from stunturn_diag.netio import connect_resending
from stunturn_diag.sansio.synwait import SYN_RTO_MIN
from stunturn_diag.sansio.assist_frame import assist_frame
from stunturn_diag.sansio.netaddr import parse_queued_error

from .sansio.probe_assist import DEFINITIVE

IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
_MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)


def icmp_error(sock) -> dict | None:
    """An ICMP error queued by IP_RECVERR (:func:`~stunturn_diag.sansio.netaddr.parse_queued_error`),
    if any: its ``type``, ``code``, ``errno`` and the node that sent it (``from``)."""
    raw = getattr(sock, "_sock", sock)  # gevent wraps the kernel socket; ask it directly
    try:
        _, anc, _, _ = raw.recvmsg(1, 512, _MSG_ERRQUEUE | socket.MSG_DONTWAIT)
    except OSError:
        return None
    for _level, _type, data in anc:
        err = parse_queued_error(data)
        if err is not None and err.is_icmp:
            return {"type": err.type, "code": err.code, "errno": err.errno, "from": err.offender}
    return None


def _family(ip: str) -> int:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def connect_once(source_ip: str, target: tuple[str, int], timeout: float, token: bytes,
                 socket_module=socket) -> dict:
    """One bounded connect attempt from ``(source_ip, ephemeral)`` to ``target``: its
    ``outcome`` (``connected``, ``rst``, ``icmp``, ``timeout`` or ``error``), ``source``
    and ``elapsed_ms``."""
    fam = _family(target[0])
    s = socket_module.socket(fam, socket.SOCK_STREAM)
    started = time.monotonic()
    result: dict = {"source": None}
    try:
        if fam == socket.AF_INET:
            s.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        else:
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
        s.bind((source_ip, 0))
        result["source"] = {"ip": s.getsockname()[0], "port": s.getsockname()[1]}
        s.settimeout(timeout)
        try:
            s.connect(target)
            result["outcome"] = "connected"
            if token:
                try:
                    s.sendall(assist_frame(token))
                except OSError:
                    pass
        except (socket.timeout, TimeoutError):
            result["outcome"] = "timeout"
        except OSError as exc:
            icmp = icmp_error(s)
            if icmp is not None:
                result.update(outcome="icmp", icmp=icmp)
            elif exc.errno == errno.ECONNREFUSED:
                result["outcome"] = "rst"
            elif exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
                result["outcome"] = "icmp"
            elif exc.errno == errno.ETIMEDOUT:
                result["outcome"] = "timeout"
            else:
                result.update(outcome="error", error=errno.errorcode.get(exc.errno or 0, str(exc)))
    except OSError as exc:
        result.update(outcome="error", error=errno.errorcode.get(exc.errno or 0, str(exc)))
    finally:
        s.close()
    result["elapsed_ms"] = round((time.monotonic() - started) * 1000, 3)
    return result


def run_staggered(groups: list[list[Callable]], stagger: float) -> list[list[dict]]:
    """Run each group's connect attempts one ``stagger`` apart, the groups concurrently;
    a group stops starting attempts once one of them is definitive (connected / RST /
    ICMP). So a lost SYN is covered by the next attempt, while a NAT that answers costs
    one SYN per source: routers rate-limit ICMP errors per destination (Linux: a burst
    of 6, then 1/s), and three answered SYNs per run would starve a quick re-run.
    Greenlets, with gevent's sockets: cooperative under the gevent server, a plain
    (hub-per-thread) socket elsewhere. Each job is called with the socket module."""
    import gevent
    from gevent import socket as gsocket

    def settled(started) -> bool:
        return any(g.ready() and g.successful() and (g.value or {}).get("outcome") in DEFINITIVE
                   for g in started)

    def run_group(jobs: list[Callable]) -> list:
        started: list = []
        for k, job in enumerate(jobs):
            if k:
                end = time.monotonic() + stagger
                while time.monotonic() < end and not settled(started):  # bounded by stagger
                    gevent.sleep(min(0.005, max(0.0, end - time.monotonic())))
                if settled(started):
                    break
            started.append(gevent.spawn(job, gsocket))
        gevent.joinall(started)
        return [g.value if g.successful() else {"outcome": "error", "error": "internal"} for g in started]
    runners = [gevent.spawn(run_group, jobs) for jobs in groups]
    gevent.joinall(runners)
    return [r.value if r.successful() else [{"outcome": "error", "error": "internal"}] for r in runners]


def reserve_port(source_ip: str, caller_ip: str) -> socket.socket:
    """A TCP socket of the caller's family bound to ``(source_ip, ephemeral)``; ``OSError``
    (EMFILE too) when none can be had."""
    s = socket.socket(_family(caller_ip), socket.SOCK_STREAM)
    try:
        s.bind((source_ip, 0))
    except OSError:
        s.close()
        raise
    return s


def connect_later(s: socket.socket, target: tuple[str, int], delay: float, timeout: float,
                  token: bytes, done: Callable[[], None]) -> None:
    """In an OS thread (blocking calls there never stall the gevent hub): ``delay`` seconds
    later connect from ``s``'s address to ``target`` (SYNs resent on a 50 ms doubling
    schedule, :func:`stunturn_diag.netio.connect_resending`) and send the frame; close it
    and call ``done`` however it ends. ``RuntimeError`` when no thread can be started (``s`` is left to the caller)."""
    def later() -> None:
        conn = None
        try:
            time.sleep(delay)
            local = s.getsockname()[:2]
            s.close()  # its port is taken again at once, by the first of the resending sockets
            # the caller watches for our SYN (it needs no answer): resend it on our own short
            # schedule rather than the kernel's 1 s, so one lost SYN costs 50 ms, not the test
            conn, _ = connect_resending(local, target, timeout, SYN_RTO_MIN)
            if token:
                conn.sendall(assist_frame(token))
        except OSError:
            pass
        finally:
            s.close()
            if conn is not None:
                conn.close()
            done()
    threading.Thread(target=later, name="probe-simopen", daemon=True).start()
