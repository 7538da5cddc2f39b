"""A UDP allocation over a TCP control connection (RFC 8656 section 3.1) through a real
coturn ``turnserver`` on loopback (README's minimal configuration: coturn listens on
TCP and UDP on one port), ended by PID.

- The session alone: Allocate over TCP gets a UDP relayed address; a UDP-session peer
  and the TCP-session peer bind channels to each other and datagrams go both ways
  (ChannelData padded on the stream), a Send indication before the channel too.
- The punch's relay path with one side over TCP (:class:`StreamRelayPath`) and the
  other over UDP (:class:`RelayPath`), through a real ``serve`` offering the relay:
  the same authenticated UdpChannel both ways; the allocation is refreshed while in use
  (fake clock); a relay that goes away is the peer lost, not a hang.
"""

from __future__ import annotations

import threading
import time

import pytest

from stunturn_diag.errors import PunchError
from stunturn_diag.punch.relay_path import RelayPath, StreamRelayPath, TurnTransport
from stunturn_diag.turn import Allocated, ChannelBound, PeerData, rest_credentials
from stunturn_diag.turn.runner import TurnSession
from stunturn_diag.turn.stream_runner import UdpOverTcpSession
from test_punch_relay_path import KEY, match_through
from test_turn_coturn import SECRET, coturn, start_coturn  # noqa: F401 - the fixture
from testlib import stop_process, wait_for

pytestmark = pytest.mark.interop


def _cred(n: str) -> dict:
    return rest_credentials(SECRET, now=time.time(), ttl=600, random_id=n)


def test_a_udp_allocation_over_tcp_exchanges_datagrams_with_a_udp_one(coturn):  # noqa: F811
    c1, c2 = _cred("stream1"), _cred("udp1")
    with UdpOverTcpSession(coturn, c1["username"], c1["password"]) as tcp, \
            TurnSession(coturn, c2["username"], c2["password"]) as udp:
        got = tcp.allocate()
        assert isinstance(got, Allocated) and got.relayed[0] == "127.0.0.1"
        assert tcp.client.stream and tcp.sock.type.name == "SOCK_STREAM"
        assert isinstance(udp.allocate(), Allocated)
        assert tcp.client.relayed != udp.client.relayed
        for s, other in ((tcp, udp), (udp, tcp)):
            assert isinstance(s.channel_bind(other.client.relayed), ChannelBound)
        # odd sizes: ChannelData on the stream is padded, the peer gets the exact bytes
        for size in (0, 1, 3, 5, 1199):
            data = bytes(range(256)) * 5
            tcp.send(udp.client.relayed, data[:size])
            assert udp.recv(5) == PeerData(tcp.client.relayed, data[:size], 0x4000)
            udp.send(tcp.client.relayed, data[:size] + b"!")
            assert tcp.recv(5) == PeerData(udp.client.relayed, data[:size] + b"!", 0x4000)
        # many back to back on the stream, all in order
        for i in range(50):
            udp.send(tcp.client.relayed, b"n%d" % i)
        assert [tcp.recv(5).data for _ in range(50)] == [b"n%d" % i for i in range(50)]
        # near the allocation's end (fake clock) a send refreshes it first (section 8);
        # the answer, read on the way to the peer's next datagram, renews the expiry
        later = time.monotonic() + 590
        tcp.clock = lambda: later
        tcp.client._keep_alive_after = 0
        tcp.send(udp.client.relayed, b"refresh first")
        assert udp.recv(5).data == b"refresh first"
        udp.send(tcp.client.relayed, b"after the refresh")
        assert tcp.recv(5).data == b"after the refresh"
        assert tcp.client.expires is not None and tcp.client.expires >= later + 500
        assert tcp.lost is None


