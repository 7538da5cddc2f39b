"""STUN service: UDP sockets and TCP listeners on every endpoint, one background thread.

The thread multiplexes everything with :mod:`selectors` (no gevent, so it works
whatever hub the HTTP server runs) and hands each message to the pure
:class:`~stunturn_server.sansio.stun_responder.StunResponder`.

UDP is read and answered in place: no queue of its own, so a datagram flood costs
at most the kernel's receive buffer; what overflows it is dropped by the kernel and
counted (``dropped_rx_overflow``, SO_RXQ_OVFL, learnt with the next datagram read).

UDP is answered only up to a per-source rate (a token bucket per IPv4 address /
IPv6 /64, ``StunLimits.udp_burst``/``udp_rate``): a spoofed flood cannot turn the
responder into a reflector; what is over the rate is dropped and counted
(``dropped_rate_limited``).

TCP follows RFC 8489 section 6.2.2: messages are framed back to back on the
stream by their own length field. A connection is closed when it sends bytes
that are not a STUN header or a malformed message, sends no complete message for
``idle_timeout`` (a trickle of bytes does not count: only a whole message resets
it), takes longer than ``message_timeout`` from a message's first byte to its
last, lives longer than ``max_lifetime``, sends more than ``max_bytes`` or does not
read its responses; at most ``max_per_source`` connections per source and
``max_connections`` in all are open at once (more are accepted and closed at
once, and counted: ``tcp_rejected_source``, ``tcp_rejected``).

``start_stun_service(config)`` binds everything before it returns (a clear
:class:`ConfigError` names the address:port it could not bind); port 0 picks
free ports, keeping RFC 5780's layout (the same two ports on both IPs). Bound to
a wildcard address (0.0.0.0 / ::, only without an alternate IP), each request's
destination address is learnt (IP_PKTINFO / IPV6_PKTINFO, getsockname for TCP)
so RESPONSE-ORIGIN is right and the reply leaves from that same address.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

from stunturn_diag.errors import ConfigError, StunDecodeError
from stunturn_diag.netio import lower_rto_min
from stunturn_diag.sansio.synwait import SYN_RTO_MIN
from stunturn_diag.sansio.netaddr import unmapped
from stunturn_diag.sansio.stun import HEADER_LENGTH, message_length

from ..config import ServerConfig, StunLimits, bind_error
from ..sansio.limits import TokenBucket, source_of
from ..sansio.stun_responder import MAX_REQUEST_BYTES, StunEndpoint, StunResponder

log = logging.getLogger("stunturn_server.stun")

#: Datagrams read per readiness event before the loop looks at other sockets.
_UDP_BURST = 64
#: Connections accepted per readiness event.
_ACCEPT_BURST = 16
#: Attempts to find free ports when the configuration asks for port 0.
_PORT_ATTEMPTS = 20
SERVICE_COUNTERS = ("udp_datagrams", "send_errors", "internal_errors", "tcp_connections",
                    "tcp_open", "tcp_rejected", "tcp_closed_idle", "tcp_closed_garbage",
                    "tcp_closed_limit", "tcp_closed_by_peer", "dropped_rx_overflow",
                    "tcp_rejected_source", "tcp_closed_slow", "dropped_rate_limited")


@dataclass
class _Conn:
    sock: socket.socket
    peer: tuple[str, int]
    role: str
    local: StunEndpoint | str
    opened: float
    last: float
    source: str = ""
    #: when the message now being received began (None between messages)
    partial_since: float | None = None
    inbuf: bytearray = field(default_factory=bytearray)
    outbuf: bytearray = field(default_factory=bytearray)
    received: int = 0


class StunService:
    """A running STUN responder. ``stop()`` is clean and idempotent; also a context manager.

    ``endpoints`` lists the bound endpoints (actual ports), primary first;
    ``stats`` is a snapshot of the counters (responder and socket level).
    """

    def __init__(self, endpoints: list[StunEndpoint], udp: dict[str, socket.socket],
                 tcp: dict[str, socket.socket], limits: StunLimits,
                 responder: StunResponder | None = None) -> None:
        self.endpoints = endpoints
        self.limits = limits
        self._responder = responder or StunResponder(endpoints)
        self._udp, self._tcp = udp, tcp
        #: role -> port of endpoints bound to 0.0.0.0 / :: (see _enable_pktinfo)
        self._wildcard = {ep.role: ep.port for ep in endpoints if _unspecified(ep.ip)}
        for role in self._wildcard:
            _enable_pktinfo(udp[role])
        #: per UDP socket: datagrams the kernel dropped because its receive queue was full
        self._rx_overflow = dict.fromkeys(udp, 0)
        for sock in udp.values():
            try:
                sock.setsockopt(socket.SOL_SOCKET, _SO_RXQ_OVFL, 1)
            except OSError:  # not Linux: such drops stay uncounted
                pass
        self._conns: dict[int, _Conn] = {}
        self._per_source: dict[str, int] = {}
        self._udp_bucket = TokenBucket(limits.udp_burst, limits.udp_rate)
        self._counters = dict.fromkeys(SERVICE_COUNTERS, 0)
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        for role, sock in udp.items():
            self._sel.register(sock, selectors.EVENT_READ, ("udp", role))
        for role, sock in tcp.items():
            self._sel.register(sock, selectors.EVENT_READ, ("listen", role))
        self._stop_lock = threading.Lock()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="stunturn-stun", daemon=True)
        self._thread.start()

    # -- public -----------------------------------------------------------------

    @property
    def stats(self) -> dict[str, int]:
        """Counters: requests, responses, errors_sent, dropped_*, tcp_*, send_errors..."""
        return {**self._responder.stats, **self._counters}

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and close every socket; safe to call more than once."""
        with self._stop_lock:
            first, self._stopping = not self._stopping, True
        if first:
            try:
                self._wake_w.send(b"x")
            except OSError:
                pass
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self) -> "StunService":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- the thread ---------------------------------------------------------------

    def _run(self) -> None:
        tick = min(1.0, self.limits.idle_timeout / 2, self.limits.message_timeout / 2)
        next_expiry = 0.0
        try:
            while not self._stopping:
                for key, mask in self._sel.select(timeout=tick):
                    kind, ref = key.data
                    try:
                        if kind == "udp":
                            self._on_udp(key.fileobj, ref)
                        elif kind == "listen":
                            self._on_accept(key.fileobj, ref)
                        elif kind == "conn":
                            self._on_conn(ref, mask)
                        else:
                            self._drain_wake()
                    except Exception:  # never let one message kill the loop
                        self._counters["internal_errors"] += 1
                        log.exception("STUN service: unexpected error handling %s", kind)
                        if kind == "conn":
                            self._close(ref, None)
                now = time.monotonic()
                if now >= next_expiry:  # once a tick, not after every burst of datagrams
                    self._expire(now)
                    next_expiry = now + tick
        finally:
            self._close_all()

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(64):
                pass
        except OSError:
            pass

    # -- UDP ----------------------------------------------------------------------

    def _on_udp(self, sock: socket.socket, role: str) -> None:
        for _ in range(_UDP_BURST):
            try:
                data, ancillary, _flags, source = sock.recvmsg(65535, _CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP errors reported on the socket
                log.debug("STUN UDP %s: recvmsg: %s", role, exc)
                continue
            self._counters["udp_datagrams"] += 1
            if not self._udp_bucket.take(_source_key(source[0]), time.monotonic()):
                self._counters["dropped_rate_limited"] += 1
                continue
            dropped = _rx_overflow(ancillary)
            if dropped is not None and dropped != self._rx_overflow[role]:
                self._rx_overflow[role] = dropped
                self._counters["dropped_rx_overflow"] = sum(self._rx_overflow.values())
            local: StunEndpoint | str = role
            if role in self._wildcard:  # which of our addresses it was sent to
                destination = _pktinfo_destination(ancillary)
                if destination:
                    local = StunEndpoint(destination, self._wildcard[role], role)
            outcome = self._responder.handle(data, (source[0], source[1]), local, "udp")
            for reply in outcome.replies:
                out = self._udp[reply.local.role]
                try:
                    if reply.local.role in self._wildcard and not _unspecified(reply.local.ip):
                        out.sendmsg([reply.data], [_pktinfo_source(out, reply.local.ip)], 0,
                                    _sockaddr(out, reply.destination))
                    else:
                        out.sendto(reply.data, _sockaddr(out, reply.destination))
                except OSError as exc:
                    self._counters["send_errors"] += 1
                    log.debug("STUN UDP send to %s failed: %s", reply.destination, exc)

    # -- TCP ----------------------------------------------------------------------

    def _on_accept(self, listener: socket.socket, role: str) -> None:
        for _ in range(_ACCEPT_BURST):
            try:
                sock, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE, ECONNABORTED...
                log.warning("STUN TCP accept on %s failed: %s", role, exc)
                return
            if len(self._conns) >= self.limits.max_connections:
                self._counters["tcp_rejected"] += 1
                sock.close()
                continue
            source = _source_key(peer[0])
            if self._per_source.get(source, 0) >= self.limits.max_per_source:
                self._counters["tcp_rejected_source"] += 1
                sock.close()
                continue
            sock.setblocking(False)
            lower_rto_min(sock, SYN_RTO_MIN)  # a lost answer is resent after 50 ms, not 200
            now = time.monotonic()
            local: StunEndpoint | str = role
            if role in self._wildcard:
                local = StunEndpoint(unmapped(sock.getsockname()[0]), self._wildcard[role], role)
            conn = _Conn(sock, (peer[0], peer[1]), role, local, now, now, source)
            self._conns[sock.fileno()] = conn
            self._per_source[source] = self._per_source.get(source, 0) + 1
            self._sel.register(sock, selectors.EVENT_READ, ("conn", conn))
            self._counters["tcp_connections"] += 1
            self._counters["tcp_open"] = len(self._conns)

    def _on_conn(self, conn: _Conn, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._flush(conn)
        if mask & selectors.EVENT_READ and conn.sock.fileno() in self._conns:
            try:
                chunk = conn.sock.recv(8192)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                chunk = b""
            if not chunk:
                self._close(conn, "tcp_closed_by_peer")
                return
            if conn.partial_since is None:
                conn.partial_since = time.monotonic()
            conn.received += len(chunk)
            if conn.received > self.limits.max_bytes:
                self._close(conn, "tcp_closed_limit")
                return
            conn.inbuf += chunk
            self._frames(conn)

    def _frames(self, conn: _Conn) -> None:
        """Cut complete messages off the stream (RFC 8489 section 6.2.2) and answer them."""
        if conn.inbuf and conn.inbuf[0] & 0xC0:  # RFC 8489 section 5: top two bits are zero
            self._responder.stats["dropped_non_stun"] += 1
            self._close(conn, "tcp_closed_garbage")
            return
        while len(conn.inbuf) >= HEADER_LENGTH:
            try:
                total = message_length(conn.inbuf)  # checks the header as looks_like_stun does
            except StunDecodeError:
                self._responder.stats["dropped_non_stun"] += 1
                self._close(conn, "tcp_closed_garbage")
                return
            if total > MAX_REQUEST_BYTES:
                self._responder.stats["dropped_oversize"] += 1
                self._close(conn, "tcp_closed_garbage")
                return
            if len(conn.inbuf) < total:
                return
            message = bytes(conn.inbuf[:total])
            del conn.inbuf[:total]
            conn.last = time.monotonic()  # only a whole message counts as activity
            conn.partial_since = conn.last if conn.inbuf else None
            outcome = self._responder.handle(message, conn.peer, conn.local, "tcp")
            for reply in outcome.replies:  # over TCP always on this connection
                conn.outbuf += reply.data
            if outcome.event in ("dropped_malformed", "dropped_non_stun"):
                self._close(conn, "tcp_closed_garbage")
                return
            if len(conn.outbuf) > self.limits.max_pending_out:
                self._close(conn, "tcp_closed_limit")
                return
            self._flush(conn)
            if conn.sock.fileno() not in self._conns:
                return

    def _flush(self, conn: _Conn) -> None:
        if conn.outbuf:
            try:
                sent = conn.sock.send(conn.outbuf)
                del conn.outbuf[:sent]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self._counters["send_errors"] += 1
                self._close(conn, "tcp_closed_by_peer")
                return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.outbuf else 0)
        self._sel.modify(conn.sock, events, ("conn", conn))

    def _expire(self, now: float) -> None:
        for conn in list(self._conns.values()):
            if conn.partial_since is not None and now - conn.partial_since > self.limits.message_timeout:
                self._close(conn, "tcp_closed_slow")
            elif (now - conn.last > self.limits.idle_timeout
                    or now - conn.opened > self.limits.max_lifetime):
                self._close(conn, "tcp_closed_idle")

    def _close(self, conn: _Conn, counter: str | None) -> None:
        fd = conn.sock.fileno()
        if fd < 0 or self._conns.get(fd) is not conn:
            return
        del self._conns[fd]
        left = self._per_source.get(conn.source, 0) - 1
        if left > 0:
            self._per_source[conn.source] = left
        else:
            self._per_source.pop(conn.source, None)
        if counter:
            self._counters[counter] += 1
        self._counters["tcp_open"] = len(self._conns)
        try:
            self._sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def _close_all(self) -> None:
        for conn in list(self._conns.values()):
            self._close(conn, None)
        for sock in [*self._udp.values(), *self._tcp.values(), self._wake_r, self._wake_w]:
            try:
                self._sel.unregister(sock)
            except (KeyError, ValueError):
                pass
            sock.close()
        self._sel.close()


# -- wildcard binds: learn and set the local address per datagram (IP_PKTINFO, RFC 3542) ---

_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux value; Python 3.11 lacks the name
#: Linux socket(7): each datagram carries the socket's count of receive-queue drops so far
_SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)
_CMSG_SPACE = socket.CMSG_SPACE(32) + socket.CMSG_SPACE(4)


