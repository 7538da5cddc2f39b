"""TCP socket helpers shared by the probe's TCP runners (:mod:`.tcp_runner`,
:mod:`.simopen_runner`): one local port for several connections (SO_REUSEADDR +
SO_REUSEPORT), a connect that resends its SYN on the path's round-trip time
(:func:`connect_from`), a STUN Binding over TCP on it, and whether raw sockets may be
opened here."""

from __future__ import annotations

import socket
import time
from typing import NamedTuple

from ..errors import StunDecodeError
from ..netio import SO_REUSEPORT, connect_resending
from ..stun_tcp import binding_transaction
from stunturn_diag.sansio.netaddr import Address
from stunturn_diag.sansio.probe.plan import SOFTWARE


def reuse_socket(local: Address) -> socket.socket:
    fam = socket.AF_INET6 if ":" in local[0] else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, SO_REUSEPORT, 1)
    s.bind(local)
    return s


def connect_from(local: Address, dest: Address, timeout: float, rto: float | None, *,
                 fresh_port_after: int | None = None) -> tuple[socket.socket, int]:
    """:func:`stunturn_diag.netio.connect_resending` from ``local`` with SO_REUSEPORT (the probe
    reuses one local port for several connections)."""
    return connect_resending(local, dest, timeout, rto, reuse_port=True, fresh_port_after=fresh_port_after)


def stun_tcp(s: socket.socket, dest: Address, timeout: float, *, connect: bool = True) -> Address:
    """Connect ``s`` to ``dest`` (``connect=False``: it already is) and return
    XOR-MAPPED-ADDRESS from one Binding transaction
    (:func:`stunturn_diag.stun_tcp.binding_transaction`)."""
    msg = binding_transaction(s, dest, timeout, software=SOFTWARE, connect=connect)
    if msg.mapped_address is None:
        raise StunDecodeError(f"STUN over TCP: no mapped address (error {msg.error})")
    return msg.mapped_address


class TcpExchange(NamedTuple):
    """What :func:`stun_tcp_from` returns."""

    sock: socket.socket          # connected; the caller closes it
    mapped: Address              # XOR-MAPPED-ADDRESS
    resends: int                 # SYNs resent
    connect_s: float | None      # seconds from the SYN to the connection (~1 RTT); None after resends


def stun_tcp_from(local: Address, dest: Address, timeout: float, rto: float | None, *,
                  fresh_port_after: int | None = None) -> TcpExchange:
    """:func:`connect_from` then :func:`stun_tcp`, both within ``timeout``. The socket's local
    port is ``local``'s unless ``fresh_port_after`` let it change."""
    started = time.monotonic()
    deadline = started + timeout
    s, resends = connect_from(local, dest, timeout, rto, fresh_port_after=fresh_port_after)
    connected = time.monotonic() - started
    try:
        mapped = stun_tcp(s, dest, max(0.001, deadline - time.monotonic()), connect=False)
    except BaseException:
        s.close()
        raise
    return TcpExchange(s, mapped, resends, None if resends else connected)


#: SYNs from one local port before a test that may change its port moves to a fresh one
#: (a lost SYN-ACK: :func:`stunturn_diag.netio.connect_resending`)
SAME_PORT_SYNS = 2


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
