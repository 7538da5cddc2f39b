"""Our TURN client against a real coturn ``turnserver`` on loopback.

The test writes a minimal turnserver.conf (the one README documents: TURN REST API
credentials with ``use-auth-secret``/``static-auth-secret``), starts coturn on
127.0.0.1 and a free port, ends it by PID. Through the relay: Allocate (401, then
long-term credentials), CreatePermission, a Send indication to a local UDP echo peer
and its Data indication back, ChannelBind and ChannelData both ways, Refresh 0.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from stunturn_diag.turn import (Allocated, ChannelBound, PermissionsCreated, Refreshed,
                                TurnFailure, rest_credentials)
from stunturn_diag.turn.runner import TurnSession
from testlib import _answers_binding, free_port_pair, require_tool, stop_process

pytestmark = pytest.mark.interop

SECRET, REALM = "lab-shared-secret", "stunturn.test"


def turnserver_conf(port: int, relay_low: int, workdir: Path) -> str:
    """README's minimal coturn configuration for `serve --turn-server/--turn-secret`
    (UDP and RFC 6062 TCP relaying), on loopback."""
    return "\n".join([
        "listening-ip=127.0.0.1", f"listening-port={port}", "relay-ip=127.0.0.1",
        f"min-port={relay_low}", f"max-port={relay_low + 20}",
        "use-auth-secret", f"static-auth-secret={SECRET}", f"realm={REALM}",
        "fingerprint", "no-tls", "no-dtls", "no-cli",
        "allow-loopback-peers",          # only for this loopback test: peers are 127.0.0.1
        f"log-file={workdir / 'turn.log'}", "simple-log", f"pidfile={workdir / 'turn.pid'}",
        f"userdb={workdir / 'turndb'}", ""])


def start_coturn(workdir: Path) -> tuple[subprocess.Popen, tuple[str, int]]:
    """coturn with :func:`turnserver_conf` on free loopback ports, answering STUN."""
    tool = require_tool("turnserver")
    for attempt in range(3):
        port, relay_low = free_port_pair()
        relay_low = min(relay_low, 65000)
        conf = workdir / f"turnserver-{attempt}.conf"
        conf.write_text(turnserver_conf(port, relay_low, workdir))
        with open(workdir / f"stdout-{attempt}.log", "w") as log:
            proc = subprocess.Popen([tool, "-c", str(conf)], stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=workdir)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None:
            if _answers_binding(("127.0.0.1", port)):
                return proc, ("127.0.0.1", port)
            time.sleep(0.05)
        stop_process(proc)
    pytest.fail(f"turnserver did not start; logs in {workdir}")


@pytest.fixture(scope="module")
def coturn(tmp_path_factory):
    proc, address = start_coturn(tmp_path_factory.mktemp("turn"))
    yield address
    stop_process(proc)


@pytest.fixture
def echo_peer():
    """A UDP echo server on loopback (bounded: ends with the test)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.1)
    stop = threading.Event()

    def run():
        while not stop.is_set():
            try:
                data, src = sock.recvfrom(4096)
            except (TimeoutError, OSError):
                continue
            sock.sendto(b"echo:" + data, src)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield sock.getsockname()
    stop.set()
    thread.join(2)
    sock.close()


def _credentials(ttl: int = 600) -> dict:
    return rest_credentials(SECRET, now=time.time(), ttl=ttl, random_id="test")


def test_relay_through_coturn_with_rest_credentials(coturn, echo_peer):
    cred = _credentials()
    with TurnSession(coturn, cred["username"], cred["password"]) as s:
        allocated = s.allocate(lifetime=300)
        assert isinstance(allocated, Allocated), allocated
        # RFC 8656 section 7.2: a requested lifetime below the default (600 s) gets the default
        assert allocated.relayed[0] == "127.0.0.1" and allocated.lifetime == 600
        assert s.client.realm == REALM
        assert s.create_permission(echo_peer[0]) == PermissionsCreated((echo_peer[0],))
        s.send(echo_peer, b"via send indication")
        got = s.recv(5.0)
        assert got is not None and got.data == b"echo:via send indication"
        assert got.peer == tuple(echo_peer) and got.channel is None
        assert s.channel_bind(echo_peer) == ChannelBound(tuple(echo_peer), 0x4000)
        s.send(echo_peer, b"via channel")
        got = s.recv(5.0)
        assert got is not None and got.data == b"echo:via channel" and got.channel == 0x4000
        assert s.refresh(0) == Refreshed(0)
        assert s.client.relayed is None


def test_expired_or_forged_rest_credentials_are_refused(coturn):
    expired = rest_credentials(SECRET, now=time.time() - 3600, ttl=60, random_id="old")
    forged = _credentials() | {"password": "bm90IGl0"}
    for cred in (expired, forged):
        with TurnSession(coturn, cred["username"], cred["password"]) as s:
            result = s.allocate()
            assert isinstance(result, TurnFailure) and result.code == 401, result


def test_the_credentials_serve_hands_out_relay_between_both_peers(coturn):
    """Both peers of a match allocate on coturn with the credentials from their match
    answers and talk relay to relay."""
    from stunturn_server.app import create_app
    from stunturn_server.config import ServerConfig, TurnConfig
    from test_server_turn_offer import pair

    app = create_app(ServerConfig(stun_enabled=False, wait_timeout=10, turn=TurnConfig(
        server=f"{coturn[0]}:{coturn[1]}", secret=SECRET, realm=REALM)))
    init, recv = pair(app)
    sessions = [TurnSession((a["turn"]["server"]["ip"], a["turn"]["server"]["port"]),
                            a["turn"]["username"], a["turn"]["password"]) for a in (init, recv)]
    try:
        relays = []
        for s in sessions:
            allocated = s.allocate()
            assert isinstance(allocated, Allocated), allocated
            relays.append(allocated.relayed)
        for s, other in zip(sessions, reversed(relays)):
            assert isinstance(s.create_permission(other[0]), PermissionsCreated)
        sessions[0].send(relays[1], b"initiator -> receiver")
        got = sessions[1].recv(5.0)
        assert got is not None and got.data == b"initiator -> receiver" and got.peer == relays[0]
        sessions[1].send(relays[0], b"receiver -> initiator")
        got = sessions[0].recv(5.0)
        assert got is not None and got.data == b"receiver -> initiator" and got.peer == relays[1]
        for s in sessions:
            assert s.refresh(0) == Refreshed(0)
    finally:
        for s in sessions:
            s.close()
