"""Socket plumbing for TCP hole punching: shared-port sockets, TTL, listener filter, host IPs.

Every socket of one rendezvous binds the same local port with SO_REUSEADDR and
SO_REUSEPORT, so the listener, the STUN connection and the connecting sockets share
it (one NAT mapping, RFC 5382 section 4.1). IPv4 and IPv6: a socket's family is its
local address's (:func:`family_for`); the hop limit stands in for the TTL over IPv6.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
import termios

from stunturn_diag.sansio import bpf
from ..hostaddr import host_addresses
from ..rawsock import attach_filter
from stunturn_diag.sansio.netaddr import Address


#: most candidates one listener filter holds (jump offsets are 8 bits)
MAX_FILTERED = 60
#: the IPv6 program takes 10 instructions per source (its jumps reach 255 at most)
MAX_FILTERED6 = 24


#: TCP_REPAIR options (linux/tcp.h); setting them needs CAP_NET_ADMIN
_TCP_REPAIR, _TCP_REPAIR_QUEUE, _TCP_QUEUE_SEQ, _TCP_SEND_QUEUE = 19, 20, 21, 2


def family_for(ip: str) -> int:
    """AF_INET6 for an IPv6 literal (``::`` included), else AF_INET."""
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def shared_port_socket(local_ip: str, local_port: int, isn: int | None = None) -> socket.socket:
    """A non-blocking TCP socket bound to ``(local_ip, local_port)`` that shares the port.

    ``isn``: the initial send sequence number its SYN will carry (see :func:`pin_isn`).
    An IPv6 socket is IPv6-only (IPV6_V6ONLY): its port is shared with IPv6 sockets only.
    """
    family = family_for(local_ip)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if isn is not None:
            pin_isn(sock, isn)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((local_ip, local_port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def pin_isn(sock: socket.socket, isn: int) -> None:
    """Make the next connect() send its SYN with sequence number ``isn`` (Linux, root).

    In TCP_REPAIR mode a closed socket's send sequence can be set; leaving repair
    mode before connect() keeps it, and tcp_v4_connect (tcp_v6_connect likewise) only
    draws a fresh ISN (RFC 6528) when none is set. Raises PermissionError without CAP_NET_ADMIN.
    Leaving repair mode resets SO_REUSEADDR, so call this before setting options.
    """
    sock.setsockopt(socket.IPPROTO_TCP, _TCP_REPAIR, 1)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_REPAIR_QUEUE, _TCP_SEND_QUEUE)
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUEUE_SEQ, struct.pack("I", isn & 0xFFFFFFFF))
    finally:
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_REPAIR, 0)


def can_pin_isn() -> bool:
    """True when this process may use TCP_REPAIR (CAP_NET_ADMIN in its network namespace)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        pin_isn(sock, 1)
    except OSError:
        return False
    finally:
        sock.close()
    return True


#: tcpi_state values (include/net/tcp_states.h) and the TCP_INFO option
TCP_SYN_SENT = 2
TCP_SYN_RECV = 3
_TCP_INFO = 11


def tcp_state(sock: socket.socket) -> int | None:
    """The kernel's TCP state of ``sock`` (first byte of struct tcp_info), None if unknown."""
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 8)[0]
    except OSError:
        return None


def unacked(sock: socket.socket) -> int:
    """Bytes written to ``sock`` the peer has not acknowledged yet (SIOCOUTQ, tcp(7));
    0 where the kernel cannot tell."""
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4)
    except OSError:
        return 0
    return struct.unpack("i", raw)[0]


#: TCP_USER_TIMEOUT (linux/tcp.h, RFC 5482): unacknowledged data for this long ends it
_TCP_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", 18)


def keepalive_settings(interval: float, peer_timeout: float) -> dict[str, int]:
    """TCP keepalive (RFC 9293 section 3.8.4) matching the UDP channel's options.

    The first probe after ``interval`` seconds idle, then one every ``interval``;
    the peer counts as lost after ``peer_timeout`` without an answer: idle +
    count x interval ~= peer_timeout (whole seconds, at least 1). TCP_USER_TIMEOUT
    ends the connection as well when sent data stays unacknowledged that long.
    """
    idle = max(1, round(interval))
    intvl = max(1, round(interval))
    count = max(1, round((peer_timeout - idle) / intvl))
    return {"idle": idle, "interval": intvl, "count": count,
            "user_timeout_ms": max(1, int(peer_timeout * 1000))}


def configure_keepalive(sock: socket.socket, interval: float, peer_timeout: float) -> dict:
    """Turn on keepalive and lost-peer detection on a punched connection (Linux)."""
    cfg = keepalive_settings(interval, peer_timeout)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, cfg["idle"])
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, cfg["interval"])
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, cfg["count"])
    sock.setsockopt(socket.IPPROTO_TCP, _TCP_USER_TIMEOUT, cfg["user_timeout_ms"])
    return cfg


def _ttl_option(sock: socket.socket) -> tuple[int, int]:
    if sock.family == socket.AF_INET6:
        return socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS
    return socket.IPPROTO_IP, socket.IP_TTL


def get_ttl(sock: socket.socket) -> int:
    """IP_TTL, or over IPv6 the unicast hop limit (RFC 8200 section 3)."""
    return sock.getsockopt(*_ttl_option(sock))


def set_ttl(sock: socket.socket, ttl: int) -> None:
    """IP_TTL (ip(7)) or IPV6_UNICAST_HOPS (ipv6(7)) for the segments this socket sends
    from now on."""
    sock.setsockopt(*_ttl_option(sock), ttl)


def blackhole_program(sources: list[Address]) -> list[bytes]:
    """Classic BPF: drop segments from any of ``sources`` (ip, port), accept the rest
    (the shared builder :func:`stunturn_diag.sansio.bpf.blackhole_program`, packed)."""
    return [insn.pack() for insn in bpf.blackhole_program(sources)]


def attach_blackhole(listener: socket.socket, sources: list[Address]) -> bool:
    """Make ``listener`` silently drop segments from ``sources``; False if not possible.

    tcp_v4_rcv / tcp_v6_rcv run the socket filter before a listener answers, so a SYN
    from a candidate we punch toward (one that found no connecting socket of ours) is
    neither answered by a SYN-ACK from a new ISN (which our NAT's or firewall's
    conntrack would mark INVALID) nor by a RST (which would kill the peer's attempt):
    the peer's kernel simply retransmits it later. The program reads the listener's
    family's header (IPv4, or IPv6 for an ``AF_INET6`` listener); sources of the other
    family cannot reach it and are left out.
    """
    v6 = listener.family == socket.AF_INET6
    mine = [a for a in sources if _is_ipv4(a[0]) != v6][:MAX_FILTERED6 if v6 else MAX_FILTERED]
    if not mine:
        return True                       # nothing of this family to drop
    program = bpf.blackhole6_program(mine) if v6 else bpf.blackhole_program(mine)
    try:
        attach_filter(listener, program)
    except OSError:
        return False
    return True


def _is_ipv4(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).version == 4
    except ValueError:
        return False


def host_ipv4_addresses() -> list[str]:
    """IPv4 addresses of this host's interfaces that are up (loopback last)."""
    found: list[str] = []
    for entry in host_addresses():
        ip = entry.ip
        if entry.version == 4 and ip not in found:
            found.append(ip)
    return sorted(found, key=lambda ip: ipaddress.ip_address(ip).is_loopback)
