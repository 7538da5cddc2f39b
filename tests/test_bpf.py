"""Our classic-BPF programs (stunturn_diag/sansio/bpf.py), the sockets that carry them
(stunturn_diag/rawsock.py) and the pcap writer: assembled as the kernel reads them, and
run by the kernel against real packets on loopback (root). No libpcap is involved."""

from __future__ import annotations

import os
import secrets
import socket
import struct
import time

import pytest
from testlib import free_port

from stunturn_diag.sansio import bpf, pcapfile

root = pytest.mark.skipif(os.geteuid() != 0, reason="raw and packet sockets need root")


# --- the assembler (pure) ---------------------------------------------------------------

def test_labels_become_forward_offsets():
    a = bpf.Assembler()
    a.ld(bpf.H, 12).jeq(0x0800, None, "no")   # 0: jf skips 1 instruction
    a.ret(1)                                    # 1
    a.label("no").ret(0)                        # 2
    prog = a.assemble()
    assert prog[1] == bpf.Insn(bpf.JMP | bpf.JEQ | bpf.K, 0, 1, 0x0800)
    assert prog[0] == bpf.Insn(0x28, 0, 0, 12)  # BPF_LD|BPF_H|BPF_ABS, as tcpdump -d prints "ldh [12]"
    assert len(bpf.pack(prog)) == 8 * len(prog)
    assert bpf.pack([bpf.Insn(0x06, 0, 0, 0xFFFFFFFF)]) == struct.pack("HBBI", 6, 0, 0, 0xFFFFFFFF)


def test_assembler_refuses_what_the_kernel_would():
    with pytest.raises(ValueError, match="not defined"):
        bpf.Assembler().jeq(1, "nowhere", None).ret(0).assemble()
    with pytest.raises(ValueError, match="must end with a return"):
        bpf.Assembler().ld(bpf.W, 0).assemble()
    with pytest.raises(ValueError, match="defined twice"):
        bpf.Assembler().label("x").label("x")
    far = bpf.Assembler().jeq(1, "end", None)
    for _ in range(300):
        far.ld(bpf.B, 0)
    with pytest.raises(ValueError, match="0..255"):
        far.label("end").ret(0).assemble()


def test_blackhole_program_is_the_one_punch_always_attached():
    """The shared builder emits, instruction for instruction, the program tcp_sockets built
    by hand before it moved here (so punch's listener filter did not change)."""
    sources = [("10.0.0.1", 1000), ("10.0.0.2", 2000), ("192.0.2.7", 65535)]
    n = len(sources)
    expected = []
    for i, (ip, port) in enumerate(sources):
        expected += [struct.pack("HBBI", 0x20, 0, 0, (-0x100000 + 12) & 0xFFFFFFFF),
                     struct.pack("HBBI", 0x15, 0, 2, int.from_bytes(socket.inet_aton(ip), "big")),
                     struct.pack("HBBI", 0x28, 0, 0, 0),
                     struct.pack("HBBI", 0x15, 4 * (n - i) - 3, 0, port)]
    expected += [struct.pack("HBBI", 6, 0, 0, 0xFFFFFFFF), struct.pack("HBBI", 6, 0, 0, 0)]
    assert bpf.pack(bpf.blackhole_program(sources)) == b"".join(expected)


def test_programs_assemble_for_many_hosts():
    prog = bpf.flows_program(["198.51.100.10", "198.51.100.20", "2001:db8::1", "2001:db8::2"])
    assert prog[-1].code == bpf.RET | bpf.K and len(prog) < bpf.MAX_INSNS
    assert bpf.tcp_syn_program(3478)[-1].k == bpf.DROP


def test_tcp_fields_reads_only_ipv4_tcp_first_fragments():
    from scapy.layers.inet import IP, TCP, UDP
    syn = bytes(IP(src="192.0.2.1", dst="198.51.100.10") / TCP(sport=1234, dport=3478, flags="S"))
    assert bpf.tcp_fields(syn) == ("192.0.2.1", 1234, "198.51.100.10", 3478, 0x02)
    with_options = bytes(IP(src="192.0.2.1", dst="198.51.100.10", options=b"\x01" * 4) /
                         TCP(sport=1, dport=2, flags="SA"))
    assert bpf.tcp_fields(with_options)[1:] == (1, "198.51.100.10", 2, 0x12)
    assert bpf.tcp_fields(bytes(IP() / UDP())) is None
    assert bpf.tcp_fields(bytes(IP(frag=3) / TCP())) is None
    assert bpf.tcp_fields(syn[:30]) is None and bpf.tcp_fields(b"") is None


