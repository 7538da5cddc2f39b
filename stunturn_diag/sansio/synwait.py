"""SYN resend waits of our own short TCP connects (pure: no sockets, no clocks).

The I/O that follows them is :mod:`stunturn_diag.netio` (``connect_resending``,
``connect_racing``) and the TCP punch's STUN binding; the punch state machine
(:mod:`stunturn_diag.sansio.punch.tcp_machine`) stops its own resends at
:data:`KERNEL_SYN_RTO` too.
"""

from __future__ import annotations

#: the first resend wait of a connect before any round trip to that server was measured
#: (the kernel's: 1 s)
SYN_RTO_UNKNOWN = 0.2
#: the floor of a resend wait (``netio.connect_resending``'s ``rto``): a path's queueing
#: varies by milliseconds; below this a resend would mostly be spurious (it costs the
#: answer to the first SYN)
SYN_RTO_MIN = 0.05


def syn_rto(rtt: float | None) -> float:
    """The wait before a connect resends its SYN: 4 round trips (RFC 6298's ``SRTT + 4
    RTTVAR`` for a first sample is 3 RTT; one more for a loaded host), at least
    :data:`SYN_RTO_MIN`; :data:`SYN_RTO_UNKNOWN` before any round trip was measured. Pure."""
    return SYN_RTO_UNKNOWN if rtt is None else max(SYN_RTO_MIN, 4 * rtt)


#: our own SYN resends stop once the next wait would reach the kernel's first SYN
#: retransmission (RFC 6298 section 2.1 / RFC 1122: 1 s): from there the kernel's schedule
KERNEL_SYN_RTO = 1.0


def syn_waits(rto: float, timeout: float) -> list[float]:
    """How long each SYN of a resending connect is given before the next one is sent: ``rto``,
    doubling (RFC 6298 section 5.5), while below :data:`KERNEL_SYN_RTO`; the last socket
    then has what is left of ``timeout``. At most six SYNs of our own. Pure."""
    return _doubling_waits(rto, timeout, max_waits=5)


def _doubling_waits(rto: float, timeout: float, *, max_waits: int,
                    quick: float | None = None) -> list[float]:
    """``rto``, doubling while below :data:`KERNEL_SYN_RTO`, each followed by ``quick``
    when given; at most ``max_waits`` of them, and all within ``timeout``; then what is
    left of it."""
    waits, w = [], max(0.001, rto)
    while w < KERNEL_SYN_RTO:
        steps = [w] if quick is None else [w, quick]
        if len(waits) + len(steps) > max_waits or sum(waits) + sum(steps) >= timeout:
            break
        waits += steps
        w *= 2
    return waits + [max(0.0, timeout - sum(waits))]


#: at most this many own SYN waits of :func:`same_tuple_waits` (so at most 9 SYNs)
MAX_SAME_TUPLE_WAITS = 8


def same_tuple_waits(rto: float, timeout: float) -> list[float]:
    """:func:`syn_waits` for resends on ONE 4-tuple (a fresh socket, same local port): each
    resend is followed by a quick one, ``rto / 2`` (two round trips) later. Pure.

    Seen in the lab with 10 % loss and traced: when the SYN-ACK to our first SYN is lost,
    the server keeps its half-open connection with that SYN's timestamp and answers our
    resend with a SYN-ACK whose TSecr echoes the first SYN's TSval (RFC 7323 section
    3.2). Our fresh socket had not sent anything that early, so its kernel rejects the
    SYN-ACK (a TSecr before its own first SYN: Linux's PAWS check on an active open) and
    answers it with a RST, which ends the server's half-open connection. Only the next
    SYN then gets a SYN-ACK it takes. With doubling alone every lost SYN-ACK cost two
    waits (0.6 s at ``rto`` 0.2 s; 12 of 200 bindings); the quick resend makes it
    ``1.5 * rto``. A lost SYN still costs one ``rto``. Then, as there, doubling, and the
    last socket keeps the kernel's schedule (its own retransmissions are not affected).
    """
    return _doubling_waits(rto, timeout, max_waits=MAX_SAME_TUPLE_WAITS,
                           quick=max(0.001, rto) / 2)


#: the share of a TCP STUN binding's timeout given to SYNs from its first local port; the
#: rest goes to SYNs from one new local port (:func:`port_budgets`)
FIRST_PORT_SHARE = 0.5


def port_budgets(timeout: float, new_port: bool) -> list[float]:
    """How a TCP STUN binding's connect time ``timeout`` is split over local ports. Pure.

    Resends on one 4-tuple (:func:`same_tuple_waits`) can stay stuck: in the lab with
    10 % loss about 1 binding in 300 got no SYN-ACK through within 3 s, the lossy NAT
    dropping four or five of the server's SYN-ACKs in a row after our resent SYN (far
    more than its loss; its conntrack entry for that tuple, not the link). A new local
    port is a new 4-tuple and a new conntrack entry. ``new_port`` false (the user fixed
    the port, ``--bind IP:PORT``): the whole timeout on that port.
    """
    if not new_port:
        return [timeout]
    first = timeout * FIRST_PORT_SHARE
    return [first, timeout - first]
