"""Classic BPF (Linux socket filters, SO_ATTACH_FILTER): a small assembler and the programs
stunturn-diag attaches to its sockets (pure: builds bytes, opens no socket).

Our own filters replace libpcap's filter compiler (Scapy's ``AsyncSniffer(filter=...)``
needs libpcap, which a fresh machine does not have). The programs read the packet
relative to its network header (``SKF_NET_OFF``, linux/filter.h), so one program serves
an ``AF_INET`` raw socket, an ``AF_PACKET`` socket (cooked or with its link header) and
a TCP socket alike. Instruction encoding: ``struct sock_filter`` (linux/filter.h; the
semantics are the BSD Packet Filter's, McCanne & Jacobson 1993).

Programs:

- :func:`blackhole_program`: on a TCP listener, drop segments from given (ip, port)s.
- :func:`tcp_syn_program`: accept TCP SYNs without ACK to one destination port (IPv4):
  the simultaneous-open watch.
- :func:`tcp6_syn_program`: the same for an ``AF_INET6`` raw TCP socket (IPv6).
- :func:`flows_program`: accept packets from/to given hosts and ICMP (``--pcap``).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

# instruction classes, sizes, modes and ops (linux/bpf_common.h)
LD, LDX, JMP, RET = 0x00, 0x01, 0x05, 0x06
W, H, B = 0x00, 0x08, 0x10
ABS, IND, MSH = 0x20, 0x40, 0xA0
JA, JEQ, JSET = 0x00, 0x10, 0x40
K = 0x00
#: load offsets relative to the network header, and the ancillary area (linux/filter.h)
SKF_NET_OFF = -0x100000
SKF_AD_OFF = -0x1000
SKF_AD_PROTOCOL = 0
#: the kernel's limit on a program's length (BPF_MAXINSNS)
MAX_INSNS = 4096

ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_ICMPV6 = 1, 6, 58
TCP_SYN, TCP_ACK = 0x02, 0x10

ACCEPT = 0xFFFFFFFF  # return value: keep the whole packet
DROP = 0


@dataclass(frozen=True)
class Insn:
    """One ``struct sock_filter``: opcode, jump-if-true, jump-if-false, constant."""

    code: int
    jt: int = 0
    jf: int = 0
    k: int = 0

    def pack(self) -> bytes:
        return struct.pack("HBBI", self.code, self.jt, self.jf, self.k & 0xFFFFFFFF)


class Assembler:
    """Builds a program with named forward jump targets, resolved by :meth:`assemble`.

    ``a.jeq(k, "yes", "no")`` jumps to the label ``yes`` when A == k, else to ``no``;
    ``None`` means the next instruction. Classic BPF jumps only forward, by at most
    255 instructions (``ValueError`` otherwise)."""

    def __init__(self) -> None:
        self._code: list[tuple[int, str | None, str | None, int]] = []
        self._labels: dict[str, int] = {}

    def label(self, name: str) -> "Assembler":
        if name in self._labels:
            raise ValueError(f"BPF label {name!r} defined twice")
        self._labels[name] = len(self._code)
        return self

    def emit(self, code: int, k: int = 0, jt: str | None = None, jf: str | None = None) -> "Assembler":
        self._code.append((code, jt, jf, k))
        return self

    # the instructions the programs use
    def ld(self, size: int, k: int) -> "Assembler":
        """A = packet[k] (size W, H or B; network byte order)."""
        return self.emit(LD | size | ABS, k)

    def ld_net(self, size: int, offset: int) -> "Assembler":
        """A = the network header's bytes at ``offset``."""
        return self.ld(size, SKF_NET_OFF + offset)

    def ld_ind_net(self, size: int, offset: int) -> "Assembler":
        """A = the bytes at network header + X + ``offset`` (X: the IPv4 header length)."""
        return self.emit(LD | size | IND, SKF_NET_OFF + offset)

    def ldx_ip_header_length(self) -> "Assembler":
        """X = 4 * (IPv4 IHL), i.e. where the transport header starts."""
        return self.emit(LDX | B | MSH, SKF_NET_OFF)

    def ld_protocol(self) -> "Assembler":
        """A = the link-level protocol (ethertype) of the packet, host order."""
        return self.ld(W, SKF_AD_OFF + SKF_AD_PROTOCOL)

    def jeq(self, k: int, jt: str | None, jf: str | None) -> "Assembler":
        return self.emit(JMP | JEQ | K, k, jt, jf)

    def jset(self, k: int, jt: str | None, jf: str | None) -> "Assembler":
        return self.emit(JMP | JSET | K, k, jt, jf)

    def ret(self, k: int) -> "Assembler":
        return self.emit(RET | K, k)

    def assemble(self) -> list[Insn]:
        out = []
        for i, (code, jt, jf, k) in enumerate(self._code):
            out.append(Insn(code, self._offset(i, jt), self._offset(i, jf), k))
        if not out or out[-1].code & 0x07 != RET:
            raise ValueError("a BPF program must end with a return")
        if len(out) > MAX_INSNS:
            raise ValueError(f"BPF program of {len(out)} instructions (the kernel takes {MAX_INSNS})")
        return out

    def _offset(self, at: int, label: str | None) -> int:
        if label is None:
            return 0
        if label not in self._labels:
            raise ValueError(f"BPF label {label!r} is not defined")
        off = self._labels[label] - at - 1
        if not 0 <= off <= 255:
            raise ValueError(f"BPF jump to {label!r} is {off} instructions (0..255 allowed)")
        return off


