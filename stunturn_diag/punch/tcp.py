"""TCP hole punching: simultaneous open from the mapped port (RFC 9293 section 3.5, RFC 5382).

Usage (the punch API does this)::

    rv = TcpRendezvous()                          # binds one local port
    srflx = rv.learn_mapping(stun_server, 3.0)    # STUN Binding over TCP, kept open
    lan = rv.local_candidates()
    ...exchange srflx + lan with the peer through the signaling server...
    sock = rv.punch(peer_candidates, role="initiator", deadline=time.monotonic() + 10)
    rv.close()

Every socket binds the same local port (SO_REUSEADDR + SO_REUSEPORT): the STUN
connection, a listener and one connecting socket per peer candidate. An
endpoint-independent NAT (RFC 5382 REQ-1) therefore gives the peer-facing
connections the mapping STUN reported. ``start_keepalive()`` refreshes the Binding
on the kept STUN connection while the signaling wait goes on.

What Linux (6.x) conntrack NAT does, found with tcpdump in the lab
(netns_tests/test_punch_tcp_matrix.py):

a. An ICMP Time Exceeded for a SYN is a hard error in SYN-SENT (``EHOSTUNREACH``):
   a low-TTL SYN's socket dies about one router RTT later; its TTL cannot just be
   raised afterwards (unless no ICMP comes back).
b. A NAT without an inbound firewall (plain masquerade) answers an unsolicited SYN
   with a RST from its own stack (RFC 5382 section 7.1 allows RST or drop). The
   RST kills the sender's socket and puts its NAT's entry in CLOSE.
c. After our SYN opened our entry, a SYN-ACK with a *different* ISN (a listener
   answering the peer) is INVALID at our NAT: it leaves untranslated, with the
   private source. So is a SYN from a new socket with a different ISN once the
   peer's SYN has passed our NAT (state SYN_SENT2) - unless the new ISN is within
   the window the first SYN opened (64240 ISN ticks of 64 ns, about 4 ms). While
   the entry is still SYN_SENT a *later* ISN re-initialises it. Even inside that
   window, a listener's SYN-ACK (its own ISN) completes the handshake but the data
   that side sends next leaves its NAT untranslated (INVALID): a one-way connection
   (seen with kernel ISNs, where nothing else answers a SYN that finds no socket).
d. If the final ACK of a simultaneous open is lost after the peer's NAT tracked
   it, that entry is ESTABLISHED and the peer's retransmitted SYN-ACK is INVALID
   (untranslated): only a data segment completes the peer's SYN-RECEIVED socket.
e. If our SYN-ACK of a simultaneous open is lost before the peer's NAT (seen on
   the lab's lossy link), our socket stays SYN-RECEIVED and our NAT's entry
   SYN_RECV. The peer's kernel retransmits its SYN (1 s) before ours retransmits
   the SYN-ACK, and a reply-direction SYN is INVALID in SYN_RECV: a plain
   masquerade RSTs it (b). Every later round of the peer meets the same entry
   (RST), while our socket neither fails nor completes: the punch hangs until the
   deadline (the entry lives 60 s).

Hence the sequence, per candidate, on both peers:

1. *Prime*: a socket with ``IP_TTL = prime_ttl`` connects (non-blocking). Its SYN
   opens our mapping and conntrack entry and expires in the core network before
   the peer's NAT, so that NAT neither RSTs it (b) nor sees it. ICMP then kills
   the socket (a), as expected.
2. *Pinned ISN*: with CAP_NET_ADMIN the prime and every later connect toward a
   candidate, in every round, carry one ISN we choose (TCP_REPAIR + TCP_QUEUE_SEQ
   before connect(); ``tcp_v4_connect`` keeps a preset send sequence), so whatever
   conntrack recorded, our later SYN and SYN-ACK are retransmissions to it (c).
3. *Connect*: once the prime's ICMP Time Exceeded has come back (it passed our
   NAT) and at least :data:`SETTLE` (12 ms, the two peers' start skew: the server
   releases both in the same instant) after the prime, a socket with the same ISN
   connects at full TTL. The peer's SYN
   passes our NAT (RFC 5382 section 4.3: it admits the endpoint we sent to) and
   lands in that SYN-SENT socket: simultaneous open (RFC 9293 section 3.5,
   figure 8). A SYN still unanswered after 200 ms (then 400, 800 ms) is resent
   from a fresh socket with the same ISN, sooner than the kernel's 1 s, 2 s, ...
   (``tcp_machine.SYN_RESEND_FIRST``: on a lossy path those used the deadline, and
   the first data after a retransmitted SYN waits a 3 s RTO).
   Without CAP_NET_ADMIN (kernel ISNs, RFC 6528: every socket draws its own) the
   priming socket is kept: its TTL is raised as soon as its SYN left, and it
   waits in SYN-SENT, so the peer's SYN finds the very socket whose SYN our NAT
   saw last (c); one that the ICMP kills is replaced by a new prime at once (the
   core router rate-limits ICMP, so after a few a prime lives). At :data:`SETTLE`
   the prime, still in SYN-SENT, is aborted and a fresh socket sends the full-TTL
   SYN (``tcp_machine.PRIME_EVERY``).
4. *Black-hole listener*: a SYN from a candidate that finds none of our
   connecting sockets (the peer's SYN came first) must be neither answered (c)
   nor RST (b): a classic-BPF socket filter on the listener drops segments from
   the candidates silently, and the peer's kernel retransmits into our socket
   later. SYNs from any *other* address are accepted: that is how a peer behind a
   symmetric NAT (a port other than its STUN mapping) reaches us through an
   endpoint- or address-dependent filter. Where the kernel refuses the filter
   (unprivileged on this kernel) the listener stays unfiltered; with kernel
   ISNs the kept priming socket (3) is what the peer's SYN finds instead.
5. *Retry*: a full-TTL SYN answered by RST (the peer's NAT had no entry yet) or
   ICMP unreachable starts a new round (same pinned ISN: an ICMP error, unlike a
   RST, leaves our NAT's entry and its window as they were): prime again at
   once, connect after the back-off (``tcp_machine.retry_delay``: 20 ms for three
   rounds, then doubling up to :data:`RETRY_INTERVAL`); the receiver shifts its
   rounds by a zig-zag of guard-sized steps so that two peers a constant skew apart
   stop meeting each other's RST; at most :data:`MAX_CONNECTS` per candidate, never
   past the deadline.
6. *Candidates* (LAN addresses for peers behind the same NAT, the server-reflexive
   address, predicted ports) are punched in parallel, public ones first in the
   caller's order, private ones last: every prime takes a port of a sequential
   NAT, and two such NATs' predicted windows meet only when both sides prime them
   in the same order with nothing in between.
7. *Nomination*: the initiator sends 8 bytes NOMINATE on every connection that
   comes up, the receiver 8 bytes READY (which also unsticks d); the receiver
   answers NOMINATE_ACK on the first connection that delivers NOMINATE, and both
   return exactly that one (the controlling side picks, as in ICE, RFC 8445
   section 8); all others are closed. The initiator has then heard both ways; the
   receiver returns it once the initiator acknowledged (TCP) every byte it sent
   (NOMINATE proves only the way in: see c). A connection to or from a candidate
   not nominated within ``tcp_machine.NOMINATION_WAIT`` is aborted on either side
   and that candidate punched anew.
8. *Stall*: a full-TTL socket still SYN-RECEIVED :data:`SYN_RECV_STALL` (1.5 s)
   after it was first seen so (its state is read every 0.25 s) is aborted: its
   RST puts our NAT's entry in CLOSE, from which our next SYN opens it afresh
   (e), and the candidate is punched anew as after a refused round (5).

``prime_ttl``: the TTL must expire after our own NAT and before the peer's. With
host -> site NAT -> core router -> peer NAT (the lab) that is 2
(:data:`DEFAULT_PRIME_TTL`, also what ``None`` means); add one per extra NAT
level (carrier-grade NAT, RFC 6888) or router before the core; 0 sends no prime.
On one LAN a TTL-2 prime reaches the peer directly, which is harmless.

``strategy="listen-connect"`` (for a receiver that needs no priming: no NAT or
endpoint-independent filtering): the *receiver* only listens and accepts, the
*initiator* connects at full TTL, retrying refused SYNs. Any other strategy name
of :mod:`stunturn_diag.sansio.punch.decision` ("simultaneous", "lan", "predict", ...)
runs the simultaneous open above over the given candidates.

IPv4 or IPv6, the local address's family (``local_ip="::"``: IPv6, the SYNs' hop
limit stands in for the TTL); the STUN server and the peer's candidates must be of
the same family. Failures raise :class:`~stunturn_diag.errors.PunchError` whose
``reason`` names the cause: ``refused`` (RSTs: the peer's NAT had no mapping
toward us), ``timeout`` (SYNs silently dropped: the mappings never met),
``unreachable`` (ICMP unreachable only), ``nomination-failed``,
``no-candidates``; ``attempts`` has one entry per candidate.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
import threading

from ..errors import ConfigError, PunchError
from stunturn_diag.sansio.punch.engine import DEFAULT_PRIME_TTL  # the priming SYN dies at the first router after our NAT
from stunturn_diag.sansio.punch.tcp_machine import (MAX_CONNECTS, RETRY_INTERVAL, SETTLE,
                                                    STRATEGY_LISTEN, STRATEGY_SIMULTANEOUS,
                                                    SYN_RECV_STALL)
from stunturn_diag.sansio.punch.wire import Role
from .tcp_runner import TcpPunchRunner
from ..hostaddr import host_addresses, usable
from .tcp_sockets import can_pin_isn, family_for, host_ipv4_addresses, shared_port_socket
from .tcp_stun import tcp_binding_resending, tcp_refresh
from stunturn_diag.sansio.netaddr import Address


#: seconds between Binding refreshes on the kept STUN connection (the server closes
#: TCP clients idle for 30 s) and the most refreshes one rendezvous sends
KEEPALIVE_INTERVAL = 10.0
KEEPALIVE_MAX = 60
#: most local candidates offered (the signaling API takes up to 8)
MAX_LOCAL_CANDIDATES = 8
#: private / shared / link-local space (RFC 1918, RFC 6598, RFC 3927): such candidates
#: are primed after the public ones, so a sequential NAT hands the public (predicted)
#: candidates its next ports in the caller's order
_PRIVATE = [ipaddress.ip_network(n) for n in
            ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
             "169.254.0.0/16")]

__all__ = ["TcpRendezvous", "DEFAULT_PRIME_TTL", "SETTLE", "RETRY_INTERVAL", "MAX_CONNECTS",
           "STRATEGY_SIMULTANEOUS", "STRATEGY_LISTEN", "SYN_RECV_STALL"]


def _ip(ip: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        raise ConfigError(f"{what} must be an IP address, got {ip!r}") from None


def _resolve(host: str, version: int) -> str:
    """An address of IP ``version`` for ``host`` (a literal or a name); PunchError if
    there is none."""
    try:
        if ipaddress.ip_address(host).version == version:
            return host
        raise PunchError(f"the STUN server {host} is not IPv{version}, the family of this "
                         "TCP socket", reason="stun-failed")
    except ValueError:
        pass
    family = socket.AF_INET6 if version == 6 else socket.AF_INET
    try:
        infos = socket.getaddrinfo(host, None, family, socket.SOCK_STREAM)
    except OSError as exc:
        raise PunchError(f"cannot resolve the STUN server name {host!r} to IPv{version}: {exc}",
                         reason="stun-failed") from None
    return infos[0][4][0]


class TcpRendezvous:
    """One local TCP port: learn its mapping, then punch a connection to the peer."""

    def __init__(self, local_ip: str = "0.0.0.0", local_port: int = 0) -> None:
        local_ip = _ip(local_ip, "local_ip")
        if not isinstance(local_port, int) or not 0 <= local_port <= 65535:
            raise ConfigError(f"local_port must be 0..65535, got {local_port!r}")
        try:
            self._listener = shared_port_socket(local_ip, local_port)
        except OSError as exc:
            raise PunchError(f"cannot bind TCP {local_ip}:{local_port}: {exc.strerror}",
                             hint="pick another local port (--bind IP:PORT) or leave it 0",
                             reason="bind-failed") from None
        self.local_ip = local_ip
        self.version = 6 if family_for(local_ip) == socket.AF_INET6 else 4
        self.local_port: int = self._listener.getsockname()[1]
        #: the kernel chose the port (not the user): learn_mapping may move to a new one
        self._port_ours = local_port == 0
        self.mapped: Address | None = None
        self._stun: socket.socket | None = None
        self._stun_server: Address | None = None
        self._punched = False
        self._keepalive: threading.Thread | None = None
        self._stop = threading.Event()
        #: why the keepalive stopped early (None while fine)
        self.keepalive_error: str | None = None

    # -- before signaling ----------------------------------------------------

    def learn_mapping(self, stun_server: tuple[str, int], timeout: float) -> tuple[str, int]:
        """STUN Binding over TCP from our port; the connection stays open (holds the mapping).
        With CAP_NET_ADMIN a lost SYN is resent (same ISN) after 200 ms, doubling, not
        the kernel's 1 s (:func:`~.tcp_stun.tcp_binding_resending`). When the kernel
        chose our port and no SYN-ACK came through on it within half of ``timeout``, the
        rest goes to a new local port, which becomes ours (``local_port``)."""
        self._check_open()
        host = _resolve(str(stun_server[0]), self.version)
        self._stop_keepalive()
        if self._stun is not None:
            self._stun.close()
            self._stun = None
        server = (host, int(stun_server[1]))
        sock, self.mapped = tcp_binding_resending(
            self._port_sockets, server, timeout,
            secrets.randbits(32) | 1 if can_pin_isn() else None,
            new_port=self._new_port if self._port_ours else None)
        self._stun, self._stun_server = sock, server
        return self.mapped

    def _port_sockets(self, isn: int | None) -> socket.socket:
        return shared_port_socket(self.local_ip, self.local_port, isn=isn)

    def _new_port(self):
        """Move to a new local port of the kernel's choosing (a new 4-tuple toward the STUN
        server); its socket maker."""
        listener = shared_port_socket(self.local_ip, 0)
        self._listener.close()
        self._listener, self.local_port = listener, listener.getsockname()[1]
        return self._port_sockets

    def start_keepalive(self, interval: float = KEEPALIVE_INTERVAL) -> None:
        """Refresh the Binding on the kept STUN connection every ``interval`` seconds.

        Keeps the connection (and so the NAT mapping) busy while the signaling wait
        goes on; at most :data:`KEEPALIVE_MAX` refreshes, stopped by :meth:`punch`
        and :meth:`close`. A failure ends it quietly (``keepalive_error``).
        """
        if self._stun is None or self._keepalive is not None:
            return
        self._stop.clear()
        self._keepalive = threading.Thread(target=self._refresh_loop, args=(interval,),
                                           name="tcp-stun-keepalive", daemon=True)
        self._keepalive.start()

    def _refresh_loop(self, interval: float) -> None:
        sock, server = self._stun, self._stun_server
        for _ in range(KEEPALIVE_MAX):
            if self._stop.wait(interval) or sock is None or server is None:
                return
            try:
                mapped = tcp_refresh(sock, server, min(interval, 5.0))
            except PunchError as exc:
                self.keepalive_error = exc.message
                return
            if mapped != self.mapped:
                self.keepalive_error = (f"the mapping changed from {self.mapped} to {mapped}")
                return

    def _stop_keepalive(self, wait: bool = True) -> None:
        """Stop refreshing; ``wait`` also wakes an in-flight refresh and joins the thread."""
        thread, self._keepalive = self._keepalive, None
        if thread is None:
            return
        self._stop.set()
        if wait:
            if self._stun is not None:
                try:
                    self._stun.shutdown(socket.SHUT_RDWR)  # wakes a blocked recv
                except OSError:
                    pass
            thread.join(timeout=2.0)

    def local_candidates(self) -> list[tuple[str, int]]:
        """Host addresses with our port (for a peer on the same LAN), best first."""
        self._check_open()
        if self.local_ip not in ("0.0.0.0", "::"):
            return [(self.local_ip, self.local_port)]
        ips: list[str] = []
        if self._stun is not None:
            try:
                ips.append(self._stun.getsockname()[0])  # the interface toward the server
            except OSError:
                pass
        for ip in self._host_ips():
            if ip not in ips and not ipaddress.ip_address(ip).is_loopback:
                ips.append(ip)
        return [(ip, self.local_port) for ip in ips[:MAX_LOCAL_CANDIDATES]]

    # -- after signaling -----------------------------------------------------

    def punch(self, peer_candidates: list[tuple[str, int]], *, role: Role | str, deadline: float,
              prime_ttl: int | None = None, strategy: str = STRATEGY_SIMULTANEOUS,
              max_connects: int = MAX_CONNECTS,
              cancel: threading.Event | None = None) -> socket.socket:
        """Connected TCP socket to the peer (not yet authenticated), or PunchError.

        ``deadline`` is a ``time.monotonic()`` value. ``prime_ttl=None`` means
        :data:`DEFAULT_PRIME_TTL`; pass 0 to send no priming SYN. One punch per
        rendezvous; the listener is closed when it returns. ``max_connects``:
        full-TTL rounds per candidate (at most :data:`MAX_CONNECTS`). ``cancel``: stops
        the punch (reason ``cancelled``) once set.
        """
        self._check_open()
        try:
            role = Role(role)
        except ValueError:
            raise ConfigError(f"role must be 'initiator' or 'receiver', got {role!r}") from None
        if prime_ttl is None:
            prime_ttl = DEFAULT_PRIME_TTL
        if not isinstance(prime_ttl, int) or not 0 <= prime_ttl <= 255:
            raise ConfigError(f"prime_ttl must be 0..255, got {prime_ttl!r}")
        if self._punched:
            raise ConfigError("this TcpRendezvous already punched; create a new one")
        candidates, skipped = self._usable(peer_candidates)
        if not candidates and strategy != STRATEGY_LISTEN:
            raise PunchError("no usable peer address to punch toward", reason="no-candidates",
                             hint=f"the peer must send IPv{self.version} srflx/local addresses",
                             attempts=skipped)
        self._punched = True
        self._stop_keepalive(wait=False)  # the punch does not touch the STUN socket
        loop = TcpPunchRunner((self.local_ip, self.local_port), self._listener, candidates,
                              role=role, deadline=deadline, prime_ttl=prime_ttl or None,
                              strategy=STRATEGY_LISTEN if strategy == STRATEGY_LISTEN
                              else STRATEGY_SIMULTANEOUS, label=str(strategy),
                              max_connects=max_connects, cancel=cancel)
        try:
            return loop.run()
        except PunchError as exc:
            exc.attempts = exc.attempts + skipped
            raise
        finally:
            self._listener.close()

    def _host_ips(self) -> list[str]:
        """This host's addresses of our family (IPv6: those a peer could reach,
        :func:`stunturn_diag.hostaddr.usable`)."""
        if self.version == 6:
            return usable(host_addresses(), 6)
        return host_ipv4_addresses()

    def _usable(self, peer_candidates: list[tuple[str, int]]) -> tuple[list[Address], list[dict]]:
        own_ips = set(self._host_ips()) | {self.local_ip}
        usable: list[Address] = []
        skipped: list[dict] = []
        for cand in peer_candidates:
            try:
                ip, port = str(ipaddress.ip_address(cand[0])), int(cand[1])
            except (ValueError, TypeError, IndexError):
                skipped.append({"candidate": repr(cand), "strategy": "-",
                                "error": "not an (ip, port) pair"})
                continue
            text = f"{ip}:{port}"
            if ipaddress.ip_address(ip).version != self.version or not 0 < port < 65536:
                skipped.append({"candidate": text, "strategy": "-",
                                "error": f"not an IPv{self.version} address with a port 1..65535"})
            elif port == self.local_port and (ip in own_ips or ip in ("0.0.0.0", "::")
                                              or ipaddress.ip_address(ip).is_loopback):
                skipped.append({"candidate": text, "strategy": "-",
                                "error": "our own address (TCP would connect to itself)"})
            elif (ip, port) not in usable:
                usable.append((ip, port))
        usable.sort(key=lambda a: any(ipaddress.ip_address(a[0]) in n for n in _PRIVATE))
        return usable, skipped

    # -- lifetime ------------------------------------------------------------

    def _check_open(self) -> None:
        if self._listener is None:
            raise ConfigError("this TcpRendezvous is closed")

    def close(self) -> None:
        """Close the STUN connection and the listener (a returned punched socket stays open)."""
        self._stop_keepalive()
        if self._stun is not None:
            self._stun.close()
            self._stun = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None  # type: ignore[assignment]

    def __enter__(self) -> "TcpRendezvous":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