def test_a_send_indication_over_tcp_before_any_channel(coturn):  # noqa: F811
    c1, c2 = _cred("stream2"), _cred("udp2")
    with UdpOverTcpSession(coturn, c1["username"], c1["password"]) as tcp, \
            TurnSession(coturn, c2["username"], c2["password"]) as udp:
        assert isinstance(tcp.allocate(), Allocated) and isinstance(udp.allocate(), Allocated)
        assert udp.create_permission(tcp.client.relayed[0]) is not None
        assert tcp.create_permission(udp.client.relayed[0]) is not None
        tcp.send(udp.client.relayed, b"indication over tcp")      # Send indication
        got = udp.recv(5)
        assert got.data == b"indication over tcp" and got.peer == tcp.client.relayed
        udp.send(tcp.client.relayed, b"and back")
        got = tcp.recv(5)                                           # a Data indication
        assert got == PeerData(udp.client.relayed, b"and back")


def _connect(client, init, recv, stream_role: str = "initiator", peer_timeout: float = 10.0):
    kinds = {stream_role: StreamRelayPath}
    paths = [kinds.get(a["role"], RelayPath).offered(client, a, a["role"]) for a in (init, recv)]
    deadline = time.monotonic() + 5
    for p in paths:
        p.start(deadline)
    out = {}
    threads = [threading.Thread(target=lambda p=p: out.__setitem__(
        p.role, p.connect(KEY, deadline, peer_timeout=peer_timeout))) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return paths, out


@pytest.mark.parametrize("stream_role", ["initiator", "receiver"])
def test_the_punch_channel_runs_over_a_udp_allocation_reached_over_tcp(  # noqa: F811
        coturn, stream_role):
    with match_through(coturn) as (client, init, recv):
        paths, chans = _connect(client, init, recv, stream_role)
        try:
            a, b = chans["initiator"], chans["receiver"]
            stream = chans[stream_role]
            assert isinstance(stream.sock.session, UdpOverTcpSession)
            assert a.peer_address == paths[1].relayed and b.peer_address == paths[0].relayed
            for n in range(20):
                a.send(b"i%d" % n)
                b.send(b"r%d" % n)
            assert [b.recv(5) for _ in range(20)] == [b"i%d" % n for n in range(20)]
            assert [a.recv(5) for _ in range(20)] == [b"r%d" % n for n in range(20)]
            assert a.stats()["bad_tag"] == 0 and b.stats()["bad_tag"] == 0
        finally:
            for ch in chans.values():
                ch.close()
        assert all(isinstance(ch.sock, TurnTransport) and ch.sock.closed for ch in chans.values())


def test_the_allocation_over_tcp_is_refreshed_while_in_use(coturn):  # noqa: F811
    """Near its expiry (section 8) the next datagram sends a Refresh on the stream first;
    coturn's answer (read by the channel's service thread) renews the allocation."""
    with match_through(coturn) as (client, init, recv):
        paths, chans = _connect(client, init, recv)
        try:
            a = chans["initiator"]
            turn = a.sock.session.client
            later = time.monotonic() + 590
            a.sock.clock = lambda: later
            turn._keep_alive_after = 0
            a.send(b"keep it")
            assert chans["receiver"].recv(5) == b"keep it"
            wait_for(lambda: turn.expires is not None and turn.expires >= later + 500,
                     what="the allocation refreshed")
        finally:
            for ch in chans.values():
                ch.close()


def test_a_relay_that_goes_away_is_a_lost_peer_not_a_hang(tmp_path):
    proc, server = start_coturn(tmp_path)
    try:
        with match_through(server) as (client, init, recv):
            paths, chans = _connect(client, init, recv, peer_timeout=1.5)
            a = chans["initiator"]
            a.send(b"before")
            assert chans["receiver"].recv(5) == b"before"
            stop_process(proc)
            wait_for(lambda: a.sock.session.lost is not None, timeout=10,
                     what="the control connection ends with the relay")
            wait_for(lambda: a.lost, timeout=10, what="the peer reported lost")
            with pytest.raises(PunchError) as err:       # the channel ends, not blocks
                a.recv(5)
            assert err.value.reason == "peer-lost"
            for ch in chans.values():
                ch.close()
    finally:
        stop_process(proc)
