"""Raw sockets with our own classic-BPF filters (Linux; root or CAP_NET_RAW): no libpcap.

- :func:`attach_filter`: SO_ATTACH_FILTER (socket(7)) with a :mod:`stunturn_diag.sansio.bpf` program.
- :class:`SynWatch`: an ``AF_INET`` raw TCP socket that the kernel hands only SYNs to one
  local port (:func:`bpf.tcp_syn_program`); :meth:`SynWatch.wait` then checks the source.
- :func:`ip_sender`: an ``IPPROTO_RAW`` socket that sends whole IPv4 packets (raw(7)).
- :func:`tcp6_sender`: an ``AF_INET6`` raw TCP socket that sends TCP segments with a set
  hop limit (``IPV6_UNICAST_HOPS``, ipv6(7)); the kernel writes the IPv6 header.
- :class:`PacketCapture`: an ``AF_PACKET`` cooked socket (packet(7)) on one interface with a
  filter, read by a bounded thread; both directions, kernel timestamps (SO_TIMESTAMP).

Every failure is an ``OSError`` raised at once (no thread waits on a callback).
"""

from __future__ import annotations

import ctypes
import ipaddress
import select
import socket
import struct
import threading
import time

from stunturn_diag.sansio import bpf

#: Linux SO_ATTACH_FILTER / SO_TIMESTAMP (asm-generic/socket.h)
SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
SO_TIMESTAMP = getattr(socket, "SO_TIMESTAMP", 29)
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
ARPHRD_LOOPBACK = 772


def attach_filter(sock: socket.socket, program: list[bpf.Insn]) -> None:
    """Attach ``program`` to ``sock`` (replaces any earlier filter); OSError if refused."""
    code = bpf.pack(program)
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("HL", len(program), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def ip_sender() -> socket.socket:
    """A raw socket that sends complete IPv4 packets (IPPROTO_RAW implies IP_HDRINCL)."""
    return socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)


def tcp6_sender(local_ip: str, hop_limit: int) -> socket.socket:
    """A raw IPv6 TCP socket bound to ``local_ip`` whose segments leave with ``hop_limit``
    (the caller gives each segment its checksum: :func:`bpf.tcp6_syn_segment`)."""
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_TCP)
    try:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, hop_limit)
        s.bind((local_ip, 0))
        s.setblocking(False)  # never read: the kernel's copies of TCP segments are not kept
        attach_filter(s, [bpf.Insn(bpf.RET | bpf.K, k=bpf.DROP)])
    except BaseException:
        s.close()
        raise
    return s


class SynWatch:
    """Catches the first TCP SYN (no ACK) to local port ``dport`` from an expected source.

    The socket exists (and queues matching SYNs) from construction on, so a watch opened
    before the source is known misses nothing. The kernel filter passes only SYNs to
    ``dport``; the source is checked here, once known. ``ipv6``: an ``AF_INET6`` raw
    socket, which reads segments from their TCP header (:func:`bpf.tcp6_syn_program`)."""

    def __init__(self, dport: int, ipv6: bool = False) -> None:
        self.dport, self.ipv6 = dport, ipv6
        self.sock = socket.socket(socket.AF_INET6 if ipv6 else socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
        try:
            attach_filter(self.sock, bpf.tcp6_syn_program(dport) if ipv6 else bpf.tcp_syn_program(dport))
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise
        self.seen: list[tuple[str, int]] = []  # sources of the SYNs read (evidence)

    def wait(self, src: tuple[str, int], deadline: float, clock=time.monotonic) -> bool:
        """True once a SYN from ``src`` to our port arrives before ``deadline`` (``clock``'s time)."""
        while True:
            for packet, sender in self._drain():
                if self.ipv6:
                    f6 = bpf.tcp6_fields(packet, sender[0])
                    f = f6 and (f6[0], f6[1], None, f6[2], f6[3])
                else:
                    f = bpf.tcp_fields(packet)
                if f is None or f[3] != self.dport:
                    continue
                self.seen.append((f[0], f[1]))
                if (f[0], f[1]) == _canonical(src, self.ipv6) and f[4] & bpf.TCP_SYN and not f[4] & bpf.TCP_ACK:
                    return True
            left = deadline - clock()
            if left <= 0:
                return False
            select.select([self.sock], [], [], left)

    def _drain(self, most: int = 256) -> list[tuple[bytes, tuple]]:
        out = []
        for _ in range(most):  # bounded: the filter admits only SYNs to one port
            try:
                out.append(self.sock.recvfrom(65535))
            except (BlockingIOError, InterruptedError):
                break
        return out

    def close(self) -> None:
        self.sock.close()


def _canonical(src: tuple[str, int], ipv6: bool) -> tuple[str, int]:
    """``src`` with its IP written as :func:`bpf.tcp6_fields` / :func:`bpf.tcp_fields` write it."""
    if ipv6:
        return str(ipaddress.IPv6Address(src[0])), int(src[1])
    return src[0], int(src[1])


class PacketCapture:
    """Captures what ``program`` accepts on interface ``ifname`` (None: every interface)
    until :meth:`stop`; at most ``max_packets`` packets of at most ``snaplen`` bytes.

    Cooked ``AF_PACKET`` (``SOCK_DGRAM``): packets start at the network header (pcap
    LINKTYPE_RAW). On loopback every packet passes twice (out and in): the outgoing copy
    is left out."""

    def __init__(self, program: list[bpf.Insn], ifname: str | None = None, *, max_packets: int = 100_000,
                 snaplen: int = 65535) -> None:
        self.snaplen, self.max_packets = snaplen, max_packets
        self.records: list[tuple[float, bytes]] = []
        self.error: str | None = None
        # one interface: protocol 0 queues nothing until bind() names ETH_P_ALL, after the filter.
        # Every interface (no bind): what queued before the filter was attached is discarded.
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0 if ifname else socket.htons(ETH_P_ALL))
        try:
            attach_filter(self.sock, program)
            self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMP, 1)
            if ifname:
                self.sock.bind((ifname, ETH_P_ALL))
            else:
                self.sock.setblocking(False)
                for _ in range(10_000):  # bounded: the queue holds what arrived in microseconds
                    try:
                        self.sock.recv(1)
                    except (BlockingIOError, InterruptedError):
                        break
                self.sock.setblocking(True)
        except BaseException:
            self.sock.close()
            raise
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="probe-capture", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set() and len(self.records) < self.max_packets:
                if not select.select([self.sock], [], [], 0.05)[0]:
                    continue
                data, anc, _flags, addr = self.sock.recvmsg(self.snaplen, socket.CMSG_SPACE(16))
                if addr[2] == PACKET_OUTGOING and addr[3] == ARPHRD_LOOPBACK:
                    continue
                ts = time.time()
                for level, kind, value in anc:
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMP and len(value) >= 16:
                        sec, usec = struct.unpack("qq", value[:16])
                        ts = sec + usec / 1e6
                self.records.append((ts, data))
        except OSError as exc:  # reported by stop(); what was captured is kept
            self.error = f"the capture stopped early: {exc}"

    def stop(self, timeout: float = 2.0) -> list[tuple[float, bytes]]:
        """Stop reading (bounded wait) and return (timestamp, packet) records."""
        self._stop.set()
        self._thread.join(timeout)
        self.sock.close()
        return list(self.records)
