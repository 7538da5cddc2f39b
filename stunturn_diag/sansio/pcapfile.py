"""The classic pcap file format (pure): a global header, then one record per packet.

Format: the tcpdump/libpcap savefile (draft-ietf-opsawg-pcap): magic 0xa1b2c3d4 (microsecond
timestamps), version 2.4, snapshot length, link type; each record: seconds, microseconds,
captured length, original length, then the bytes. Little-endian (the writer's order,
told by the magic). Readers: Scapy's ``rdpcap``, tcpdump, Wireshark.
"""

from __future__ import annotations

import struct

MAGIC = 0xA1B2C3D4
#: LINKTYPE_RAW: each packet begins with an IPv4 or IPv6 header (tcpdump.org link types)
LINKTYPE_RAW = 101


def header(linktype: int = LINKTYPE_RAW, snaplen: int = 65535) -> bytes:
    return struct.pack("<IHHiIII", MAGIC, 2, 4, 0, 0, snaplen, linktype)


def record(ts: float, data: bytes, snaplen: int = 65535) -> bytes:
    sec = int(ts)
    usec = min(999_999, int(round((ts - sec) * 1_000_000)))
    kept = data[:snaplen]
    return struct.pack("<IIII", sec, usec, len(kept), len(data)) + kept


def encode(records: list[tuple[float, bytes]], linktype: int = LINKTYPE_RAW, snaplen: int = 65535) -> bytes:
    """A whole pcap file for (timestamp, packet) ``records``."""
    return header(linktype, snaplen) + b"".join(record(ts, data, snaplen) for ts, data in records)
