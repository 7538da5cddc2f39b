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
    waits, w = [], max(0.001, rto)
    while w < KERNEL_SYN_RTO and sum(waits) + w < timeout and len(waits) < 5:
        waits.append(w)
        w *= 2
    return waits + [max(0.0, timeout - sum(waits))]