# --- the pcap writer --------------------------------------------------------------------

def test_pcap_file_reads_back_with_scapy(tmp_path):
    from scapy.layers.inet import IP, UDP
    from scapy.utils import rdpcap
    a = bytes(IP(src="192.0.2.1", dst="198.51.100.10") / UDP(sport=5, dport=3478) / b"x")
    b = bytes(IP(src="198.51.100.10", dst="192.0.2.1") / UDP(sport=3478, dport=5) / (b"y" * 100))
    path = tmp_path / "t.pcap"
    path.write_bytes(pcapfile.encode([(1700000000.25, a), (1700000001.5, b)], snaplen=60))
    packets = rdpcap(str(path))
    assert len(packets) == 2
    assert bytes(packets[0]) == a and packets[0]["UDP"].dport == 3478
    assert float(packets[0].time) == pytest.approx(1700000000.25)
    assert len(bytes(packets[1])) == 60 and packets[1].wirelen == len(b)  # cut at the snapshot length


def test_tcp6_syn_segment_is_the_syn_scapy_builds():
    """Our IPv6 SYN (checksum over the RFC 8200 8.1 pseudo-header) equals Scapy's."""
    from scapy.layers.inet import TCP
    from scapy.layers.inet6 import IPv6
    src, dst = ("2001:db8:1::10", 40000), ("2001:db8:ff::2", 3478)
    ours = bpf.tcp6_syn_segment(src, dst, 0xDEADBEEF)
    theirs = bytes(IPv6(src=src[0], dst=dst[0]) / TCP(sport=src[1], dport=dst[1], flags="S",
                                                       seq=0xDEADBEEF, window=64240, options=[]))[40:]
    assert ours == theirs
    assert bpf.tcp6_fields(ours, "2001:db8:1:0::10") == ("2001:db8:1::10", 40000, 3478, 0x02)
    assert bpf.tcp6_fields(ours[:10], "::1") is None


# --- the kernel runs them (root, loopback) ----------------------------------------------

@root
def test_kernel_ipv6_syn_watch_sees_only_the_syn_to_its_port():
    """IPv6: our segment, sent on a hop-limited raw socket, passes the AF_INET6 watch's filter
    (which reads from the TCP header: IPv6 raw sockets get no IP header); a SYN-ACK and a SYN
    to another port do not."""
    from stunturn_diag.rawsock import SynWatch, tcp6_sender
    dport = free_port(socket.SOCK_DGRAM)
    watch = SynWatch(dport, ipv6=True)
    sender = tcp6_sender("::1", 2)
    try:
        synack = bytearray(bpf.tcp6_syn_segment(("::1", 4001), ("::1", dport), 1))
        synack[13] = 0x12
        for seg in (bytes(synack), bpf.tcp6_syn_segment(("::1", 4002), ("::1", dport + 1), 1),
                    bpf.tcp6_syn_segment(("::1", 4000), ("::1", dport), 7)):
            sender.sendto(seg, ("::1", 0))
        assert watch.wait(("0:0::1", 4000), time.monotonic() + 2) is True
        assert watch.seen == [("::1", 4000)]
    finally:
        watch.close()
        sender.close()


@root
def test_kernel_syn_filter_passes_only_syns_to_the_port():
    """The same program on a raw TCP socket (packet starts at the IP header) and on a packet
    socket with the link header (loopback's Ethernet header): offsets are from the network
    header, so both see exactly the SYN to our port."""
    from scapy.layers.inet import IP, TCP
    from stunturn_diag.rawsock import SynWatch, attach_filter, ip_sender
    dport = free_port(socket.SOCK_DGRAM)
    watch = SynWatch(dport)
    link = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    sender = ip_sender()
    try:
        attach_filter(link, bpf.tcp_syn_program(dport))
        link.bind(("lo", 0x0003))
        link.settimeout(2)
        mark = secrets.randbits(32)
        for flags, port in (("SA", dport), ("S", dport + 1), ("A", dport), ("S", dport)):
            seq = mark if (flags, port) == ("S", dport) else 1
            sender.sendto(bytes(IP(src="127.0.0.9", dst="127.0.0.1") /
                                TCP(sport=4000, dport=port, flags=flags, seq=seq)), ("127.0.0.1", 0))
        assert watch.wait(("127.0.0.9", 4000), time.monotonic() + 2) is True
        assert watch.seen == [("127.0.0.9", 4000)]  # only the SYN got through the kernel filter
        frame = link.recv(65535)  # Ethernet header + IP + TCP
        tcp = frame[14 + 20:]
        assert struct.unpack("!HHI", tcp[:8]) == (4000, dport, mark) and tcp[13] == 0x02
    finally:
        for s in (watch, link, sender):
            s.close()


