"""The SYN resend schedule and :func:`stunturn_diag.netio.connect_resending` on loopback
(the resends themselves, with a SYN or SYN-ACK really lost, are proven in
``netns_tests/test_probe_syn_resend.py``)."""

from __future__ import annotations

import socket

import pytest

from stunturn_diag.errors import ServerUnreachable
from stunturn_diag.netio import connect_racing, connect_resending
from stunturn_diag.sansio.synwait import (KERNEL_SYN_RTO, MAX_SAME_TUPLE_WAITS, SYN_RTO_UNKNOWN,
                                          same_tuple_waits, syn_rto, syn_waits)
from stunturn_diag.signaling import SignalingClient


def test_waits_double_until_the_kernel_takes_over():
    assert syn_waits(0.05, 7.5) == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, 7.5 - 1.55])
    assert syn_waits(0.3, 7.5) == pytest.approx([0.3, 0.6, 6.6])


def test_waits_fit_the_timeout_and_are_bounded():
    for rto in (0.001, 0.01, 0.05, 0.2, 0.5, 0.99, 1.0, 3.0):
        for timeout in (0.05, 0.5, 1.0, 3.5, 7.5):
            waits = syn_waits(rto, timeout)
            assert len(waits) <= 6
            assert sum(waits) == pytest.approx(timeout)
            assert all(w < KERNEL_SYN_RTO for w in waits[:-1])


def test_a_slow_path_gets_the_kernels_schedule_only():
    assert syn_waits(1.0, 7.5) == [7.5]
    assert syn_waits(2.0, 3.5) == [3.5]


def test_syn_rto_from_the_round_trip():
    assert syn_rto(None) == SYN_RTO_UNKNOWN
    assert syn_rto(0.001) == 0.05       # the floor
    assert syn_rto(0.1) == pytest.approx(0.4)


@pytest.fixture
def listener():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(4)
    yield s
    s.close()


def test_connects_from_the_local_port_asked_for(listener):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    s, resends = connect_resending(("127.0.0.1", port), listener.getsockname(), 2.0, 0.05)
    try:
        assert resends == 0
        assert s.getsockname() == ("127.0.0.1", port)
        assert s.gettimeout() == 2.0
    finally:
        s.close()


def test_a_refused_connect_is_an_error_at_once(listener):
    closed = listener.getsockname()
    listener.close()
    with pytest.raises(ConnectionRefusedError):
        connect_resending(("127.0.0.1", 0), closed, 2.0, 0.05)


def test_the_signaling_client_learns_the_round_trip():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    client = SignalingClient(f"http://127.0.0.1:{srv.getsockname()[1]}", timeout=0.5)
    try:
        assert client.connect_rtt is None
        with pytest.raises(ServerUnreachable):
            client.health()       # connected, then no HTTP answer
        assert client.connect_rtt is not None and client.connect_rtt < 0.5
    finally:
        srv.close()


def test_racing_connects_and_a_refusal_is_an_answer(listener):
    s, extra = connect_racing(listener.getsockname(), 2.0, 0.05, local_ip="127.0.0.1")
    try:
        assert extra == 0 and s.getpeername() == listener.getsockname()
    finally:
        s.close()
    closed = listener.getsockname()
    listener.close()
    with pytest.raises(ConnectionRefusedError):
        connect_racing(closed, 2.0, 0.05)


def test_same_tuple_resends_come_in_pairs_a_quick_one_after_each():
    """A resend on one 4-tuple after a lost SYN-ACK is refused by our own fresh socket (the
    server's SYN-ACK echoes the first SYN's timestamp): the quick one after it counts."""
    assert same_tuple_waits(0.2, 3.0) == pytest.approx([0.2, 0.1, 0.4, 0.1, 0.8, 0.1, 1.3])
    assert same_tuple_waits(0.05, 3.0) == pytest.approx(
        [0.05, 0.025, 0.1, 0.025, 0.2, 0.025, 0.4, 0.025, 2.15])
    assert same_tuple_waits(1.0, 3.0) == [3.0]            # a slow path: the kernel's only
    for rto in (0.001, 0.05, 0.2, 0.5, 0.99, 3.0):
        for timeout in (0.05, 0.5, 1.0, 3.5, 7.5):
            waits = same_tuple_waits(rto, timeout)
            assert len(waits) <= MAX_SAME_TUPLE_WAITS + 1
            assert sum(waits) == pytest.approx(timeout)
            assert all(w < KERNEL_SYN_RTO for w in waits[:-1])
