"""``--pcap``: the probe's packets, captured with our own classic-BPF filter (no libpcap).

An ``AF_PACKET`` socket on the interface that holds the probe's source address, filtered
in the kernel (:func:`stunturn_diag.sansio.bpf.flows_program`) to traffic to/from the server's
addresses and ICMP (time-exceeded from the TTL walk, unreachables); written as a classic
pcap file (:mod:`stunturn_diag.sansio.pcapfile`, LINKTYPE_RAW; readable by Scapy's ``rdpcap``,
tcpdump, Wireshark). Needs root (raw capture): without it the probe lists ``pcap`` in
``skipped`` and runs anyway; with root, a capture that cannot start or be written is a
failure (``failed``, status ``partial``).
"""

from __future__ import annotations

import os

from stunturn_diag.sansio import bpf, pcapfile
from ..hostaddr import interface_of
from ..rawsock import PacketCapture
from stunturn_diag.sansio.probe.endpoints import Endpoints

#: the documented reason --pcap is skipped (an expected skip: exit status unchanged)
NO_ROOT = "capturing packets needs root (raw sockets, CAP_NET_RAW); run with sudo or drop --pcap"


def hosts(ep: Endpoints) -> list[str]:
    """The server addresses whose traffic is captured (pure)."""
    return sorted({a[0] for a in (ep.primary, ep.alt_ip, ep.alt_both, ep.alt_port) if a})


def start_capture(ep: Endpoints, local_ip: str) -> tuple[PacketCapture | None, str | None, bool]:
    """Start capturing: (capture, None, False), or (None, why, failed) where ``failed`` is
    False for the documented skip (no raw sockets) and True when it broke."""
    from .tcp_sockets import has_raw_socket_capability
    if os.geteuid() != 0 or not has_raw_socket_capability():
        return None, NO_ROOT, False
    try:
        program = bpf.flows_program(hosts(ep))
        return PacketCapture(program, interface_of(local_ip)), None, False
    except (OSError, ValueError) as exc:
        return None, f"cannot start the capture: {exc}", True


def stop_capture(capture: PacketCapture, path: str) -> str | None:
    """Stop and write the pcap file; returns why it failed, or None."""
    records = capture.stop()
    try:
        with open(path, "wb") as f:
            f.write(pcapfile.encode(records, snaplen=capture.snaplen))
    except OSError as exc:
        return f"cannot write the capture to {path}: {exc.strerror or exc}"
    return capture.error
