"""punch/relay_path.py against a real coturn on loopback and a real `serve` (gevent):
two peers of a match exchange relayed addresses through /v1/relay and get the same
authenticated UdpChannel through the relay; a token of another match cannot use the
exchange; an unused relay path frees its allocation."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest

from stunturn_diag.errors import PunchError
from stunturn_diag.punch.relay_path import RelayPath, TurnTransport
from stunturn_diag.signaling import SignalingClient
from stunturn_server.config import ServerConfig, TurnConfig
from stunturn_server.runner import start_server
from test_turn_coturn import REALM, SECRET, coturn  # noqa: F401 - the fixture
from testlib import wait_for

pytestmark = pytest.mark.interop
KEY = "relay-path-key-1"
RENDEZVOUS = "5a" * 32            # what the server sees instead of the key (issue 10)


@contextlib.contextmanager
def match_through(relay, protocol: str = "udp", rendezvous: str = RENDEZVOUS, **extra):
    """A real server offering the loopback coturn ``relay`` (more ``turn_*`` settings in
    ``extra``); yields the client and both answers of a ``protocol`` match."""
    config = ServerConfig(http_host="127.0.0.1", http_port=0, stun_enabled=False, wait_timeout=10,
                          turn=TurnConfig(server=f"{relay[0]}:{relay[1]}", secret=SECRET, realm=REALM,
                                          **{k.removeprefix("turn_"): v for k, v in extra.items()}))
    with start_server(config) as handle:
        client = SignalingClient(handle.http_url)
        box = {}
        t = threading.Thread(target=lambda: box.setdefault(
            "init", client.initiate(rendezvous, "127.0.0.1", protocol, timeout=10)))
        t.start()
        wait_for(lambda: client.health()["waiting"] == 1, what="the initiator waits")
        recv = client.checkin(rendezvous)
        t.join(10)
        yield client, box["init"], recv


@pytest.fixture
def matched(coturn):  # noqa: F811
    """A real server offering the loopback coturn; both match answers."""
    with match_through(coturn) as answers:
        yield answers


def _connect_both(client, init, recv):
    paths = [RelayPath.offered(client, a, a["role"]) for a in (init, recv)]
    deadline = time.monotonic() + 5
    for p in paths:
        p.start(deadline)
    out = {}
    threads = [threading.Thread(target=lambda p=p: out.__setitem__(p.role, p.connect(KEY, deadline)))
               for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return paths, out


def test_both_peers_connect_through_the_relay(matched):
    client, init, recv = matched
    paths, chans = _connect_both(client, init, recv)
    try:
        a, b = chans["initiator"], chans["receiver"]
        assert a.peer_address == paths[1].relayed and b.peer_address == paths[0].relayed
        assert a.local_address == paths[0].relayed
        a.send(b"through the relay")
        assert b.recv(5) == b"through the relay"
        b.send(b"and back")
        assert a.recv(5) == b"and back"
        assert isinstance(a.sock, TurnTransport)
        assert a.stats()["bad_tag"] == 0 and a.stats()["foreign"] == 0
    finally:
        for ch in chans.values():
            ch.close()
    assert all(ch.sock.closed for ch in chans.values())


def test_the_allocation_is_refreshed_while_in_use(matched):
    """Near its expiry (RFC 8656 section 8) the next datagram sends a Refresh first;
    coturn's answer renews the allocation (read by the channel's service thread)."""
    client, init, recv = matched
    paths, chans = _connect_both(client, init, recv)
    try:
        a = chans["initiator"]
        turn = a.sock.session.client
        old = turn.expires
        later = time.monotonic() + 590          # 10 s before the 600 s lifetime ends
        a.sock.clock = lambda: later
        turn._keep_alive_after = 0            # the next send checks (KEEP_ALIVE_EVERY)
        assert turn.refresh_due(a.sock.clock())
        a.send(b"keep it")
        assert chans["receiver"].recv(5) == b"keep it"
        # expires = the fake now + the granted lifetime: only a Refresh answer sets that
        wait_for(lambda: turn.expires is not None and turn.expires >= later + 500,
                 what="the allocation refreshed")
        assert turn.expires > old + 400      # renewed from the (fake) now, not the allocation
    finally:
        for ch in chans.values():
            ch.close()


def test_a_token_of_another_match_cannot_use_the_exchange(matched):

    client, init, _recv = matched
    stolen = dict(init, match_id="0" * 16)      # the initiator's token, another match id
    path = RelayPath.offered(client, stolen, "initiator")
    with pytest.raises(PunchError) as err:
        path.connect(KEY, time.monotonic() + 3)
    assert err.value.reason == "relay-failed" and "403" in err.value.message
    path.close()


def test_an_unused_relay_path_releases_its_allocation(matched):

    client, init, _recv = matched
    path = RelayPath.offered(client, init, "initiator")
    path.start(time.monotonic() + 0.5)          # the peer never posts: gives up at 0.5 s
    wait_for(lambda: path.relayed is not None, what="allocated")
    path.close()
    wait_for(lambda: path.session.sock.fileno() == -1, what="the allocation released")
    assert path.session.client.relayed is not None     # Refresh 0 was sent, not awaited


def test_no_relay_without_an_offer_or_exchange():
    assert RelayPath.offered(None, {"match_id": "ab"}, "initiator") is None
    assert RelayPath.offered(None, {"turn": {"server": {"ip": "192.0.2.1", "port": 3478},
                                            "username": "u", "password": "p"}}, "initiator") is None


def test_a_silent_relay_is_a_relay_failure_within_the_deadline():
    from testlib import free_port

    offer = {"match_id": "ab" * 8, "turn": {
        "server": {"ip": "127.0.0.1", "port": free_port(socket.SOCK_DGRAM)},
        "username": "1:x", "password": "p", "exchange": {"path": "/v1/relay", "token": "t"}}}
    path = RelayPath.offered(None, offer, "initiator")
    started = time.monotonic()
    with pytest.raises(PunchError) as err:
        path.connect(KEY, started + 3)
    assert err.value.reason == "relay-failed" and "did not answer" in err.value.message
    assert time.monotonic() < started + 3 + 1        # bounded by the deadline
    path.close()
