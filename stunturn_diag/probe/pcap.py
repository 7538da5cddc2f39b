"""``--pcap``: the probe's packets as Scapy saw them (AsyncSniffer, filtered to the probe's flows).

The filter keeps traffic to/from the server's addresses and ICMP (time-exceeded
from the TTL walk, unreachables), on the interface that routes to the server.
Needs root (raw capture); without it the probe says so and runs anyway.
"""

from __future__ import annotations

import os
import threading

from .endpoints import Endpoints


def bpf_filter(ep: Endpoints) -> str:
    """BPF expression for the probe's flows (pure)."""
    ips = sorted({a[0] for a in (ep.primary, ep.alt_ip, ep.alt_both, ep.alt_port) if a})
    return "(" + " or ".join(f"host {ip}" for ip in ips) + ") or icmp"


def start_capture(ep: Endpoints, local_ip: str):
    """Start sniffing; returns (sniffer, None) or (None, the reason it cannot)."""
    from .tcp import has_root
    if os.geteuid() != 0 or not has_root():
        return None, "capturing packets needs root (raw sockets, CAP_NET_RAW); run with sudo or drop --pcap"
    try:
        from scapy.config import conf
        from scapy.sendrecv import AsyncSniffer
    except ImportError:
        return None, "Scapy is not installed (pip install scapy)"
    ready = threading.Event()
    try:
        import scapy.layers.inet  # noqa: F401  (IP/UDP/TCP/ICMP dissectors for the capture)
        from scapy.layers.l2 import Ether
        if 772 not in conf.l2types:  # ARPHRD_LOOPBACK carries Ethernet frames with zero MACs
            conf.l2types.register(772, Ether)
        iface = conf.route.route(ep.primary[0])[0]
        sniffer = AsyncSniffer(iface=iface, filter=bpf_filter(ep), store=True, started_callback=ready.set)
        sniffer.start()
    except Exception as exc:  # Scapy raises assorted errors (no libpcap filter compiler, no iface)
        return None, f"cannot start the capture: {exc}"
    if not ready.wait(5.0):
        try:
            sniffer.stop()
        except Exception:
            pass
        return None, "the packet capture did not start within 5 s"
    return sniffer, None


def stop_capture(sniffer, path: str) -> str | None:
    """Stop and write the pcap; returns a reason string on failure."""
    try:
        from scapy.utils import wrpcap
        packets = sniffer.stop()
        wrpcap(path, packets or [])
        return None
    except Exception as exc:
        return f"cannot write the capture to {path}: {exc}"
