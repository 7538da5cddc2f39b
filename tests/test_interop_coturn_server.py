"""Interop: OUR codec against coturn's ``turnserver`` (started here on loopback, own free ports,
no config file, no auth, STUN only, its own temp log/pid/db files; ended by PID).

Proves the codec encodes requests coturn accepts and decodes what coturn sends:
XOR-MAPPED-ADDRESS, OTHER-ADDRESS, RESPONSE-ORIGIN (RFC 5780), classic RFC 3489 attributes,
FINGERPRINT, and RFC 8489 section 6.2.2 framing over TCP.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import pytest

from stunturn_diag.stun import (
    AttrType,
    MessageClass,
    StunMessage,
    Method,
    binding_request,
    decode,
    encode,
    message_length,
)

pytestmark = pytest.mark.interop
A1, A2 = "127.0.0.1", "127.0.0.2"


def _free_port_pair() -> tuple[int, int]:
    """Two ports free for UDP and TCP on both loopback addresses (checked, then released)."""
    while True:
        ports = []
        for _ in range(2):
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            probe.bind((A1, 0))
            ports.append(probe.getsockname()[1])
            probe.close()
        try:
            held = []
            for ip in (A1, A2):
                for port in ports:
                    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                        sock = socket.socket(socket.AF_INET, kind)
                        held.append(sock)
                        sock.bind((ip, port))
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
        if ports[0] != ports[1]:
            return ports[0], ports[1]


def _ask(request: bytes, server: tuple[str, int], timeout: float = 0.2):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((A1, 0))
    sock.settimeout(timeout)
    try:
        sock.sendto(request, server)
        data, source = sock.recvfrom(4096)
        return decode(data), source, sock.getsockname()
    finally:
        sock.close()


@pytest.fixture(scope="module")
def coturn(tmp_path_factory):
    tool = shutil.which("turnserver")
    if tool is None:
        message = "coturn's turnserver is not installed (apt-get install coturn)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    tmp = tmp_path_factory.mktemp("coturn")
    for attempt in range(3):
        p1, p2 = _free_port_pair()
        log = open(tmp / f"stdout-{attempt}.log", "w")
        proc = subprocess.Popen(
            [tool, "-n", "--no-cli", "--no-auth", "--stun-only", "--no-tls", "--no-dtls",
             "-L", A1, "-L", A2, "-p", str(p1), "--alt-listening-port", str(p2),
             "--log-file", str(tmp / f"turn-{attempt}.log"), "--simple-log",
             "--pidfile", str(tmp / f"turn-{attempt}.pid"), "--userdb", str(tmp / "turndb"),
             "--no-auth-pings"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            ready = False
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    _ask(encode(binding_request()), (A1, p1))
                    ready = True
                    break
                except OSError:  # timeout or ECONNREFUSED while it starts
                    continue
            if ready:
                yield {"primary": (A1, p1), "alt-port": (A1, p2), "alt-ip": (A2, p1),
                       "alt-both": (A2, p2)}
                return
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
            log.close()
    pytest.fail(f"turnserver did not answer STUN on loopback; logs in {tmp}")


def test_binding_success_attributes(coturn):
    request = binding_request(software="stunturn-diag interop test")
    response, source, local = _ask(encode(request), coturn["primary"], timeout=5)
    assert response.msg_class == MessageClass.SUCCESS
    assert response.transaction_id == request.transaction_id
    assert source == coturn["primary"]
    assert response.get(AttrType.XOR_MAPPED_ADDRESS) == local
    assert response.mapped_address == local
    assert response.get(AttrType.RESPONSE_ORIGIN) == coturn["primary"]
    assert response.get(AttrType.OTHER_ADDRESS) == coturn["alt-both"]


@pytest.mark.parametrize("change_ip,change_port,sender", [
    (True, False, "alt-ip"), (False, True, "alt-port"), (True, True, "alt-both")])
def test_change_request_is_honoured(coturn, change_ip, change_port, sender):
    request = binding_request(change_ip=change_ip, change_port=change_port)
    response, source, local = _ask(encode(request), coturn["primary"], timeout=5)
    assert source == coturn[sender]
    assert response.response_origin == coturn[sender]
    assert response.mapped_address == local


def test_fingerprint_round_trip(coturn):
    response, _, local = _ask(encode(binding_request(), fingerprint=True), coturn["primary"],
                              timeout=5)
    assert response.mapped_address == local
    assert response.attributes[-1][0] == AttrType.FINGERPRINT  # and decode() verified it


def test_classic_rfc3489_request(coturn):
    tid = bytes(range(0x30, 0x40))
    request = StunMessage(Method.BINDING, MessageClass.REQUEST, tid)
    response, source, local = _ask(encode(request), coturn["primary"], timeout=5)
    assert response.classic and response.transaction_id == tid
    assert response.get(AttrType.XOR_MAPPED_ADDRESS) is None
    assert response.get(AttrType.MAPPED_ADDRESS) == local
    assert response.get(AttrType.SOURCE_ADDRESS) == coturn["primary"]
    assert response.get(AttrType.CHANGED_ADDRESS) == coturn["alt-both"]
    assert response.software.startswith("Coturn")


def test_tcp_binding_with_framing(coturn):
    with socket.create_connection(coturn["alt-ip"], timeout=5) as sock:
        first, second = binding_request(), binding_request()
        sock.sendall(encode(first) + encode(second))
        got = []
        buffer = b""
        while len(got) < 2:
            chunk = sock.recv(4096)
            assert chunk, "coturn closed the connection"
            buffer += chunk
            while len(buffer) >= 20 and len(buffer) >= message_length(buffer[:20]):
                size = message_length(buffer[:20])
                got.append(decode(buffer[:size]))
                buffer = buffer[size:]
        assert [m.transaction_id for m in got] == [first.transaction_id, second.transaction_id]
        assert got[0].mapped_address == sock.getsockname()
        assert got[0].response_origin == coturn["alt-ip"]