def _rx_overflow(ancillary) -> int | None:
    """The kernel's drop count (SO_RXQ_OVFL) carried by a received datagram, if any."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == _SO_RXQ_OVFL and len(data) >= 4:
            return struct.unpack("@I", data[:4])[0]
    return None


def _source_key(ip: str) -> str:
    """What the per-source limits count (see :func:`stunturn_server.sansio.limits.source_of`)."""
    try:
        return source_of(ip.split("%", 1)[0])
    except ValueError:
        return ip


def _unspecified(ip: str) -> bool:
    return ipaddress.ip_address(ip).is_unspecified


def _enable_pktinfo(sock: socket.socket) -> None:
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)


def _pktinfo_destination(ancillary) -> str | None:
    """Destination address of a received datagram from its IP(V6)_PKTINFO control message."""
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IP and kind == _IP_PKTINFO and len(data) >= 12:
            return socket.inet_ntop(socket.AF_INET, data[8:12])  # in_pktinfo.ipi_addr
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(data) >= 16:
            return unmapped(socket.inet_ntop(socket.AF_INET6, data[:16]))  # in6_pktinfo.ipi6_addr
    return None


def _pktinfo_source(sock: socket.socket, ip: str) -> tuple[int, int, bytes]:
    """Control message making the kernel send from ``ip`` (in(6)_pktinfo source field)."""
    if sock.family == socket.AF_INET6:
        if ":" not in ip:
            ip = f"::ffff:{ip}"
        return (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO,
                struct.pack("@16sI", socket.inet_pton(socket.AF_INET6, ip), 0))
    return (socket.IPPROTO_IP, _IP_PKTINFO,
            struct.pack("@i4s4s", 0, socket.inet_pton(socket.AF_INET, ip), bytes(4)))


def _sockaddr(sock: socket.socket, destination: tuple[str, int]) -> tuple[str, int]:
    """Destination as the socket wants it (IPv4 via a dual-stack IPv6 socket: ::ffff:a.b.c.d)."""
    if sock.family == socket.AF_INET6 and ":" not in destination[0]:
        return (f"::ffff:{destination[0]}", destination[1])
    return destination


# -- binding -------------------------------------------------------------------

class _PortTaken(Exception):
    """An ephemeral port picked for one endpoint is taken on another: try again."""


def _bind(kind: int, ip: str, port: int, role: str) -> socket.socket:
    family = socket.AF_INET6 if ipaddress.ip_address(ip).version == 6 else socket.AF_INET
    sock = socket.socket(family, kind)
    what = "UDP" if kind == socket.SOCK_DGRAM else "TCP"
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((ip, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise bind_error(f"STUN responder ({what}, {role})", ip, port, exc, _STUN_BIND_HINTS) from None
    return sock


_STUN_BIND_HINTS = {
    errno.EADDRINUSE: "another program (or another STUN responder) uses this port; "
                      "choose other --stun-port/--alt-port values or stop that program",
    errno.EADDRNOTAVAIL: "this machine has no such address; use one of its own addresses "
                         "(for --alt-ip: a second address on one of its interfaces)",
    errno.EACCES: "ports below 1024 need root; choose a port >= 1024",
}


def _bind_layout(config: ServerConfig) -> tuple[list[StunEndpoint], dict, dict]:
    """Bind UDP + TCP on every endpoint; port 0 picks one port shared by both IPs and transports."""
    udp: dict[str, socket.socket] = {}
    tcp: dict[str, socket.socket] = {}
    #: P1 / P2 of RFC 5780 section 6.1 -> its port (the one bound, once port 0 has picked one)
    ports = {"primary": config.stun_port, "alt": config.alt_port}
    endpoints: list[StunEndpoint] = []
    try:
        for planned in config.stun_endpoints():
            which = "alt" if planned.role in ("alt-port", "alt-both") else "primary"
            role, ip, port = planned.role, planned.ip, ports[which]
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                try:
                    sock = _bind(kind, ip, port, role)
                except ConfigError as exc:
                    if planned.port == 0 and getattr(exc, "errno", None) == errno.EADDRINUSE:
                        raise _PortTaken() from None
                    raise
                (udp if kind == socket.SOCK_DGRAM else tcp)[role] = sock
                port = ports[which] = sock.getsockname()[1]
            endpoints.append(StunEndpoint(ip, port, role))
    except BaseException:
        for sock in [*udp.values(), *tcp.values()]:
            sock.close()
        raise
    return endpoints, udp, tcp


def _check(config: ServerConfig) -> None:
    if not config.alt_ip:
        return
    primary, alt = ipaddress.ip_address(config.stun_ip), ipaddress.ip_address(config.alt_ip)
    if primary.version != alt.version:
        raise ConfigError(f"the STUN address {primary} and the alternate IP {alt} are of "
                          "different IP versions", hint="use two IPv4 or two IPv6 addresses")
    if primary == alt:
        raise ConfigError(f"the alternate IP {alt} equals the STUN address",
                          hint="RFC 5780 needs two different IP addresses")
    if primary.is_unspecified or alt.is_unspecified:
        raise ConfigError("with an alternate IP, the STUN address must be a specific address, "
                          f"not {primary if primary.is_unspecified else alt}",
                          hint="responses must come from a known address (RFC 5780 section 6.1)")


def start_stun_service(config: ServerConfig) -> StunService:
    """Bind UDP and TCP on every endpoint of ``config`` and start answering (non-blocking),
    within ``config.stun_limits``.

    Raises :class:`ConfigError` naming the address:port it could not bind.
    """
    _check(config)
    for attempt in range(_PORT_ATTEMPTS):
        try:
            endpoints, udp, tcp = _bind_layout(config)
            break
        except _PortTaken:
            continue
    else:
        raise ConfigError(f"could not find free ports for the STUN responder on {config.stun_ip}"
                          f"{' and ' + config.alt_ip if config.alt_ip else ''} after "
                          f"{_PORT_ATTEMPTS} attempts", hint="give explicit --stun-port/--alt-port")
    try:
        service = StunService(endpoints, udp, tcp, config.stun_limits)
    except BaseException:
        for sock in [*udp.values(), *tcp.values()]:
            sock.close()
        raise
    log.info("STUN responder on %s (UDP and TCP)",
             ", ".join(f"{ep.role} {ep.ip}:{ep.port}" for ep in endpoints))
    return service