def pack(program: list[Insn]) -> bytes:
    """The program as the kernel reads it (an array of ``struct sock_filter``)."""
    return b"".join(insn.pack() for insn in program)


def _ipv4(ip: str) -> int:
    return int(ipaddress.IPv4Address(ip))


def _ipv6_words(addr: int) -> list[int]:
    """An IPv6 address (as an int) as its four 32-bit words, the first word first."""
    return [(addr >> (96 - 32 * w)) & 0xFFFFFFFF for w in range(4)]


def _drop_sources(sources: list[tuple[list[tuple[int, int]], int]]) -> list[Insn]:
    """For a TCP socket (whose packet starts at the TCP header): drop segments whose
    network header holds every ``(offset, word)`` of a source and whose TCP source port
    is its port; accept the rest."""
    a = Assembler()
    for i, (words, port) in enumerate(sources):
        for offset, word in words:
            a.ld_net(W, offset).jeq(word, None, f"next{i}")      # source address
        a.ld(H, 0).jeq(port, "drop", None)                       # TCP source port
        a.label(f"next{i}")
    return a.ret(ACCEPT).label("drop").ret(DROP).assemble()


def blackhole_program(sources: list[tuple[str, int]]) -> list[Insn]:
    """Drop segments from any of ``sources`` (IPv4, port), accept the rest: the IPv4
    source address is the header's word at 12."""
    return _drop_sources([([(12, _ipv4(ip))], port) for ip, port in sources])


def blackhole6_program(sources: list[tuple[str, int]]) -> list[Insn]:
    """The IPv6 :func:`blackhole_program`, for an ``AF_INET6`` TCP socket: the source
    address is the IPv6 header's bytes 8-23 (RFC 8200 section 3), compared a word at a
    time."""
    return _drop_sources([(list(zip((8, 12, 16, 20), _ipv6_words(int(ipaddress.IPv6Address(ip))))),
                           port) for ip, port in sources])


def tcp_syn_program(dport: int) -> list[Insn]:
    """Accept IPv4 TCP segments to ``dport`` with SYN set and ACK clear (a connection's
    first segment, RFC 9293 3.5), first fragments only; drop the rest."""
    a = Assembler()
    a.ld_net(B, 9).jeq(IPPROTO_TCP, None, "drop")
    a.ld_net(H, 6).jset(0x1FFF, "drop", None)          # a later fragment has no TCP header
    a.ldx_ip_header_length()
    a.ld_ind_net(H, 2).jeq(dport, None, "drop")        # TCP destination port
    a.ld_ind_net(B, 13).jset(TCP_ACK, "drop", None)    # TCP flags
    a.jset(TCP_SYN, "accept", "drop")
    return a.label("accept").ret(ACCEPT).label("drop").ret(DROP).assemble()


