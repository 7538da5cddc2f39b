"""STUN Binding over TCP from the punching port (RFC 8489 sections 6.2.2 and 7.3).

The connection stays open afterwards: its conntrack entry holds the NAT mapping
(RFC 5382 section 5: an established TCP mapping lives at least 2 h 4 min) while
the signaling wait goes on, and an endpoint-independent NAT reuses that mapping
for the punch.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import time
from typing import Callable

from stunturn_diag.sansio.netaddr import Address

from ..errors import PunchError, StunDecodeError
from ..netio import lower_rto_min
from stunturn_diag.sansio.synwait import SYN_RTO_UNKNOWN, port_budgets, same_tuple_waits
from stunturn_diag.sansio.stun import MessageClass, Method
from ..stun_tcp import binding_transaction



def tcp_binding(sock: socket.socket, server: Address, timeout: float) -> Address:
    """Connect ``sock`` to ``server``, run one Binding transaction, return XOR-MAPPED-ADDRESS.

    Over TCP there are no retransmissions (RFC 8489 section 6.2.2): one request,
    one response, within ``timeout`` seconds. Leaves ``sock`` connected and
    non-blocking. Raises :class:`PunchError` (reason ``stun-failed``).
    """
    return _transaction(sock, server, timeout, connect=True)


def tcp_binding_resending(make_socket: Callable[[int | None], socket.socket], server: Address,
                          timeout: float, isn: int | None, rto: float = SYN_RTO_UNKNOWN, *,
                          new_port: Callable[[], Callable[[int | None], socket.socket]]
                          | None = None) -> tuple[socket.socket, Address]:
    """:func:`tcp_binding` on a socket from ``make_socket(isn)`` (all bound to one local
    port), resending an unanswered SYN sooner than the kernel would: returns the
    connected socket and XOR-MAPPED-ADDRESS.

    The kernel resends a lost SYN only after 1 s, then 3 s (RFC 6298 section 2.1): on a
    lossy path (the lab's ``lossy`` NAT drops 10 % each way) two lost SYNs or SYN-ACKs
    used up the whole STUN timeout (3 s) and the punch ended ``stun-failed`` before it
    began. Here a SYN without an answer within ``rto`` (then a quick one ``rto / 2``
    later, then twice ``rto``, ...: :func:`stunturn_diag.sansio.synwait.same_tuple_waits`)
    is abandoned (closing a socket in SYN-SENT sends nothing) and a fresh socket on the
    same port sends the same SYN again: the same 5-tuple and, pinned (TCP_REPAIR), the
    same ISN ``isn``, so our NAT's conntrack and the server take it as a retransmission.
    After a lost SYN-ACK the server's answer to that resend echoes the first SYN's
    timestamp, which the fresh socket refuses with a RST; the quick SYN after it gets a
    new SYN-ACK (see ``same_tuple_waits``). The last one keeps the kernel's schedule.
    ``isn`` None (no CAP_NET_ADMIN): one socket per port, the kernel's schedule only.
    ``new_port``: when the first port got no SYN-ACK through within its share of
    ``timeout`` (:func:`stunturn_diag.sansio.synwait.port_budgets`), called once for a
    ``make_socket`` of a new local port, which gets the rest. Raises
    :class:`PunchError` (reason ``stun-failed``)."""
    where = f"{server[0]}:{server[1]}"
    deadline = time.monotonic() + timeout
    sock = None
    for i, budget in enumerate(port_budgets(timeout, new_port is not None)):
        if i:
            make_socket = new_port()
        budget = min(budget, max(0.0, deadline - time.monotonic()))   # (the first ran over)
        sock = _connect_from_one_port(make_socket, server, budget, isn, rto, where)
        if sock is not None:
            break
    if sock is None:
        ports = " (from two local ports)" if new_port is not None else ""
        raise PunchError(f"no STUN Binding response over TCP from {where} within "
                         f"{timeout:g}s{ports}",
                         hint="check that the server's STUN responder listens on TCP",
                         reason="stun-failed")
    try:
        return sock, _transaction(sock, server, max(0.05, deadline - time.monotonic()),
                                  connect=False)
    except BaseException:
        sock.close()
        raise


def _connect_from_one_port(make_socket: Callable[[int | None], socket.socket], server: Address,
                           budget: float, isn: int | None, rto: float,
                           where: str) -> socket.socket | None:
    """The connect of :func:`tcp_binding_resending` on one local port within ``budget``
    seconds: the connected socket, or None when no SYN-ACK came through."""
    deadline = time.monotonic() + budget
    for wait in same_tuple_waits(rto, budget) if isn is not None else [budget]:
        sock = make_socket(isn)
        lower_rto_min(sock, rto)
        err = sock.connect_ex(server)
        ready = [sock] if err == 0 else []
        if err == errno.EINPROGRESS:
            _, ready, _ = select.select([], [sock], [], max(0.0, min(wait, deadline -
                                                                       time.monotonic())))
            if not ready:  # one last look: never abandon a SYN answered meanwhile
                _, ready, _ = select.select([], [sock], [], 0)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) if ready else 0
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            raise PunchError(f"STUN over TCP to {where} failed: {os.strerror(err)}",
                             hint="check the server address and that TCP reaches it",
                             reason="stun-failed")
        if ready:
            return sock
        sock.close()
    return None


def tcp_refresh(sock: socket.socket, server: Address, timeout: float) -> Address:
    """One more Binding transaction on the already connected ``sock`` (keeps it busy)."""
    return _transaction(sock, server, timeout, connect=False)


def _transaction(sock: socket.socket, server: Address, timeout: float, *,
                 connect: bool) -> Address:
    where = f"{server[0]}:{server[1]}"
    try:
        response = binding_transaction(sock, server, timeout, connect=connect, software="stunturn-diag",
                                       fingerprint=True)
    except (socket.timeout, TimeoutError):
        raise PunchError(f"no STUN Binding response over TCP from {where} within {timeout:g}s",
                         hint="check that the server's STUN responder listens on TCP",
                         reason="stun-failed") from None
    except StunDecodeError as exc:
        raise PunchError(f"the STUN server {where} sent a malformed or unrelated response "
                         f"over TCP: {exc}", reason="stun-failed") from None
    except OSError as exc:
        raise PunchError(f"STUN over TCP to {where} failed: {exc.strerror or exc}",
                         hint="check the server address and that TCP reaches it",
                         reason="stun-failed") from None
    finally:
        sock.setblocking(False)
    if response.method != Method.BINDING:   # the transaction ID was matched by stun_tcp
        raise PunchError(f"the STUN server {where} answered with another method over TCP",
                         reason="stun-failed")
    if response.msg_class != MessageClass.SUCCESS:
        err = response.error
        what = f"{err.code} {err.reason}" if err else "an error"
        raise PunchError(f"the STUN server {where} answered the Binding request with {what}",
                         reason="stun-failed")
    mapped = response.mapped_address
    if mapped is None:
        raise PunchError(f"the STUN server {where} sent no XOR-MAPPED-ADDRESS",
                         reason="stun-failed")
    return (str(mapped[0]), int(mapped[1]))
