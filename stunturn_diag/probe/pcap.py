"""``--pcap``: the probe's packets as Scapy saw them (AsyncSniffer, filtered to the server)."""

from __future__ import annotations

import os

from .endpoints import Endpoints


def _bpf(ep: Endpoints) -> str:
    ips = sorted({a[0] for a in (ep.primary, ep.alt_ip, ep.alt_both, ep.alt_port) if a})
    return " or ".join(f"host {ip}" for ip in ips) + " or icmp"


def start_capture(ep: Endpoints, local_ip: str):
    """Start sniffing; returns (sniffer, None) or (None, reason it cannot)."""
    if os.geteuid() != 0:
        return None, "capturing packets needs root (raw sockets); run with sudo or drop --pcap"
    try:
        from scapy.all import AsyncSniffer, conf  # noqa: F401
    except ImportError:
        return None, "Scapy is not installed"
    try:
        sniffer = AsyncSniffer(filter=_bpf(ep), store=True, iface=None)
        sniffer.start()
        return sniffer, None
    except Exception as exc:  # scapy raises assorted errors (no tcpdump, no iface)
        return None, f"cannot start the capture: {exc}"


def stop_capture(sniffer, path: str) -> str | None:
    """Stop and write the pcap; returns a reason string on failure."""
    try:
        from scapy.all import wrpcap
        packets = sniffer.stop()
        wrpcap(path, packets or [])
        return None
    except Exception as exc:
        return f"cannot write the capture to {path}: {exc}"
