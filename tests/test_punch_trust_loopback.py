"""Issue 10 end to end on loopback: what the signaling server receives, what the peers get.

A recording TCP proxy sits in front of the real server: every byte the server is
sent passes through it, so the test sees exactly what the server (or anyone on the
HTTP path) learns. The peers punch through the real library API.
"""

from __future__ import annotations

import socket
import threading

import pytest

from stunturn_diag.punch import PunchResult, initiate, receive
from stunturn_diag.punch.channel import UdpChannel
from stunturn_diag.sansio.punch.keys import rendezvous_id
from stunturn_diag.punch.secure_stream import SecureStream
from stunturn_server.config import ServerConfig
from stunturn_server.runner import start_server

KEY = "loopback-trust-key-Zq8"


class RecordingProxy:
    """Forwards TCP connections to ``upstream`` and records what the client sent (bounded)."""

    def __init__(self, upstream: tuple[str, int], max_connections: int = 64) -> None:
        self.upstream = upstream
        self.sent = bytearray()
        self._lock = threading.Lock()
        self._srv = socket.create_server(("127.0.0.1", 0))
        self._srv.settimeout(0.2)
        self.url = "http://127.0.0.1:%d" % self._srv.getsockname()[1]
        self._stop = threading.Event()
        self._max = max_connections
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, daemon=True)
        self._accept.start()

    def _serve(self) -> None:
        for _ in range(self._max):
            while not self._stop.is_set():
                try:
                    client, _ = self._srv.accept()
                    break
                except socket.timeout:
                    continue
            else:
                return
            server = socket.create_connection(self.upstream, timeout=30)
            for src, dst, record in ((client, server, True), (server, client, False)):
                t = threading.Thread(target=self._pump, args=(src, dst, record), daemon=True)
                t.start()
                self._threads.append(t)

    def _pump(self, src: socket.socket, dst: socket.socket, record: bool) -> None:
        src.settimeout(30)
        try:
            while data := src.recv(65536):
                if record:
                    with self._lock:
                        self.sent += data
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self._stop.set()
        self._accept.join(5)
        self._srv.close()


@pytest.fixture
def proxied():
    handle = start_server(ServerConfig(http_port=0, stun_port=0, wait_timeout=10))
    proxy = RecordingProxy(handle.http_address)
    yield proxy
    proxy.close()
    handle.stop()


def _pair(url: str, protocol: str) -> tuple[PunchResult, PunchResult]:
    box: dict = {}

    def run_initiator() -> None:
        try:
            box["ini"] = initiate(url, KEY, "127.0.0.1", protocol=protocol)
        except Exception as exc:     # noqa: BLE001 - handed to the test
            box["ini"] = exc

    t = threading.Thread(target=run_initiator)
    t.start()
    rec = receive(url, KEY, protocol=protocol, wait=5, wait_interval=0.05)
    t.join(20)
    assert isinstance(box.get("ini"), PunchResult), box
    return box["ini"], rec


@pytest.mark.parametrize("protocol", ["udp", "tcp"])
def test_the_server_never_receives_the_key_and_the_channel_is_private(proxied, protocol):
    ini, rec = _pair(proxied.url, protocol)
    try:
        wire = bytes(proxied.sent)
        assert b"POST /v1/initiate" in wire and b"POST /v1/checkin" in wire
        assert rendezvous_id(KEY).encode() in wire               # what it pairs on
        assert KEY.encode() not in wire and b"access_key" not in wire
        assert KEY[:10].encode() not in wire
        kind = UdpChannel if protocol == "udp" else SecureStream
        assert isinstance(ini.connection, kind) and isinstance(rec.connection, kind)
        if protocol == "udp":
            ini.connection.send(b"hello receiver")
            assert rec.connection.recv(5) == b"hello receiver"
        else:
            ini.connection.sendall(b"hello receiver")
            assert rec.connection.recv(100) == b"hello receiver"
            rec.connection.sendall(b"hello initiator")
            assert ini.connection.recv(100) == b"hello initiator"
    finally:
        ini.close()
        rec.close()
