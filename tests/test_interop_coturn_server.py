"""Interop: OUR codec against coturn's ``turnserver`` (started here on loopback, own free ports,
no config file, no auth, STUN only, its own temp log/pid/db files; ended by PID).

Proves the codec encodes requests coturn accepts and decodes what coturn sends:
XOR-MAPPED-ADDRESS, OTHER-ADDRESS, RESPONSE-ORIGIN (RFC 5780), classic RFC 3489 attributes,
FINGERPRINT, and RFC 8489 section 6.2.2 framing over TCP.
"""

from __future__ import annotations

import socket

import pytest

from stunturn_diag.sansio.stun import (
    AttrType,
    MessageClass,
    StunMessage,
    Method,
    binding_request,
    decode,
    encode,
    message_length,
)
from stunturn_diag.stun_requests import fresh_binding_request
from testlib import A1, coturn_server

pytestmark = pytest.mark.interop


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
    with coturn_server(tmp_path_factory.mktemp("coturn"),
                       ["--no-auth", "--stun-only", "--no-auth-pings"]) as roles:
        yield roles


def test_binding_success_attributes(coturn):
    request = fresh_binding_request(software="stunturn-diag interop test")
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
    request = fresh_binding_request(change_ip=change_ip, change_port=change_port)
    response, source, local = _ask(encode(request), coturn["primary"], timeout=5)
    assert source == coturn[sender]
    assert response.response_origin == coturn[sender]
    assert response.mapped_address == local


def test_fingerprint_round_trip(coturn):
    response, _, local = _ask(encode(fresh_binding_request(), fingerprint=True), coturn["primary"],
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
        first, second = fresh_binding_request(), fresh_binding_request()
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
