"""UDP rendezvous runner: learn the mapping, keep it alive, punch, authenticate.

The socket that asks STUN for its server-reflexive address (RFC 8489 section 6)
is the very socket that punches, so the learned mapping is the one the peer aims
at. All decisions live in the pure :mod:`stunturn_diag.sansio.punch.engine` and :mod:`stunturn_diag.sansio.punch.handshake`; this module
only moves datagrams and reads the clock.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import select
import socket
import threading
import time
from typing import Callable

from stunturn_diag.sansio import stun
from ..errors import AuthenticationError, PunchError
from stunturn_diag.sansio.punch.handshake import Handshake, StartedPake
from stunturn_diag.sansio.punch.wire import FRAME_KINDS, Role, kind_of
from .channel import UdpChannel
from stunturn_diag.sansio.punch.engine import DEFAULT_PRIME_TTL, PRIME_GAP, DatagramSend, UdpPunchEngine
from .tcp_sockets import host_ipv4_addresses
from stunturn_diag.stun_requests import fresh_binding_request
from stunturn_diag.sansio.netaddr import Address

MAX_LOCAL_CANDIDATES = 8
#: after our side completed, wait this long for the peer's "verified" before handing over
CONFIRM_LINGER = 1.0
#: frames (sealed, not yet readable) kept from before our handshake completed
EARLY_FRAMES = 16
_HINTS = {
    "auth-failed": "both sides must use the same access key",
    "version-mismatch": "the punch handshake changed (v2: PAKE and encryption; v3: CPace)",
    "one-way": "the peer's NAT filters our packets; NAT profiles (the default probe, not "
               "--no-probe) may allow port prediction, else a relay (TURN) is needed",
    "timeout": "see the per-target attempts; with NAT profiles on both sides (the default "
               "probe, not --no-probe) the strategy can adapt, else a relay (TURN) is needed",
}


def interface_ipv4_addresses() -> list[str]:
    """IPv4 address of each interface (:func:`.tcp_sockets.host_ipv4_addresses`),
    loopback, link-local and unspecified excluded."""
    out: list[str] = []
    for ip in host_ipv4_addresses():
        addr = ipaddress.ip_address(ip)
        if not (addr.is_loopback or addr.is_link_local or addr.is_unspecified):
            out.append(ip)
    return out


def route_source_ip(remote: Address, family: int = socket.AF_INET) -> str | None:
    """The local IP the kernel would use toward ``remote`` (no packet is sent)."""
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        s.connect(remote)
        return s.getsockname()[0]
    except OSError:
        return None
    finally:
        s.close()


class UdpRendezvous:
    """One UDP socket from learning the mapping to the punched channel."""

    def __init__(self, local_ip: str = "0.0.0.0", local_port: int = 0, *,
                 transport=None) -> None:
        """``transport``: punch and hand over this socket-like datagram endpoint instead of
        a new UDP socket (``fileno``, ``setblocking``, ``sendto``, ``recvfrom``,
        ``getsockname``, ``close``; e.g. :class:`.relay_path.TurnTransport`, which carries
        the same handshake and channel through a TURN relay)."""
        family = socket.AF_INET6 if ":" in local_ip else socket.AF_INET
        self.family = family
        if transport is not None:
            self.sock = transport
        else:
            self.sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                self.sock.bind((local_ip, local_port))
            except OSError as exc:
                self.sock.close()
                raise PunchError(f"cannot bind UDP {local_ip}:{local_port}: {exc.strerror}",
                                 hint="pick another local port (--bind IP:PORT) or leave it 0",
                                 reason="bind-failed") from None
        self.mapped: Address | None = None
        self.stun_server: Address | None = None
        self._keepalive: threading.Thread | None = None
        self._keepalive_stop = threading.Event()
        self._extra: list[socket.socket] = []
        self._handed_over = False

    @property
    def local_address(self) -> Address:
        return self.sock.getsockname()[:2]

    # -- mapping ----------------------------------------------------------------
    def learn_mapping(self, stun_server: Address, timeout: float = 3.0, *,
                      on_first_send: Callable[[], None] | None = None) -> Address:
        """Server-reflexive address via a STUN Binding (retransmitted, RFC 8489 section 6.2.1).

        ``on_first_send`` is called once the first request left (the NAT's mapping exists
        from then on: the API orders the TCP binding after it)."""
        self.stun_server = (stun_server[0], int(stun_server[1]))
        deadline = time.monotonic() + timeout
        req = fresh_binding_request(software="stunturn-diag punch")
        wire = stun.encode(req)
        rto = 0.1
        next_send = time.monotonic()
        sent = 0
        while True:
            now = time.monotonic()
            if now >= deadline or sent > 12:
                raise PunchError(f"no STUN answer from {self.stun_server[0]}:{self.stun_server[1]} "
                                 f"within {timeout:g}s", hint="is the server's STUN responder "
                                 "reachable over UDP from here?", reason="stun-failed")
            if now >= next_send:
                try:
                    self.sock.sendto(wire, self.stun_server)
                except OSError as exc:
                    raise PunchError(f"cannot send to the STUN server: {exc.strerror}",
                                     reason="stun-failed") from None
                sent += 1
                if sent == 1 and on_first_send is not None:
                    on_first_send()
                next_send = now + rto
                rto = min(rto * 2, 1.0)
            ready, _, _ = select.select([self.sock], [], [], max(0.0, min(next_send, deadline) - now))
            if not ready:
                continue
            try:
                data, _src = self.sock.recvfrom(2048)
            except OSError:
                continue
            if not stun.looks_like_stun(data):
                continue
            try:
                msg = stun.decode(data)
            except Exception:
                continue
            if msg.transaction_id == req.transaction_id and msg.mapped_address:
                self.mapped = (msg.mapped_address[0], int(msg.mapped_address[1]))
                return self.mapped

    def start_keepalive(self, interval: float = 5.0, max_duration: float = 900.0) -> None:
        """Refresh the mapping with STUN Bindings until :meth:`punch` (bounded by time)."""
        if self.stun_server is None or self._keepalive is not None:
            return
        server, stop = self.stun_server, self._keepalive_stop

        def run() -> None:
            end = time.monotonic() + max_duration
            while not stop.wait(interval) and time.monotonic() < end:
                try:
                    self.sock.sendto(stun.encode(fresh_binding_request()), server)
                except OSError:
                    pass

        self._keepalive = threading.Thread(target=run, name="stunturn-udp-keepalive", daemon=True)
        self._keepalive.start()

    def _stop_keepalive(self) -> None:
        self._keepalive_stop.set()
        if self._keepalive is not None:
            self._keepalive.join(2.0)

    def local_candidates(self) -> list[Address]:
        """Host candidates (local IPs with our port) for peers on the same LAN."""
        ip, port = self.local_address
        ips: list[str] = []
        if ip not in ("0.0.0.0", "::"):
            ips.append(ip)
        else:
            src = route_source_ip(self.stun_server, self.family) if self.stun_server else None
            if src and ipaddress.ip_address(src).is_loopback:
                return [(src, port)]          # a loopback server: stay on loopback
            if src:
                ips.append(src)
            if self.family == socket.AF_INET:   # an IPv6 socket cannot reach IPv4 hosts
                ips += interface_ipv4_addresses()
        seen: list[Address] = []
        for i in ips:
            if (i, port) not in seen:
                seen.append((i, port))
        return seen[:MAX_LOCAL_CANDIDATES]

    # -- punching -----------------------------------------------------------------
    def _sock_for(self, index: int) -> socket.socket:
        return self.sock if index == 0 else self._extra[index - 1]

    def _send(self, item: DatagramSend, errors: dict) -> None:
        sock = self._sock_for(item.sock)
        level, option = ((socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS)
                         if self.family == socket.AF_INET6 else (socket.IPPROTO_IP, socket.IP_TTL))
        try:
            if item.ttl:
                sock.setsockopt(level, option, item.ttl)
            sock.sendto(item.data, item.dst)
        except OSError as exc:
            key = f"{item.dst[0]}:{item.dst[1]}"
            errors[key] = errno.errorcode.get(exc.errno or 0, str(exc))
        finally:
            if item.ttl:
                sock.setsockopt(level, option, -1 if level == socket.IPPROTO_IPV6 else 64)

    def punch(self, peer_candidates: list[Address], *, role: Role | str, deadline: float,
              prime_ttl: int | None = None, strategy: str = "simultaneous", key: str | bytes = "",
              match_id: str = "", prime_targets: list[Address] | None = None,
              spray: list[Address] | None = None, extra_sockets: int = 0, hold: float = 0.0,
              keepalive_interval: float = 2.0, peer_timeout: float = 10.0,
              pake: StartedPake | None = None, cancel: threading.Event | None = None,
              require_confirmation: bool = False, gap: float = PRIME_GAP) -> UdpChannel:
        """Punch toward ``peer_candidates`` until authenticated or ``deadline`` (monotonic).

        Returns a :class:`UdpChannel` bound to the address the peer's proof came from.
        Raises :class:`PunchError` with ``reason`` and per-target ``attempts``.
        ``prime_ttl``: as for :meth:`TcpRendezvous.punch`, ``None`` means
        :data:`~.engine.DEFAULT_PRIME_TTL` and 0 sends no priming packets.
        ``pake``: our CPace scalar and PRS, prepared before the match
        (:func:`stunturn_diag.sansio.punch.handshake.start_pake`).
        ``gap``: from our prime to our first full-TTL HELLO
        (:func:`stunturn_diag.sansio.punch.decision.priming_gap`).
        ``cancel``: set by the other family's win (:mod:`.family_race`); the punch then
        stops with reason ``cancelled``.
        ``require_confirmation`` (a relay to fall back to): once complete, hand over only
        when the peer confirmed (its verified PROOF) or already sends channel frames,
        else fail ``one-way`` after :data:`CONFIRM_LINGER`: the peer never completed,
        so it gives up at its deadline and takes the relay; we must take it too.
        """
        if prime_ttl is None:
            prime_ttl = DEFAULT_PRIME_TTL
        self._stop_keepalive()
        for _ in range(extra_sockets):
            s = socket.socket(self.family, socket.SOCK_DGRAM)
            s.bind((self.local_address[0], 0))
            self._extra.append(s)
        hs = Handshake(key, match_id, Role(role), entropy=os.urandom, started=pake)
        engine = UdpPunchEngine(hs, list(peer_candidates), start=time.monotonic(), deadline=deadline,
                                prime_ttl=prime_ttl, prime_targets=list(peer_candidates
                                                                    if prime_targets is None
                                                                    else prime_targets),
                                spray=list(spray or []), extra_sockets=extra_sockets, hold=hold,
                                gap=gap)
        socks = [self.sock, *self._extra]
        for s in socks:
            s.setblocking(False)
        errors: dict = {}
        pending: list = []
        confirm_until: float | None = None
        peer_on_path = False       # the complete peer's channel frames reached us
        while True:
            now = time.monotonic()
            if cancel is not None and cancel.is_set():
                raise PunchError("UDP punch cancelled: the other IP family won",
                                 reason="cancelled")
            for item in engine.poll(now):
                self._send(item, errors)
            if engine.complete:
                if confirm_until is None:
                    confirm_until = min(now + CONFIRM_LINGER, deadline)
                if engine.confirmed or peer_on_path or any(src == engine.peer for _, src in pending):
                    break       # (frames from the peer that came before we completed count too)
                if now >= confirm_until:
                    if not require_confirmation:
                        break
                    raise PunchError(
                        f"UDP punch failed ({strategy}): we verified the peer but it never "
                        f"confirmed us within {CONFIRM_LINGER:g} s (our last messages did "
                        "not get through)", hint=_HINTS["one-way"], reason="one-way",
                        attempts=engine.failure()[2])
            elif engine.expired(now):
                reason, message, attempts = engine.failure()
                for a in attempts:
                    if a["target"] in errors:
                        a["send_error"] = errors[a["target"]]
                cls = AuthenticationError if reason in ("auth-failed", "version-mismatch") \
                    else PunchError
                raise cls(f"UDP punch failed ({strategy}): {message}", hint=_HINTS.get(reason),
                          reason=reason, attempts=attempts)
            wake = engine.next_wakeup()
            if confirm_until is not None:
                wake = min(wake, confirm_until)
            if cancel is not None:
                wake = min(wake, now + 0.02)
            ready, _, _ = select.select(socks, [], [], max(0.0, min(wake, deadline) - now))
            for s in ready:
                idx = socks.index(s)
                for _ in range(64):
                    try:
                        data, src = s.recvfrom(65535)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        continue
                    if kind_of(data) in FRAME_KINDS:
                        # the peer already sends data (or, racing families, its
                        # nomination: it may complete before us); the channel
                        # authenticates them, so a few early ones are kept too
                        if engine.complete or len(pending) < EARLY_FRAMES:
                            pending.append((data, src[:2]))
                        if engine.complete:
                            peer_on_path = peer_on_path or src[:2] == engine.peer
                        continue
                    for item in engine.receive(data, src[:2], time.monotonic(), sock=idx):
                        self._send(item, errors)
        chosen = self._sock_for(engine.peer_sock)
        extras = [s for s in socks if s is not chosen]
        for s in extras:
            s.close()
        if chosen is not self.sock:
            self.sock.close()
        self._extra = []
        self._handed_over = True
        channel = UdpChannel(chosen, engine.peer, hs, keepalive_interval=keepalive_interval,
                             peer_timeout=peer_timeout, pending=pending)
        if channel.local_address[0] in ("0.0.0.0", "::"):
            src = route_source_ip(engine.peer, self.family)
            if src:
                channel.local_address = (src, channel.local_address[1])
        return channel

    def close(self) -> None:
        self._stop_keepalive()
        for s in self._extra:
            s.close()
        self._extra = []
        if not self._handed_over:
            self.sock.close()

    def __enter__(self) -> "UdpRendezvous":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
