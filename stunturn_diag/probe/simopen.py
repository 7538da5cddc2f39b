"""TCP simultaneous open through our NAT (RFC 5382 section 7.2), with raw sockets (root).

A SYN leaves from a raw socket with a TTL that passes our NAT but dies at the next
router (the kernel would abort its own connect() when the ICMP time-exceeded comes
back, so it cannot send this SYN), then the server's SYN comes in from the endpoint
we addressed (``/v1/probe/tcp-simopen``). Simultaneous open works through this NAT
when that SYN reaches us: it is watched on a raw socket, the handshake is not needed
(our kernel would answer it with its own sequence number, which conntrack rejects).
"""

from __future__ import annotations

import secrets
import select
import socket
import struct
import time

from ..errors import SignalingError, StunDecodeError
from .endpoints import Address, Endpoints
from .tcp import TcpRun, free_port, reuse_socket, stun_tcp


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def raw_syn(src: Address, dst: Address, ttl: int, copies: int = 2) -> None:
    """Send a bare TCP SYN (RFC 9293 header, no options) with a chosen TTL from a raw socket."""
    seq = secrets.randbits(32)
    hdr = struct.pack("!HHIIBBHHH", src[1], dst[1], seq, 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = socket.inet_aton(src[0]) + socket.inet_aton(dst[0]) + struct.pack("!BBH", 0, 6, len(hdr))
    hdr = hdr[:16] + struct.pack("!H", _checksum(pseudo + hdr)) + hdr[18:]
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    try:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
        s.bind((src[0], 0))
        for _ in range(copies):
            s.sendto(hdr, (dst[0], 0))
    finally:
        s.close()


def _watch_syn(raw: socket.socket, src: Address, dport: int, deadline: float) -> bool:
    """Wait for a SYN (no ACK) from ``src`` to our port ``dport`` on a raw TCP socket."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        r, _, _ = select.select([raw], [], [], left)
        if not r:
            return False
        try:
            pkt, (ip, _) = raw.recvfrom(2048)
        except OSError:
            continue
        if ip != src[0] or len(pkt) < 20:
            continue
        ihl = (pkt[0] & 0x0F) * 4
        if len(pkt) < ihl + 14:
            continue
        sport, dp = struct.unpack_from("!HH", pkt, ihl)
        flags = pkt[ihl + 13]
        if sport == src[1] and dp == dport and flags & 0x02 and not flags & 0x10:
            return True


def simopen_test(run: TcpRun, ep: Endpoints, local_ip: str, simopen, ttl_for_simopen, timeout: float,
                  rtt: float, loss_seen=None) -> None:
    """Run :func:`_simopen_once`; once more when it failed on a path known to lose packets."""
    _simopen_once(run, ep, local_ip, simopen, ttl_for_simopen, timeout, rtt)
    first = run.simopen or {}
    if first.get("connected") is False and loss_seen is not None and loss_seen():
        _simopen_once(run, ep, local_ip, simopen, lambda: first.get("ttl"), timeout, rtt)
        run.simopen["rounds"] = 2


def _simopen_once(run: TcpRun, ep: Endpoints, local_ip: str, simopen, ttl_for_simopen, timeout: float,
                  rtt: float) -> None:
    """RFC 5382 section 7.2: a SYN out that dies just past our NAT (low TTL, from a raw socket:
    the kernel would abort its own connect on the ICMP time-exceeded), then the server's SYN
    in from the endpoint we addressed. Simultaneous open works through this NAT when that
    SYN arrives here (watched on a raw socket; the handshake itself is not needed)."""
    info: dict = {}
    run.simopen = info
    ttl = ttl_for_simopen() if ttl_for_simopen else None
    if ttl is None:
        info["skipped"] = "the TTL walk did not find a router between our NAT and the server"
        return
    if ":" in local_ip:
        info["skipped"] = "IPv4 only"
        return
    local = free_port(local_ip)
    conn = reuse_socket(local)
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    try:
        raw.bind((local_ip, 0))
        try:
            mapped = stun_tcp(conn, ep.primary, timeout)  # learn our mapped port (EIM: reused)
        except (OSError, StunDecodeError) as exc:
            info["error"] = f"no STUN answer over TCP: {exc}"
            return
        wait_ms = int(min(3000, max(250, 10 * rtt * 1000)))
        delay_ms = int(min(1000, max(30, 4 * rtt * 1000)))
        try:
            answer = simopen({"port": mapped[1], "delay_ms": delay_ms, "timeout_ms": wait_ms})
        except SignalingError as exc:
            info["error"] = str(exc)
            return
        src = (answer["source"]["ip"], int(answer["source"]["port"]))
        raw_syn(local, src, ttl, copies=3)
        info.update(ttl=ttl, local={"ip": local[0], "port": local[1]},
                    mapped={"ip": mapped[0], "port": mapped[1]},
                    server_source={"ip": src[0], "port": src[1]}, delay_ms=delay_ms)
        info["connected"] = _watch_syn(raw, src, local[1],
                                       time.monotonic() + (delay_ms + wait_ms) / 1000 + 0.05)
    finally:
        raw.close()
        conn.close()
