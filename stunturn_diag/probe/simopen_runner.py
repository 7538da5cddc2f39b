"""TCP simultaneous open through our NAT (RFC 5382 section 4.2, REQ-2): a SYN crafted with
Scapy, the server's SYN watched by our own BPF-filtered raw socket (root).

A SYN leaves with a TTL that passes our NAT but dies at the next router. The kernel
cannot send it: its own connect() aborts when the ICMP time-exceeded comes back, so
Scapy crafts it (``IP(ttl=...)/TCP(flags="S")``, sent on an ``IPPROTO_RAW`` socket). Then
the server's SYN comes in from the endpoint we addressed (``/v1/probe/tcp-simopen``).
Simultaneous open works through this NAT when that SYN reaches us: a raw TCP socket with
our classic-BPF filter (:func:`stunturn_diag.sansio.bpf.tcp_syn_program`: SYNs to our port;
no libpcap needed) catches it and the source is checked on arrival; the handshake itself
is not needed (our kernel would answer with its own sequence number, which conntrack
rejects).

Over IPv6 (issue 14) the SYN is no Scapy packet: an ``AF_INET6`` raw TCP socket sends a
segment built here (:func:`stunturn_diag.sansio.bpf.tcp6_syn_segment`) with the hop limit
set (``IPV6_UNICAST_HOPS``), and an ``AF_INET6`` raw TCP socket with
:func:`~stunturn_diag.sansio.bpf.tcp6_syn_program` watches (IPv6 raw sockets read from the
TCP header on). The hop limit is the server's hop count less one, as over IPv4 (here from
:func:`stunturn_diag.probe.layers.tcp_server_hop`): it dies one hop past our firewall/NAT66.

The server's SYN crosses our NAT only when ours left first: a round counts as a "no" only
when our SYN left less than ``delay_ms`` after we asked (``syn_sent_ms``, in the evidence);
a round that lost that race (a loaded host) is run again with a longer delay, at most
three rounds (:mod:`stunturn_diag.sansio.probe.simopen`), and a last one still too late
is the test's ``error``, never a ``false``.

A part that cannot work (Scapy missing or broken, a raw socket refused) is known at once
and recorded as the test's ``error``: the probe then reports it as failed (``partial``),
never as a silent null.

Cost, measured on the 2-core test machine: importing Scapy's IP/TCP layers
(``scapy.layers.inet``) takes ~0.2 s of CPU (``from scapy.all import ...`` takes 0.8 s).
:func:`preload` starts that import in a background thread when the probe begins, so it
overlaps the UDP tests instead of adding to them. Opening the watch costs microseconds.
"""

from __future__ import annotations

import secrets
import threading
import time

from ..errors import SignalingError, StunDecodeError
from ..rawsock import SynWatch, ip_sender, tcp6_sender
from stunturn_diag.sansio.bpf import tcp6_syn_segment
from stunturn_diag.sansio.netaddr import Address
from stunturn_diag.sansio.probe.endpoints import Endpoints
from stunturn_diag.sansio.probe.evidence import TcpEvidence
from stunturn_diag.sansio.probe.simopen import (MAX_ROUNDS, first_delay_ms, lost_race, next_delay_ms,
                                                race_error, wait_ms)
from stunturn_diag.sansio.synwait import syn_rto
from stunturn_diag.probe.tcp_sockets import SAME_PORT_SYNS, free_port, stun_tcp_from

_scapy: dict = {}
_loaded = threading.Event()
_lock = threading.Lock()
_started = False
#: seconds to wait for the background import before calling Scapy unusable
IMPORT_TIMEOUT = 10.0


def _load() -> None:
    try:
        from scapy.layers.inet import IP, TCP
        _scapy.update(IP=IP, TCP=TCP)
    except Exception as exc:  # ImportError, or Scapy failing to read this host's config
        _scapy["error"] = f"Scapy is not usable here ({type(exc).__name__}: {exc}); pip install scapy"
    finally:
        _loaded.set()


def preload() -> None:
    """Start importing the Scapy layers in the background (idempotent)."""
    global _started
    with _lock:
        if _started:
            return
        _started = True
    threading.Thread(target=_load, name="probe-scapy-import", daemon=True).start()


def scapy_parts(timeout: float = IMPORT_TIMEOUT) -> dict:
    """The Scapy classes (waits for :func:`preload`); ``{"error": why}`` when unusable.
    A failed import sets the event at once, so only a hanging import waits ``timeout``."""
    preload()
    if not _loaded.wait(timeout):
        return {"error": f"importing Scapy took longer than {timeout:g} s"}
    return _scapy


def craft_syn(sc: dict, src: Address, dst: Address, ttl: int):
    """A bare TCP SYN (no options) with a chosen TTL."""
    return sc["IP"](src=src[0], dst=dst[0], ttl=ttl) / sc["TCP"](
        sport=src[1], dport=dst[1], flags="S", seq=secrets.randbits(32), window=64240)


