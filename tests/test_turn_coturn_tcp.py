"""TURN TCP allocations (RFC 6062) through a real coturn ``turnserver`` on loopback.

coturn runs with README's minimal configuration (TCP relaying on: no ``no-tcp-relay``)
plus ``allow-loopback-peers`` and loopback addresses, ended by PID. Two allocations
talk to each other as two punch peers do: each permits the other's relayed IP, one
Connects to the other's relayed address, the other takes the ConnectionAttempt, both
bind a data connection, bytes flow both ways, then the punch's CPace handshake and
SecureStream run over the two data connections unchanged. Also: 446 on a second
Connect, 447 for a peer that does not listen (bounded), and a relay that goes away
ends the stream instead of hanging it.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from stunturn_diag.sansio.turn import tcp as tturn
from stunturn_diag.turn import Allocated, PermissionsCreated, TurnFailure, rest_credentials
from stunturn_diag.turn.tcp_runner import TcpTurnSession
from test_turn_coturn import SECRET, start_coturn
from testlib import stop_process, wait_for

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def coturn(tmp_path_factory):
    proc, address = start_coturn(tmp_path_factory.mktemp("turn-tcp"))
    yield address
    stop_process(proc)


def _session(server, n: int) -> TcpTurnSession:
    cred = rest_credentials(SECRET, now=time.time(), ttl=600, random_id=f"tcp{n}")
    s = TcpTurnSession(server, cred["username"], cred["password"])
    assert isinstance(s.allocate(), Allocated)
    return s


def _pair(server):
    """Two TCP allocations with permissions for each other; the data connections."""
    a, b = _session(server, 1), _session(server, 2)
    for s, other in ((a, b), (b, a)):
        assert s.create_permission(other.client.relayed[0]) == \
            PermissionsCreated((other.client.relayed[0],))
    got = {}
    accept = threading.Thread(target=lambda: got.update(
        b=b.accept_stream(a.client.relayed, timeout=5.0)))
    accept.start()
    got["a"] = a.connect_stream(b.client.relayed, timeout=5.0)
    accept.join(6)
    (da, why_a), (db, why_b) = got["a"], got["b"]
    assert da is not None and db is not None, (why_a, why_b)
    return a, b, da, db


def test_two_tcp_allocations_carry_a_byte_stream_and_the_secure_channel(coturn):
    from stunturn_diag.punch.handshake_runner import authenticate_stream

    a, b, da, db = _pair(coturn)
    try:
        assert a.client.relayed != b.client.relayed
        da.sendall(b"initiator -> receiver")
        db.settimeout(5)
        assert db.recv(100) == b"initiator -> receiver"
        db.sendall(b"receiver -> initiator")
        da.settimeout(5)
        assert da.recv(100) == b"receiver -> initiator"
        # the same handshake and private stream as a direct TCP punch, over the relay
        key, match = "relay-test-key", "00112233aabbccdd"
        deadline = time.monotonic() + 10
        streams = {}
        t = threading.Thread(target=lambda: streams.update(
            r=authenticate_stream(db, key, match, "receiver", deadline)))
        t.start()
        streams["i"] = authenticate_stream(da, key, match, "initiator", deadline)
        t.join(10)
        si, sr = streams["i"], streams["r"]
        si.sendall(b"sealed one way")
        assert sr.recv(100) == b"sealed one way"
        sr.sendall(b"sealed the other")
        assert si.recv(100) == b"sealed the other"
        # a second Connect to the same peer: 446 Connection Already Exists
        again = a.connect(b.client.relayed)
        assert isinstance(again, TurnFailure) and again.code == tturn.CONNECTION_ALREADY_EXISTS
    finally:
        for s in (da, db):
            s.close()
        for s in (a, b):
            s.close()


def test_connect_to_a_peer_that_does_not_listen_is_447_by_the_deadline(coturn):
    a = _session(coturn, 3)
    try:
        with socket.socket() as closed:          # a port that nobody listens on
            closed.bind(("127.0.0.1", 0))
            port = closed.getsockname()[1]
        assert isinstance(a.create_permission("127.0.0.1"), PermissionsCreated)
        t0 = time.monotonic()
        data, why = a.connect_stream(("127.0.0.1", port), timeout=1.5)
        assert data is None and "447" in why, why
        assert time.monotonic() - t0 < 3.0
        # nobody connects to us either: bounded, with the reason
        data, why = a.accept_stream("127.0.0.1", timeout=0.3)
        assert data is None and "did not connect" in why
    finally:
        a.close()


def test_a_relay_that_goes_away_ends_the_stream_not_hangs_it(tmp_path):
    proc, server = start_coturn(tmp_path)
    try:
        a, b, da, db = _pair(server)
        a.keep_alive(da, b.client.relayed[0])
        b.keep_alive(db, a.client.relayed[0])
        stop_process(proc)                       # the relay is gone
        t0 = time.monotonic()
        da.settimeout(5)
        try:
            rest = da.recv(100)
        except OSError:
            rest = b""
        assert rest == b"" and time.monotonic() - t0 < 5.0
        wait_for(lambda: a.lost or b.lost, timeout=5, what="the control connection is seen lost")
        for s in (da, db, a, b):
            s.close()
    finally:
        stop_process(proc)


def test_only_the_expected_peer_is_accepted_and_the_allocation_is_refreshed_in_use(coturn):
    """A third allocation connecting first is not taken for the peer; while the stream
    is in use the control connection refreshes the allocation before it expires."""
    a, b, stranger = _session(coturn, 4), _session(coturn, 5), _session(coturn, 6)
    data = []
    try:
        ip = b.client.relayed[0]
        for s in (a, b, stranger):
            assert isinstance(s.create_permission(ip), PermissionsCreated)
        early, why = stranger.connect_stream(b.client.relayed, timeout=3.0)
        assert early is not None, why
        data.append(early)
        got = {}
        accept = threading.Thread(target=lambda: got.update(
            b=b.accept_stream(a.client.relayed, timeout=5.0)))
        accept.start()
        da, why = a.connect_stream(b.client.relayed, timeout=5.0)
        accept.join(6)
        db, why_b = got["b"]
        assert da is not None and db is not None, (why, why_b)
        data += [da, db]
        da.sendall(b"from the expected peer")
        db.settimeout(5)
        assert db.recv(100) == b"from the expected peer"
        # the stream in use, 10 s before the allocation's 600 s would end (a fake clock)
        turn = a.client
        old, later = turn.expires, time.monotonic() + 590
        a.clock = lambda: later
        a.keep_alive(da, ip)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (turn.expires and turn.expires >= later + 500):
            time.sleep(0.05)
        assert turn.expires >= later + 500 and turn.expires > old + 400   # a Refresh answer
        da.sendall(b"still relayed")
        assert db.recv(100) == b"still relayed"
    finally:
        for s in data:
            s.close()
        for s in (a, b, stranger):
            s.close()
