"""TCP simultaneous open through our NAT (RFC 5382 section 4.2, REQ-2), crafted and watched
with Scapy (root).

A SYN leaves with a TTL that passes our NAT but dies at the next router. The kernel
cannot send it: its own connect() aborts when the ICMP time-exceeded comes back, so
Scapy crafts it (``IP(ttl=...)/TCP(flags="S")`` on an L3 raw socket). Then the server's
SYN comes in from the endpoint we addressed (``/v1/probe/tcp-simopen``). Simultaneous
open works through this NAT when that SYN reaches us: a Scapy ``AsyncSniffer`` (BPF
filter on the exact 4-tuple) watches for it; the handshake itself is not needed (our
kernel would answer with its own sequence number, which conntrack rejects).

Cost, measured on the 2-core test machine: importing only the layers needed
(``scapy.layers.inet``, ``scapy.sendrecv``, ``scapy.supersocket``) takes 170-225 ms of
CPU (``from scapy.all import ...`` takes 0.8 s), starting the sniffer 15-20 ms, the
first crafted send 20 ms. :func:`preload` starts that import in a background thread
when the probe begins, so it overlaps the UDP tests instead of adding to them.
"""

from __future__ import annotations

import secrets
import threading
import time

from ..errors import SignalingError, StunDecodeError
from .endpoints import Address, Endpoints
from .tcp import TcpRun, free_port, reuse_socket, stun_tcp

_scapy: dict = {}
_loaded = threading.Event()
_lock = threading.Lock()
_started = False


def _load() -> None:
    try:
        from scapy.config import conf
        from scapy.layers.inet import IP, TCP
        from scapy.sendrecv import AsyncSniffer
        from scapy.supersocket import L3RawSocket
        _scapy.update(IP=IP, TCP=TCP, AsyncSniffer=AsyncSniffer, L3RawSocket=L3RawSocket, conf=conf)
    except Exception as exc:  # ImportError, or Scapy failing to read this host's config
        _scapy["error"] = f"Scapy is not usable here ({type(exc).__name__}: {exc})"
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


def scapy_parts(timeout: float = 10.0) -> dict:
    """The Scapy classes (waits for :func:`preload`); ``{"error": why}`` when unusable."""
    preload()
    if not _loaded.wait(timeout):
        return {"error": "importing Scapy took longer than 10 s"}
    return _scapy


def craft_syn(sc: dict, src: Address, dst: Address, ttl: int):
    """A bare TCP SYN (no options) with a chosen TTL."""
    return sc["IP"](src=src[0], dst=dst[0], ttl=ttl) / sc["TCP"](
        sport=src[1], dport=dst[1], flags="S", seq=secrets.randbits(32), window=64240)


def start_syn_watch(sc: dict, server_ip: str, dport: int, expect: dict):
    """A started AsyncSniffer (on the interface routing to ``server_ip``) that stops at the
    first SYN (no ACK) to our ``dport`` from ``expect["src"]`` (filled in once the server
    names its source; started before that, so the sniffer's start-up never delays our SYN)."""
    def is_syn(pkt) -> bool:
        ip, tcp = pkt.getlayer(sc["IP"]), pkt.getlayer(sc["TCP"])
        src = expect.get("src")
        return (ip is not None and tcp is not None and src is not None
                and (ip.src, tcp.sport) == src and bool(int(tcp.flags) & 0x02)
                and not int(tcp.flags) & 0x10)
    ready = threading.Event()
    iface = sc["conf"].route.route(server_ip)[0]
    sniffer = sc["AsyncSniffer"](iface=iface, filter=f"tcp and dst port {dport}", lfilter=is_syn,
                                 count=1, store=True, started_callback=ready.set)
    sniffer.start()
    if not ready.wait(5.0):
        _stop(sniffer)
        raise OSError("the Scapy sniffer did not start within 5 s")
    return sniffer


def _stop(sniffer) -> list:
    try:
        return list(sniffer.stop() or [])
    except Exception:  # already stopped on its own (count reached)
        return list(getattr(sniffer, "results", None) or [])


def wait_syn(sniffer, deadline: float) -> bool:
    """True when the watched SYN arrived before ``deadline`` (monotonic)."""
    sniffer.join(max(0.0, deadline - time.monotonic()))
    if getattr(sniffer, "running", False):
        return bool(_stop(sniffer))
    return bool(getattr(sniffer, "results", None))


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
    """RFC 5382 section 4.2: a SYN out that dies just past our NAT (low TTL, crafted with
    Scapy: the kernel would abort its own connect on the ICMP time-exceeded), then the
    server's SYN in from the endpoint we addressed. Simultaneous open works through this NAT
    when that SYN arrives here (watched with a Scapy sniffer; no handshake needed)."""
    info: dict = {}
    run.simopen = info
    ttl = ttl_for_simopen() if ttl_for_simopen else None
    if ttl is None:
        info["skipped"] = "the TTL walk did not find a router between our NAT and the server"
        return
    if ":" in local_ip:
        info["skipped"] = "IPv4 only"
        return
    sc = scapy_parts()
    if "error" in sc:
        info["skipped"] = sc["error"]
        return
    local = free_port(local_ip)
    conn = reuse_socket(local)
    sniffer = l3 = None
    expect: dict = {}
    try:
        try:
            mapped = stun_tcp(conn, ep.primary, timeout)  # learn our mapped port (EIM: reused)
        except (OSError, StunDecodeError) as exc:
            info["error"] = f"no STUN answer over TCP: {exc}"
            return
        try:
            sniffer = start_syn_watch(sc, (ep.alt_ip or ep.primary)[0], local[1], expect)
            l3 = sc["L3RawSocket"]()
        except OSError as exc:
            info["error"] = f"cannot craft or watch SYNs with Scapy: {exc.strerror or exc}"
            return
        wait_ms = int(min(3000, max(250, 10 * rtt * 1000)))
        delay_ms = int(min(1000, max(30, 4 * rtt * 1000)))
        try:
            answer = simopen({"port": mapped[1], "delay_ms": delay_ms, "timeout_ms": wait_ms})
        except SignalingError as exc:
            info["error"] = str(exc)
            return
        try:
            src = (str(answer["source"]["ip"]), int(answer["source"]["port"]))
        except (KeyError, TypeError, ValueError):
            info["error"] = f"the server's simultaneous-open answer names no source address: {answer!r:.200}"
            return
        expect["src"] = src
        syn = craft_syn(sc, local, src, ttl)
        for _ in range(3):
            l3.send(syn)
        info.update(ttl=ttl, local={"ip": local[0], "port": local[1]},
                    mapped={"ip": mapped[0], "port": mapped[1]},
                    server_source={"ip": src[0], "port": src[1]}, delay_ms=delay_ms, via="scapy")
        info["connected"] = wait_syn(sniffer, time.monotonic() + (delay_ms + wait_ms) / 1000 + 0.05)
        sniffer = None
    finally:
        if sniffer is not None:
            _stop(sniffer)
        if l3 is not None:
            l3.close()
        conn.close()