def send_packets(sender, packet, copies: int, dst_ip: str) -> None:
    """Send ``copies`` copies of a crafted IPv4 packet on an ``IPPROTO_RAW`` socket (or of an
    IPv6 TCP segment on an ``AF_INET6`` raw TCP socket)."""
    data = bytes(packet)
    for _ in range(copies):
        sender.sendto(data, (dst_ip, 0))


def simopen_test(run: TcpEvidence, ep: Endpoints, local_ip: str, simopen, ttl_for_simopen, timeout: float,
                  rtt: float, loss_seen=None) -> None:
    """Run :func:`_simopen_once` in rounds (:mod:`stunturn_diag.sansio.probe.simopen`): again,
    with a longer delay, when our SYN left too late to precede the server's; once more when
    it failed on a path known to lose packets. A last round still too late is an error."""
    delay_ms, misses, earlier = first_delay_ms(rtt), 0, []
    for rounds in range(1, MAX_ROUNDS + 1):
        _simopen_once(run, ep, local_ip, simopen, ttl_for_simopen, timeout, rtt, delay_ms)
        info = run.simopen
        if rounds > 1:
            info.update(rounds=rounds, earlier_rounds=list(earlier))
        earlier.append({k: info.get(k) for k in ("delay_ms", "syn_sent_ms", "connected")})
        if info.get("connected") is False and not lost_race(info):
            misses += 1
        delay_ms = next_delay_ms(info, rounds, bool(loss_seen and loss_seen()), misses)
        if delay_ms is None:
            break
        ttl_for_simopen = _given(info["ttl"])  # the first round's TTL, not a second walk
    why = race_error(info)
    if why is not None:
        info["error"] = why


def _given(ttl: int):
    return lambda: ttl


def _simopen_once(run: TcpEvidence, ep: Endpoints, local_ip: str, simopen, ttl_for_simopen, timeout: float,
                  rtt: float, delay_ms: int) -> None:
    """RFC 5382 section 4.2: a SYN out that dies just past our NAT (low TTL, crafted with
    Scapy: the kernel would abort its own connect on the ICMP time-exceeded), then the
    server's SYN in from the endpoint we addressed. Simultaneous open works through this NAT
    when that SYN arrives here (watched by a BPF-filtered raw socket; no handshake needed).
    ``run.simopen`` gets ``skipped`` (this path cannot run it), ``error`` (a part broke) or
    ``connected``."""
    info: dict = {}
    run.simopen = info
    ttl = ttl_for_simopen() if ttl_for_simopen else None
    if ttl is None:
        info["skipped"] = "the TTL walk did not find a router between our NAT and the server"
        return
    ipv6 = ":" in local_ip
    sc = {} if ipv6 else scapy_parts()
    if "error" in sc:
        info["error"] = sc["error"]
        return
    local = free_port(local_ip)
    conn = watch = sender = None
    try:
        try:  # learn our mapped port (EIM: reused)
            x = stun_tcp_from(local, ep.primary, timeout, syn_rto(run.connect_rtt or rtt),
                              fresh_port_after=SAME_PORT_SYNS)
            conn, mapped = x.sock, x.mapped
            local = conn.getsockname()[:2]
            run.count(x)
        except (OSError, StunDecodeError) as exc:
            info["error"] = f"no STUN answer over TCP: {exc}"
            return
        try:
            watch = SynWatch(local[1], ipv6)  # opened before the server is asked: no SYN is missed
            sender = tcp6_sender(local[0], ttl) if ipv6 else ip_sender()
        except OSError as exc:
            info["error"] = (f"cannot open the raw sockets that send our SYN and watch for the server's "
                             f"({exc.strerror or exc})")
            return
        wait = wait_ms(rtt)
        asked = time.monotonic()  # the server takes the request later: its SYN leaves after asked + delay
        try:
            answer = simopen({"port": mapped[1], "delay_ms": delay_ms, "timeout_ms": wait})
        except SignalingError as exc:
            info["error"] = str(exc)
            return
        try:
            src = (str(answer["source"]["ip"]), int(answer["source"]["port"]))
        except (KeyError, TypeError, ValueError):
            info["error"] = f"the server's simultaneous-open answer names no source address: {answer!r:.200}"
            return
        try:
            if ipv6:
                send_packets(sender, tcp6_syn_segment(local, src, secrets.randbits(32)), 3, src[0])
            else:
                send_packets(sender, craft_syn(sc, local, src, ttl), 3, src[0])
        except OSError as exc:
            info["error"] = f"cannot send the crafted SYN: {exc.strerror or exc}"
            return
        sent = time.monotonic()
        info.update(ttl=ttl, local={"ip": local[0], "port": local[1]},
                    mapped={"ip": mapped[0], "port": mapped[1]},
                    server_source={"ip": src[0], "port": src[1]}, delay_ms=delay_ms,
                    syn_sent_ms=round((sent - asked) * 1000, 1), via="bpf-raw-socket")
        info["connected"] = watch.wait(src, sent + (delay_ms + wait) / 1000 + 0.05)
        if not info["connected"] and watch.seen:
            info["other_syns"] = [{"ip": ip, "port": port} for ip, port in watch.seen[:8]]
    finally:
        if watch is not None:
            watch.close()
        if sender is not None:
            sender.close()
        if conn is not None:
            conn.close()