def tcp6_syn_program(dport: int) -> list[Insn]:
    """The IPv6 :func:`tcp_syn_program`: for an ``AF_INET6`` raw TCP socket, whose packet
    starts at the TCP header (raw(7) on IPv6 never passes the IPv6 header, and the kernel
    has already walked any extension headers), so TCP fields are read at absolute offsets."""
    a = Assembler()
    a.ld(H, 2).jeq(dport, None, "drop")               # TCP destination port
    a.ld(B, 13).jset(TCP_ACK, "drop", None)           # TCP flags
    a.jset(TCP_SYN, "accept", "drop")
    return a.label("accept").ret(ACCEPT).label("drop").ret(DROP).assemble()


def tcp6_fields(segment: bytes, src_ip: str) -> tuple[str, int, int, int] | None:
    """(source IP, source port, destination port, TCP flags) of a TCP segment read from an
    ``AF_INET6`` raw socket (it starts at the TCP header; the source comes from recvfrom),
    else None."""
    if len(segment) < 14:
        return None
    sport, dport = struct.unpack_from("!HH", segment, 0)
    return str(ipaddress.IPv6Address(src_ip.split("%")[0])), sport, dport, segment[13]


def _ones_complement_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def tcp6_syn_segment(src: tuple[str, int], dst: tuple[str, int], seq: int, window: int = 64240) -> bytes:
    """A bare TCP SYN (20-byte header, no options, RFC 9293 3.1) from ``src`` to ``dst``
    with its checksum over the IPv6 pseudo-header (RFC 8200 section 8.1): what an
    ``AF_INET6`` raw TCP socket sends as it is (the kernel adds the IPv6 header, with the
    socket's hop limit)."""
    header = struct.pack("!HHIIBBHHH", src[1], dst[1], seq & 0xFFFFFFFF, 0, 5 << 4, TCP_SYN, window, 0, 0)
    pseudo = (ipaddress.IPv6Address(src[0]).packed + ipaddress.IPv6Address(dst[0]).packed
              + struct.pack("!I3xB", len(header), IPPROTO_TCP))
    checksum = ~_ones_complement_sum(pseudo + header) & 0xFFFF
    return header[:16] + struct.pack("!H", checksum) + header[18:]


def flows_program(hosts: list[str], icmp: bool = True) -> list[Insn]:
    """Accept IPv4/IPv6 packets from or to any of ``hosts``, and (``icmp``) every ICMP /
    ICMPv6 message (time-exceeded from a TTL walk, unreachables); drop the rest. Needs
    the packet's link-level protocol (``AF_PACKET`` sockets)."""
    v4 = sorted({_ipv4(h) for h in hosts if ipaddress.ip_address(h).version == 4})
    v6 = sorted({int(ipaddress.IPv6Address(h)) for h in hosts if ipaddress.ip_address(h).version == 6})
    a = Assembler()
    a.ld_protocol().jeq(ETH_P_IP, None, "not4")
    if icmp:
        a.ld_net(B, 9).jeq(IPPROTO_ICMP, "accept", None)
    for off in (12, 16):  # source, destination
        for addr in v4:
            a.ld_net(W, off).jeq(addr, "accept", None)
    a.ret(DROP)
    a.label("not4").jeq(ETH_P_IPV6, None, "drop")
    if icmp:
        a.ld_net(B, 6).jeq(IPPROTO_ICMPV6, "accept", None)  # next header (no extension headers)
    for n, (off, addr) in enumerate((off, addr) for off in (8, 24) for addr in v6):
        for w, word in enumerate(_ipv6_words(addr)):
            a.ld_net(W, off + 4 * w).jeq(word, "accept" if w == 3 else None, f"v6next{n}")
        a.label(f"v6next{n}")
    a.label("drop").ret(DROP)
    return a.label("accept").ret(ACCEPT).assemble()


def tcp_fields(packet: bytes) -> tuple[str, int, str, int, int] | None:
    """(source IP, source port, destination IP, destination port, TCP flags) of an IPv4
    packet that carries a TCP header, else None (pure: the userspace check after a filter)."""
    if len(packet) < 20 or packet[0] >> 4 != 4 or packet[9] != IPPROTO_TCP:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if ihl < 20 or len(packet) < ihl + 14 or struct.unpack_from("!H", packet, 6)[0] & 0x1FFF:
        return None
    sport, dport = struct.unpack_from("!HH", packet, ihl)
    src = str(ipaddress.IPv4Address(packet[12:16]))
    dst = str(ipaddress.IPv4Address(packet[16:20]))
    return src, sport, dst, dport, packet[ihl + 13]