@root
def test_kernel_flows_filter_captures_only_the_listed_hosts(tmp_path):
    from scapy.utils import rdpcap
    from stunturn_diag.rawsock import PacketCapture
    port = free_port(socket.SOCK_DGRAM)
    cap = PacketCapture(bpf.flows_program(["127.0.0.77"], icmp=False), "lo")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for dst in ("127.0.0.77", "127.0.0.78", "127.0.0.77"):
            s.sendto(b"stunturn-bpf-test", (dst, port))
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and len([r for r in cap.records if r[1][9] == 17]) < 2:
            time.sleep(0.01)
    finally:
        s.close()
        records = cap.stop()
    ours = [d for _ts, d in records if d[9] == 17 and d.endswith(b"stunturn-bpf-test")]  # (ICMP quotes it)
    assert [socket.inet_ntoa(d[16:20]) for d in ours] == ["127.0.0.77", "127.0.0.77"]  # once each: no
    assert all(socket.inet_ntoa(d[12:16]) == "127.0.0.77" or socket.inet_ntoa(d[16:20]) == "127.0.0.77"
               for _ts, d in records)                                                # loopback echo
    path = tmp_path / "c.pcap"
    path.write_bytes(pcapfile.encode(records))
    assert sum(1 for p in rdpcap(str(path)) if p.haslayer("UDP") and p["UDP"].dport == port) == 2


@root
def test_kernel_flows_filter_takes_icmp_and_ipv6_hosts():
    """Also on every interface at once (no interface named: the capture binds to none)."""
    from stunturn_diag.rawsock import PacketCapture
    port = free_port(socket.SOCK_DGRAM)  # nothing listens: the kernel answers with ICMP port unreachable
    cap = PacketCapture(bpf.flows_program(["::1"], icmp=True), None)
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b"stunturn-bpf-icmp", ("127.0.0.79", port))
        s.close()
        has6 = socket.has_ipv6
        if has6:
            try:
                s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
                s6.sendto(b"stunturn-bpf-v6", ("::1", port))
                s6.close()
            except OSError:
                has6 = False
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and not (
                any(d[0] >> 4 == 4 and d[9] == 1 and d.endswith(b"stunturn-bpf-icmp") for _t, d in cap.records)
                and (not has6 or any(d.endswith(b"stunturn-bpf-v6") for _t, d in cap.records))):
            time.sleep(0.01)
    finally:
        records = cap.stop()
    assert any(d[9] == 1 and d.endswith(b"stunturn-bpf-icmp") for _t, d in records if d[0] >> 4 == 4)
    assert not any(d[0] >> 4 == 4 and d[9] == 17 for _t, d in records)  # the UDP itself: not listed
    if has6:
        assert any(d[0] >> 4 == 6 and d.endswith(b"stunturn-bpf-v6") for _t, d in records)


def test_ipv6_blackhole_compares_the_whole_source_address_and_the_port():
    """RFC 8200 section 3: the source address is the IPv6 header's bytes 8-23; each source
    is four word compares (network header offsets) and the TCP source port."""
    prog = bpf.blackhole6_program([("2001:db8::1", 1000), ("fe80::2", 2000)])
    loads = [i.k for i in prog if i.code == 0x20]           # LD W ABS
    assert loads == [-0x100000 + off for off in (8, 12, 16, 20)] * 2
    words = [i.k for i in prog if i.code == 0x15]           # JEQ K
    assert words[:5] == [0x20010db8, 0, 0, 1, 1000]
    assert words[5:] == [0xfe800000, 0, 0, 2, 2000]
    assert prog[-2].k == 0xFFFFFFFF and prog[-1].k == 0      # accept the rest, drop
