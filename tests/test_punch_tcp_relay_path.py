"""punch/tcp_relay_path.py against a real coturn (TCP relaying on) on loopback and a real
`serve` offering it with ``turn_transports`` udp,tcp: both peers of a TCP match
allocate RFC 6062 TCP allocations, swap relayed addresses through /v1/relay
(``"transport": "tcp"``), the relay joins their data connections, and the same CPace
handshake + SecureStream as a direct TCP punch runs over it; closing frees the
allocation; a relay that offers UDP only gives no TCP relay path; a silent relay is a
relay failure by the deadline."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from stunturn_diag.errors import PunchError
from stunturn_diag.punch.tcp_relay_path import RelayedStream, TcpRelayPath
from test_punch_relay_path import match_through
from test_turn_coturn import coturn  # noqa: F401 - the fixture
from testlib import wait_for

pytestmark = pytest.mark.interop
KEY = "tcp-relay-path-key"
RENDEZVOUS = "6b" * 32


@pytest.fixture
def matched(coturn):  # noqa: F811
    with match_through(coturn, "tcp", RENDEZVOUS, turn_transports="udp,tcp") as answers:
        yield answers


def _connect_both(client, init, recv, *, receiver_late: float = 0.0):
    paths = [TcpRelayPath.offered(client, a, a["role"]) for a in (init, recv)]
    assert all(p is not None for p in paths)
    deadline = time.monotonic() + 5
    for p in paths:
        p.start(deadline)
    out = {}

    def run(p):
        if p.role == "receiver":
            time.sleep(receiver_late)
        out[p.role] = p.connect(KEY, deadline)
    threads = [threading.Thread(target=run, args=(p,)) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return paths, out


@pytest.mark.parametrize("receiver_late", [0.0, 0.3])
def test_both_peers_connect_a_tcp_stream_through_the_relay(matched, receiver_late):
    client, init, recv = matched
    paths, streams = _connect_both(client, init, recv, receiver_late=receiver_late)
    a, b = streams["initiator"], streams["receiver"]
    try:
        assert isinstance(a, RelayedStream) and isinstance(b, RelayedStream)
        assert a.peer_address == paths[1].relayed and b.peer_address == paths[0].relayed
        assert a.local_address == paths[0].relayed != paths[1].relayed
        a.sendall(b"through the TCP relay")
        assert b.recv(100) == b"through the TCP relay"
        b.sendall(b"and back" * 10000)             # more than one record
        got = b""
        while len(got) < 80000:
            got += a.recv(65536)
        assert got == b"and back" * 10000
        assert a.stats()["truncated"] is False
    finally:
        for s in (a, b):
            s.close()
    sessions = [p.session for p in paths]
    assert all(s.sock.fileno() == -1 for s in sessions)      # control connections closed


def test_a_relay_without_tcp_gives_no_tcp_relay_path(matched):
    client, init, _recv = matched
    udp_only = dict(init, turn=dict(init["turn"], transports=["udp"]))
    assert TcpRelayPath.offered(client, udp_only, "initiator") is None
    assert TcpRelayPath.offered(client, {"match_id": "ab"}, "initiator") is None


def test_an_unused_tcp_relay_path_releases_its_allocation(matched):
    client, init, _recv = matched
    path = TcpRelayPath.offered(client, init, "initiator")
    path.start(time.monotonic() + 0.5)          # the peer never posts: gives up at 0.5 s
    wait_for(lambda: path.relayed is not None, what="allocated")
    path.close()
    wait_for(lambda: path.session.sock.fileno() == -1, what="the allocation released")


def test_a_silent_tcp_relay_is_a_relay_failure_within_the_deadline():
    listener = socket.socket()               # accepts the TCP connection, never answers
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    offer = {"match_id": "ab" * 8, "turn": {
        "server": {"ip": "127.0.0.1", "port": listener.getsockname()[1]}, "transports": ["tcp"],
        "username": "1:x", "password": "p", "exchange": {"path": "/v1/relay", "token": "t"}}}
    path = TcpRelayPath.offered(None, offer, "initiator")
    started = time.monotonic()
    try:
        with pytest.raises(PunchError) as err:
            path.connect(KEY, started + 2)
        assert err.value.reason == "relay-failed"
        assert time.monotonic() < started + 2 + 1        # bounded by the deadline
    finally:
        path.close()
        listener.close()


def test_a_half_close_through_the_relay_loses_nothing(matched):
    """coturn has no TCP half-close (a FIN closes both data connections and drops what
    it buffers): shutdown(SHUT_WR) sends the FIN record only, close() lingers for the
    peer's close, so 1 MB one way and the answer after the half-close both arrive."""
    import socket as _socket

    from stunturn_diag.punch.tcp_relay_path import LINGER

    client, init, recv = matched
    _paths, streams = _connect_both(client, init, recv)
    a, b = streams["initiator"], streams["receiver"]
    blob = bytes(range(256)) * 4096                     # 1 MiB
    sender = threading.Thread(target=lambda: (a.sendall(blob), a.shutdown(_socket.SHUT_WR)))
    sender.start()
    got = bytearray()
    while chunk := b.recv(65536):
        got += chunk
    sender.join(10)
    assert bytes(got) == blob and not b.truncated       # the FIN record, not a cut
    b.sendall(b"answer after the half-close")
    b.shutdown(_socket.SHUT_WR)
    assert a.recv(100) == b"answer after the half-close" and a.recv(100) == b""
    started = time.monotonic()
    closer = threading.Thread(target=b.close)
    closer.start()
    a.close()
    closer.join(LINGER + 2)
    assert time.monotonic() - started < LINGER + 1.5
