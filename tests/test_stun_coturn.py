"""Codec interop with a real, independent STUN/TURN implementation: coturn on loopback.

coturn decodes what we encode (FINGERPRINT, RFC 5780 CHANGE-REQUEST / PADDING,
long-term MESSAGE-INTEGRITY) and we decode what it sends (XOR-MAPPED-ADDRESS,
RESPONSE-ORIGIN, OTHER-ADDRESS, ERROR-CODE 401 with REALM/NONCE, its own
MESSAGE-INTEGRITY verified with our long-term key).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from stunturn_diag.sansio.stun import (
    AttrType,
    ChangeRequest,
    ErrorCode,
    MessageClass,
    Method,
    StunMessage,
    binding_request,
    decode,
    encode,
    long_term_key,
    new_transaction_id,
)
from stunturn_diag.stun_requests import fresh_binding_request, fresh_transaction_id
from testlib import coturn_server

pytestmark = pytest.mark.interop

USER, PASSWORD, REALM = "alice", "s3cret-pw", "stunturn.test"
REQUESTED_TRANSPORT_UDP = (0x0019, b"\x11\x00\x00\x00")  # RFC 8656 section 18.7


@dataclass
class Coturn:
    primary: tuple[str, int]
    alternate: tuple[str, int]


def _free_udp_port(ip: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((ip, 0))
        return sock.getsockname()[1]


def _transact(sock: socket.socket, request: bytes, server: tuple[str, int],
              attempts: int = 5) -> tuple[bytes, tuple[str, int]]:
    """Send and wait for the answer with the same transaction id (bounded retries)."""
    tid = request[8:20]
    for _ in range(attempts):
        sock.sendto(request, server)
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data, source = sock.recvfrom(4096)
            except socket.timeout:
                break
            if data[8:20] == tid:
                return data, source
    raise AssertionError(f"no answer from coturn at {server}")


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    relay_low = min(_free_udp_port("127.0.0.1"), 65000)
    with coturn_server(tmp_path_factory.mktemp("coturn"), [
            "--relay-ip", "127.0.0.1", "--min-port", str(relay_low), "--max-port", str(relay_low + 20),
            "-a", "-u", f"{USER}:{PASSWORD}", "-r", REALM, "-f"]) as roles:
        yield Coturn(roles["primary"], roles["alt-both"])


@pytest.fixture
def client() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock


def test_binding_with_fingerprint(coturn: Coturn, client: socket.socket) -> None:
    request = fresh_binding_request(software="stunturn-diag test")
    data, source = _transact(client, encode(request, fingerprint=True), coturn.primary)
    reply = decode(data)  # FINGERPRINT, if coturn sent one, verified here
    assert reply.method == Method.BINDING and reply.msg_class == MessageClass.SUCCESS
    assert reply.transaction_id == request.transaction_id
    assert reply.mapped_address == client.getsockname()
    assert reply.get(AttrType.MAPPED_ADDRESS) == client.getsockname()
    assert reply.response_origin == coturn.primary == source
    assert reply.other_address == coturn.alternate
    assert reply.software and "Coturn" in reply.software


@pytest.mark.parametrize("change_ip, change_port", [(False, True), (True, True), (True, False)])
def test_change_request_is_honoured(coturn: Coturn, client: socket.socket,
                                    change_ip: bool, change_port: bool) -> None:
    """RFC 5780 section 7.2: the answer comes from the alternate IP and/or port."""
    request = fresh_binding_request(change_ip=change_ip, change_port=change_port)
    data, source = _transact(client, encode(request), coturn.primary)
    reply = decode(data)
    expected = (coturn.alternate[0] if change_ip else coturn.primary[0],
                coturn.alternate[1] if change_port else coturn.primary[1])
    assert source == expected == reply.response_origin
    assert reply.mapped_address == client.getsockname()


def test_padding_gets_padded_response(coturn: Coturn, client: socket.socket) -> None:
    """RFC 5780 section 7.6: PADDING in the request gets a padded response.

    (coturn pads to a fixed 1500 bytes rather than the request's size; we only
    check that its large PADDING decodes and the FINGERPRINT after it verifies.)
    """
    data, _ = _transact(client, encode(fresh_binding_request(padding=200), fingerprint=True),
                        coturn.primary)
    reply = decode(data)
    assert len(reply.get(AttrType.PADDING, b"")) >= 200
    assert reply.mapped_address == client.getsockname()


def test_long_term_credentials_both_directions(coturn: Coturn, client: socket.socket) -> None:
    """RFC 8489 section 9.2: 401 with REALM/NONCE, then an authenticated Allocate."""
    first = StunMessage(Method.ALLOCATE, MessageClass.REQUEST, fresh_transaction_id(),
                        [REQUESTED_TRANSPORT_UDP])
    data, _ = _transact(client, encode(first, fingerprint=True), coturn.primary)
    challenge = decode(data)
    assert challenge.msg_class == MessageClass.ERROR
    assert challenge.error == ErrorCode(401, challenge.error.reason)
    assert challenge.get(AttrType.REALM) == REALM
    nonce = challenge.get(AttrType.NONCE)
    assert isinstance(nonce, str) and nonce

    key = long_term_key(USER, REALM, PASSWORD)
    second = StunMessage(Method.ALLOCATE, MessageClass.REQUEST, fresh_transaction_id(), [
        REQUESTED_TRANSPORT_UDP, (AttrType.USERNAME, USER), (AttrType.REALM, REALM),
        (AttrType.NONCE, nonce)])
    data, _ = _transact(client, encode(second, integrity_key=key, fingerprint=True), coturn.primary)
    allocated = decode(data, integrity_key=key)  # coturn's MESSAGE-INTEGRITY verifies with our key
    assert allocated.msg_class == MessageClass.SUCCESS, allocated.error
    relayed = allocated.get(AttrType.XOR_RELAYED_ADDRESS)
    assert relayed is not None and relayed[0] == "127.0.0.1"
    assert allocated.mapped_address == client.getsockname()

    # release the allocation: Refresh with LIFETIME 0 (RFC 8656 section 7)
    refresh = StunMessage(Method.REFRESH, MessageClass.REQUEST, fresh_transaction_id(), [
        (0x000D, b"\x00\x00\x00\x00"), (AttrType.USERNAME, USER), (AttrType.REALM, REALM),
        (AttrType.NONCE, nonce)])
    data, _ = _transact(client, encode(refresh, integrity_key=key), coturn.primary)
    assert decode(data, integrity_key=key).msg_class == MessageClass.SUCCESS


def test_wrong_password_is_refused(coturn: Coturn, client: socket.socket) -> None:
    first = StunMessage(Method.ALLOCATE, MessageClass.REQUEST, fresh_transaction_id(),
                        [REQUESTED_TRANSPORT_UDP])
    nonce = decode(_transact(client, encode(first), coturn.primary)[0]).get(AttrType.NONCE)
    bad_key = long_term_key(USER, REALM, "wrong")
    second = StunMessage(Method.ALLOCATE, MessageClass.REQUEST, fresh_transaction_id(), [
        REQUESTED_TRANSPORT_UDP, (AttrType.USERNAME, USER), (AttrType.REALM, REALM),
        (AttrType.NONCE, nonce)])
    reply = decode(_transact(client, encode(second, integrity_key=bad_key), coturn.primary)[0])
    assert reply.msg_class == MessageClass.ERROR and reply.error.code == 401


def test_unknown_comprehension_required_attribute_gets_420(coturn: Coturn,
                                                          client: socket.socket) -> None:
    """RFC 8489 section 6.3.1.1: 420 with UNKNOWN-ATTRIBUTES naming our type."""
    request = fresh_binding_request().add(0x7F31, b"????")
    reply = decode(_transact(client, encode(request), coturn.primary)[0])
    assert reply.msg_class == MessageClass.ERROR and reply.error.code == 420
    assert 0x7F31 in reply.get(AttrType.UNKNOWN_ATTRIBUTES)
    assert reply.change_request == ChangeRequest(False, False)
