"""More than one NAT layer (e.g. carrier-grade NAT, RFC 6598 100.64.0.0/10) from a TTL walk.

The runner sends one STUN Binding request per TTL 1..``max_hops`` from its own UDP
socket with ``IP_RECVERR`` set, so the kernel queues each ICMP time-exceeded with
its sender (``SO_EE_OFFENDER``): no raw socket, no root. What the hops mean is decided
by the pure :func:`stunturn_diag.sansio.probe.hops.analyse_hops`.
"""

from __future__ import annotations

import select
import selectors
import socket
import time

from stunturn_diag.sansio.stun import decode, encode
from stunturn_diag.sansio.netaddr import Address, parse_queued_error
from stunturn_diag.stun_requests import fresh_binding_request
from stunturn_diag.sansio.probe.hops import analyse_hops

IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)


def _send(s: socket.socket, data: bytes, dest: Address) -> None:
    """Send, ignoring a pending error: with IP_RECVERR an ICMP error not yet read from the
    error queue (the time-exceeded we are waiting for) fails the next ``sendto``."""
    try:
        s.sendto(data, dest)
    except OSError:
        pass


def walk(dest: Address, local_ip: str, public: Address | None, *, rtt: float | None = None,
         max_hops: int = 8, on_server_hop=None, stop=None) -> dict:
    """TTL walk toward ``dest`` (bounded: ``max_hops`` sockets x 2 sends, <= 1 s).

    ``on_server_hop(ttl)`` is called as soon as the server answers (before the
    remaining ICMP errors, which routers rate-limit, have come in); setting the
    ``stop`` event ends the wait for missing hops (the rest of the probe is done)."""
    rtt = rtt if rtt is not None else 0.05
    budget = min(1.0, max(0.1, 10 * rtt))
    resend_at = min(budget / 2, max(0.03, 4 * rtt))
    if ":" in dest[0]:
        return analyse_hops([], None, None, None, None) | {"reason": "TTL walk is IPv4 only"}
    sel = selectors.DefaultSelector()
    socks = []
    reqs = {}
    try:
        for ttl in range(1, max_hops + 1):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
            s.bind((local_ip, 0))
            socks.append(s)
            sel.register(s, selectors.EVENT_READ, ttl)
            reqs[ttl] = encode(fresh_binding_request(software="stunturn-diag probe"))
        hops: dict[int, str | None] = {}
        server_hop: int | None = None
        start = time.monotonic()
        for s, ttl in zip(socks, range(1, max_hops + 1)):
            _send(s, reqs[ttl], dest)
        resent = False
        while time.monotonic() - start < budget and not (stop is not None and stop.is_set()
                                                         and server_hop is not None):
            if not resent and time.monotonic() - start > resend_at:
                for s, ttl in zip(socks, range(1, max_hops + 1)):
                    if ttl not in hops and (server_hop is None or ttl < server_hop):
                        _send(s, reqs[ttl], dest)
                resent = True
            if server_hop is not None and all(t in hops for t in range(1, server_hop)):
                break
            for key, _ in sel.select(0.01):  # EPOLLERR (error queue) also wakes us
                s, ttl = key.fileobj, key.data
                try:
                    _, anc, _, _ = s.recvmsg(1, 512, MSG_ERRQUEUE)
                    for _lvl, _typ, data in anc:
                        # a time exceeded is a hop (a port unreachable from the server is not)
                        err = parse_queued_error(data)
                        if err is not None and err.is_time_exceeded and err.offender is not None:
                            hops[ttl] = err.offender
                except (BlockingIOError, OSError):
                    pass
                try:
                    data, _src = s.recvfrom(2048)
                    decode(data)
                    if server_hop is None and on_server_hop is not None:
                        on_server_hop(ttl)
                    server_hop = ttl if server_hop is None else min(server_hop, ttl)
                except (BlockingIOError, OSError, ValueError):
                    pass
        limit = server_hop or max_hops + 1
        hop_list = [{"ttl": t, "from": hops.get(t)} for t in range(1, limit)]
        return analyse_hops(hop_list, server_hop, public is not None and public[0] != local_ip,
                            public[0] if public else None, local_ip)
    finally:
        sel.close()
        for s in socks:
            s.close()


def tcp_server_hop(dest: Address, local_ip: str, *, rtt: float | None = None, max_hops: int = 8,
                   outcomes: dict[int, int] | None = None) -> int | None:
    """How many hops away the server's TCP endpoint ``dest`` is, without UDP (bounded: one
    SYN per TTL 1..``max_hops``, all at once, <= 1 s; kernel sockets, no root).

    A connect whose SYN dies on the way fails on the ICMP time-exceeded (RFC 5927: an ICMP
    error kills a connection in SYN-SENT), so the smallest TTL that connects is the
    server's hop count. Used for the simultaneous-open TTL where UDP does not get through
    (the UDP walk then finds nothing) and over IPv6 (hop limit, IPV6_UNICAST_HOPS). Linux
    takes an ICMPv6 time exceeded in SYN-SENT for a soft error (RFC 1122 4.2.3.9): the
    connect would fail only on the retransmitted SYN's error, ~1 s later, past the budget.
    ``IPV6_RECVERR`` (ipv6(7)) makes the kernel report it at once (``SO_ERROR``), as an
    IPv4 connect fails at once. None when no connect got through. ``outcomes`` (if given)
    gets each settled TTL's ``SO_ERROR`` (0: connected; a TTL still pending is absent)."""
    rtt = rtt if rtt is not None else 0.05
    budget = min(1.0, max(0.1, 10 * rtt))
    ipv6 = ":" in dest[0]
    fam, level, option = ((socket.AF_INET6, socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS) if ipv6
                          else (socket.AF_INET, socket.IPPROTO_IP, socket.IP_TTL))
    socks: dict[socket.socket, int] = {}
    try:
        for ttl in range(1, max_hops + 1):
            s = socket.socket(fam, socket.SOCK_STREAM)
            socks[s] = ttl
            s.setblocking(False)
            s.setsockopt(level, option, ttl)
            if ipv6:
                s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
            s.bind((local_ip, 0))
            s.connect_ex(dest)
        pending, connected = dict(socks), []
        end = time.monotonic() + budget
        while pending and time.monotonic() < end:
            best = min(connected, default=None)
            if best is not None and all(t > best for t in pending.values()):
                break  # every lower TTL has failed: nothing can beat it
            _, writable, _ = select.select([], list(pending), [], max(0.0, min(0.05, end - time.monotonic())))
            for s in writable:
                ttl = pending.pop(s)
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if outcomes is not None:
                    outcomes[ttl] = err
                if err == 0:
                    connected.append(ttl)
        return min(connected, default=None)
    finally:
        for s in socks:
            s.close()
