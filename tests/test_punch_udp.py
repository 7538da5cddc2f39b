"""UDP rendezvous and the authenticated channel on loopback (real sockets, real STUN service)."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from testlib import wait_for

from stunturn_diag.errors import AuthenticationError, PunchError
from stunturn_diag.sansio.punch.handshake import Kind
from stunturn_diag.punch.channel import MAX_PAYLOAD
from stunturn_diag.punch.udp import UdpRendezvous
from stunturn_server.config import ServerConfig
from stunturn_server.runner import start_server


@pytest.fixture(scope="module")
def stun_server():
    handle = start_server(ServerConfig(http_port=0, stun_port=0))
    ep = handle.stun_endpoints[0]
    yield (ep["ip"], ep["port"])
    handle.stop()


def punch_pair(key_a="shared-key-1", key_b="shared-key-1", **kw):
    a, b = UdpRendezvous("127.0.0.1"), UdpRendezvous("127.0.0.1")
    res = {}

    def run(name, me, other, role, key):
        try:
            res[name] = me.punch([other.local_address], role=role, key=key, match_id="m1",
                                 deadline=time.monotonic() + kw.get("timeout", 3.0),
                                 keepalive_interval=kw.get("keepalive", 1.0),
                                 peer_timeout=kw.get("peer_timeout", 8.0))
            if kw.get("send_at_once"):
                res[name].send(f"first from {role}".encode())
        except PunchError as exc:
            res[name] = exc

    threads = [threading.Thread(target=run, args=("a", a, b, "initiator", key_a)),
               threading.Thread(target=run, args=("b", b, a, "receiver", key_b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return res["a"], res["b"]


def test_learn_mapping_reports_the_socket_seen_by_stun(stun_server):
    with UdpRendezvous("127.0.0.1") as rv:
        assert rv.learn_mapping(stun_server, 2.0) == rv.local_address
        assert rv.local_candidates() == [rv.local_address]


def test_learn_mapping_from_a_silent_server_fails_clearly():
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    with UdpRendezvous("127.0.0.1") as rv, pytest.raises(PunchError) as err:
        rv.learn_mapping(silent.getsockname(), 0.3)
    silent.close()
    assert err.value.reason == "stun-failed" and "no STUN answer" in str(err.value)


def test_punched_channels_carry_authenticated_datagrams_both_ways():
    a, b = punch_pair()
    try:
        assert a.peer_address == b.local_address and b.peer_address == a.local_address
        a.send(b"ping")
        assert b.recv(2) == b"ping"
        b.send(b"pong")
        assert a.recv(2) == b"pong"
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("round_", range(5))
def test_data_sent_the_moment_a_side_is_ready_is_not_lost(round_):
    # one side may still be confirming the handshake when the other's data arrives
    a, b = punch_pair(send_at_once=True)
    try:
        assert a.recv(2) == b"first from receiver"
        assert b.recv(2) == b"first from initiator"
    finally:
        a.close()
        b.close()


def test_foreign_and_forged_datagrams_are_dropped_and_counted():
    a, b = punch_pair()
    try:
        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stranger.sendto(b"not for you", b.local_address)
        stranger.close()
        # a frame with a wrong tag from the real peer's socket
        frame = bytearray(a.session.seal(Kind.DATA, b"evil"))
        frame[-1] ^= 1
        a.sock.sendto(bytes(frame), a.peer_address)
        a.send(b"good")
        assert b.recv(2) == b"good"
        assert wait_for(lambda: b.stats()["foreign"] == 1 and b.stats()["bad_tag"] == 1, 3.0)
        with pytest.raises(TimeoutError):
            b.recv(0.2)
    finally:
        a.close()
        b.close()


def test_close_reaches_the_peer_as_end_of_data():
    a, b = punch_pair()
    a.close()
    assert b.recv(2) == b""
    assert b.recv(2) == b""          # stays at end of data
    b.close()


def test_a_silent_peer_is_detected_as_lost():
    a, b = punch_pair(keepalive=0.05, peer_timeout=0.4)
    a._stop.set()                    # a vanishes without a goodbye
    a._thread.join(2)
    a.sock.close()
    with pytest.raises(PunchError) as err:
        b.recv(5)
    assert err.value.reason == "peer-lost"
    with pytest.raises(PunchError):
        b.send(b"x")
    b.close()


def test_keepalives_keep_an_idle_channel_alive():
    a, b = punch_pair(keepalive=0.05, peer_timeout=0.4)
    try:
        with pytest.raises(TimeoutError):
            b.recv(1.0)              # idle well past peer_timeout: keepalives hold it
        assert not b.lost and not a.lost
    finally:
        a.close()
        b.close()


def test_wrong_key_is_an_authentication_error_on_both_sides():
    a, b = punch_pair(key_b="another-key-2", timeout=0.6)
    for side in (a, b):
        assert isinstance(side, AuthenticationError) and side.reason == "auth-failed"
        assert side.attempts and side.attempts[0]["sent"] > 0


def test_oversized_payload_is_refused():
    a, b = punch_pair()
    with pytest.raises(ValueError):
        a.send(b"x" * (MAX_PAYLOAD + 1))
    a.close()
    b.close()


def test_the_peer_address_is_pinned_a_valid_frame_from_elsewhere_is_not_delivered():
    """An on-path relay that forwards the peer's genuine frame from its own address gets
    nowhere: after the handshake only the pinned address counts."""
    a, b = punch_pair()
    try:
        relay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        relay.bind(("127.0.0.1", 0))
        relay.sendto(a.session.seal(Kind.DATA, b"relayed"), b.local_address)
        relay.close()
        assert wait_for(lambda: b.stats()["foreign"] == 1, 3.0)
        with pytest.raises(TimeoutError):
            b.recv(0.2)
        a.send(b"direct")
        assert b.recv(2) == b"direct"
    finally:
        a.close()
        b.close()
