"""TCP socket helpers shared by the probe's TCP runners (:mod:`.tcp_runner`,
:mod:`.simopen_runner`): one local port for several connections (SO_REUSEADDR +
SO_REUSEPORT), a STUN Binding over TCP on it, and whether raw sockets may be opened here."""

from __future__ import annotations

import socket

from ..errors import StunDecodeError
from ..stun_tcp import binding_transaction
from stunturn_diag.sansio.netaddr import Address
from stunturn_diag.sansio.probe.plan import SOFTWARE

SO_REUSEPORT = getattr(socket, "SO_REUSEPORT", 15)


def reuse_socket(local: Address) -> socket.socket:
    fam = socket.AF_INET6 if ":" in local[0] else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, SO_REUSEPORT, 1)
    s.bind(local)
    return s


def stun_tcp(s: socket.socket, dest: Address, timeout: float) -> Address:
    """Connect ``s`` to ``dest`` and return XOR-MAPPED-ADDRESS from one Binding transaction
    (:func:`stunturn_diag.stun_tcp.binding_transaction`)."""
    msg = binding_transaction(s, dest, timeout, software=SOFTWARE)
    if msg.mapped_address is None:
        raise StunDecodeError(f"STUN over TCP: no mapped address (error {msg.error})")
    return msg.mapped_address


def free_port(local_ip: str) -> Address:
    s = reuse_socket((local_ip, 0))
    addr = s.getsockname()[:2]
    s.close()
    return addr


def has_raw_socket_capability() -> bool:
    """Raw sockets are allowed here (root, or CAP_NET_RAW): what sending the crafted SYN,
    the SYN watch and --pcap need. Tried, not guessed from the uid: root in a container without
    CAP_NET_RAW cannot open them either. Opens and closes a raw IPv4 socket (no packet
    is sent)."""
    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP).close()
        return True
    except OSError:
        return False
