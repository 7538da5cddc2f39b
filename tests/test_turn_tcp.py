"""The sans-IO TURN TCP allocation client (RFC 6062) and the stream framing of RFC 8489
section 6.2.2 / RFC 8656 section 12.5, against hand-built RFC message layouts and a
scripted server on our STUN codec."""

from __future__ import annotations

import struct

import pytest

from stunturn_diag.errors import TurnError
from stunturn_diag.sansio.stun import (AttrType, ErrorCode, MessageClass, Method, StunMessage,
                                       decode, encode, long_term_key)
from stunturn_diag.sansio.stun.constants import MAGIC_COOKIE
from stunturn_diag.sansio.turn.client import (LIFETIME, REQUESTED_TRANSPORT, Allocated, Challenged,
                                              TurnFailure, channel_data)
from stunturn_diag.sansio.turn.tcp import (CONNECTION_ID, Connected, ConnectionAttempt,
                                           ConnectionBound, StreamFramer, TcpTurnClient,
                                           frame_length)

USER, PASSWORD, REALM, NONCE = "alice", "pw", "stunturn.test", "n0nce"
KEY = long_term_key(USER, REALM, PASSWORD)
RELAYED, MAPPED, PEER = ("198.51.100.10", 49200), ("203.0.113.2", 40000), ("198.51.100.10", 49201)


def tid(n: int) -> bytes:
    return bytes([n]) * 12


def answer(request: bytes, msg_class, attrs, *, key: bytes | None = KEY) -> bytes:
    req = decode(request)
    return encode(StunMessage(req.method, msg_class, req.transaction_id, attrs), integrity_key=key)


def error(request: bytes, code: int, *, key: bytes | None = KEY, nonce: str | None = None) -> bytes:
    attrs = [(AttrType.ERROR_CODE, ErrorCode(code, "x"))]
    if nonce is not None:
        attrs += [(AttrType.REALM, REALM), (AttrType.NONCE, nonce)]
    return answer(request, MessageClass.ERROR, attrs, key=key)


def allocated() -> TcpTurnClient:
    c = TcpTurnClient(USER, PASSWORD)
    [ev] = c.receive(error(c.allocate(tid(1), 0.0), 401, key=None, nonce=NONCE), 0.0)
    second = c.retry(ev.transaction_id, tid(2), 0.0)
    [ok] = c.receive(answer(second, MessageClass.SUCCESS, [
        (AttrType.XOR_RELAYED_ADDRESS, RELAYED), (AttrType.XOR_MAPPED_ADDRESS, MAPPED),
        (LIFETIME, (600).to_bytes(4, "big"))]), 0.0)
    assert ok == Allocated(RELAYED, MAPPED, 600)
    return c


def _xor_address(ip: str, port: int) -> bytes:
    """XOR-PEER-ADDRESS value (RFC 8489 section 14.2), IPv4, written out by hand."""
    raw = bytes(int(x) for x in ip.split("."))
    xport = port ^ (MAGIC_COOKIE >> 16)
    xip = bytes(a ^ b for a, b in zip(raw, MAGIC_COOKIE.to_bytes(4, "big")))
    return b"\x00\x01" + struct.pack("!H", xport) + xip


def _message(msg_type: int, transaction: bytes, attrs: list[tuple[int, bytes]]) -> bytes:
    body = b"".join(struct.pack("!HH", t, len(v)) + v + b"\x00" * (-len(v) % 4)
                    for t, v in attrs)
    return struct.pack("!HHI", msg_type, len(body), MAGIC_COOKIE) + transaction + body


def test_allocate_asks_for_tcp_rfc6062_4_1():
    c = TcpTurnClient(USER, PASSWORD)
    req = decode(c.allocate(tid(1), 0.0))
    assert req.method == Method.ALLOCATE and req.msg_class == MessageClass.REQUEST
    # REQUESTED-TRANSPORT: protocol 6 (TCP) then 3 RFFU bytes (RFC 8656 section 18.7)
    assert req.get(REQUESTED_TRANSPORT) == b"\x06\x00\x00\x00"
    with pytest.raises(TurnError, match="DONT-FRAGMENT"):
        c.allocate(tid(2), 0.0, dont_fragment=True)


def test_connect_request_layout_and_success_with_connection_id_rfc6062_4_3():
    c = allocated()
    raw = c.connect(tid(3), PEER, 1.0)
    # message type: method 0x000A, class request -> 0x000A (RFC 8489 section 5)
    assert raw[:2] == b"\x00\x0a"
    req = decode(raw, integrity_key=KEY)           # signed with the long-term key
    assert req.method == Method.CONNECT and req.get(AttrType.XOR_PEER_ADDRESS) == PEER
    assert _xor_address(*PEER) in raw
    # success response: type 0x010A (method 0x000A, class success), CONNECTION-ID 0x002A
    ok = answer(raw, MessageClass.SUCCESS, [(CONNECTION_ID, (0x01020304).to_bytes(4, "big"))])
    assert ok[:2] == b"\x01\x0a" and b"\x00\x2a\x00\x04\x01\x02\x03\x04" in ok
    assert c.receive(ok, 1.0) == [Connected(PEER, 0x01020304)]


def test_connect_needs_an_allocation_and_tcp_allocations_have_no_send_or_channels():
    c = TcpTurnClient(USER, PASSWORD)
    with pytest.raises(TurnError, match="no allocation"):
        c.connect(tid(1), PEER, 0.0)
    c = allocated()
    with pytest.raises(TurnError, match="data connections"):
        c.send(tid(4), PEER, b"x")
    with pytest.raises(TurnError, match="no channels"):
        c.channel_bind(tid(4), PEER, 0x4000, 0.0)


@pytest.mark.parametrize("code", [446, 447, 403, 437])
def test_connect_errors_are_failure_events_rfc6062_6_3(code):
    c = allocated()
    raw = c.connect(tid(5), PEER, 1.0)
    [ev] = c.receive(error(raw, code), 1.0)
    assert isinstance(ev, TurnFailure) and ev.code == code and ev.method == Method.CONNECT
    assert c.receive(error(raw, code), 1.0) == []      # answered: not pending any more


def test_connect_stale_nonce_is_retried_rfc8489_9_2_5():
    c = allocated()
    raw = c.connect(tid(6), PEER, 1.0)
    [ev] = c.receive(error(raw, 438, key=None, nonce="fresh"), 1.0)
    assert ev == Challenged(tid(6), Method.CONNECT, 438) and c.nonce == "fresh"
    again = decode(c.retry(tid(6), tid(7), 1.0), integrity_key=KEY)
    assert again.get(AttrType.NONCE) == "fresh" and again.get(AttrType.XOR_PEER_ADDRESS) == PEER


def test_connect_success_without_connection_id_or_integrity():
    c = allocated()
    raw = c.connect(tid(8), PEER, 1.0)
    assert c.receive(answer(raw, MessageClass.SUCCESS, [], key=None), 1.0) == []  # unsigned
    [ev] = c.receive(answer(raw, MessageClass.SUCCESS, []), 1.0)
    assert isinstance(ev, TurnFailure) and "CONNECTION-ID" in ev.reason


def test_connection_attempt_indication_from_the_rfc_layout_rfc6062_4_4():
    c = allocated()
    # indication: method 0x000C, class indication -> type 0x001C; no integrity
    raw = _message(0x001C, tid(9), [(0x0012, _xor_address("198.51.100.10", 49201)),
                                    (0x002A, b"\xde\xad\xbe\xef")])
    assert c.receive(raw, 2.0) == [ConnectionAttempt(PEER, 0xDEADBEEF)]
    no_cid = _message(0x001C, tid(9), [(0x0012, _xor_address("198.51.100.10", 49201))])
    bad_cid = _message(0x001C, tid(9), [(0x0012, _xor_address("198.51.100.10", 49201)),
                                        (0x002A, b"\x01\x02")])
    assert c.receive(no_cid, 2.0) == [] and c.receive(bad_cid, 2.0) == []
    # before an allocation exists there is nobody to connect to
    assert TcpTurnClient(USER, PASSWORD).receive(raw, 2.0) == []


def test_connection_bind_on_a_data_connection_rfc6062_4_3():
    c = allocated()
    b = c.binder(0xDEADBEEF)
    raw = b.bind(tid(10), 3.0)
    assert raw[:2] == b"\x00\x0b"                  # method 0x000B, class request
    req = decode(raw, integrity_key=KEY)
    assert req.get(CONNECTION_ID) == b"\xde\xad\xbe\xef"
    assert (req.get(AttrType.USERNAME), req.get(AttrType.REALM), req.get(AttrType.NONCE)) == \
        (USER, REALM, NONCE)
    assert b.receive(answer(raw, MessageClass.SUCCESS, []), 3.0) == [ConnectionBound(0xDEADBEEF)]
    assert b.bound


def test_connection_bind_takes_one_new_nonce_then_refuses():
    c = allocated()
    b = c.binder(7)
    raw = b.bind(tid(11), 3.0)
    # the data connection is a new client to the server: a 401 with its own nonce
    [ev] = b.receive(error(raw, 401, key=None, nonce="per-connection"), 3.0)
    assert isinstance(ev, Challenged) and b.nonce == "per-connection"
    again = b.retry(tid(11), tid(12), 3.0)
    assert decode(again, integrity_key=KEY).get(AttrType.NONCE) == "per-connection"
    [ev] = b.receive(error(again, 401, key=None, nonce="another"), 3.0)
    assert isinstance(ev, TurnFailure) and ev.code == 401
    assert c.nonce == NONCE                        # the control connection keeps its own


@pytest.mark.parametrize("code", [400, 447])
def test_connection_bind_errors(code):
    b = allocated().binder(7)
    raw = b.bind(tid(13), 3.0)
    [ev] = b.receive(error(raw, code), 3.0)
    assert isinstance(ev, TurnFailure) and ev.code == code and not b.bound


def test_binder_needs_a_credential():
    with pytest.raises(TurnError, match="credential"):
        TcpTurnClient(USER, PASSWORD).binder(1)
    with pytest.raises(TurnError, match="32 bits"):
        allocated().binder(1 << 32)


# -- framing -----------------------------------------------------------------------------

def test_frame_length_of_stun_and_padded_channel_data():
    stun = _message(0x001C, tid(1), [(0x002A, b"\x00\x00\x00\x01")])
    assert frame_length(stun[:4]) == len(stun) == 28
    assert frame_length(channel_data(0x4000, b"abcde")[:4]) == 12   # 5 bytes padded to 8
    assert frame_length(b"\x00\x01") is None
    with pytest.raises(TurnError, match="multiple of 4"):
        frame_length(b"\x00\x01\x00\x05")
    with pytest.raises(TurnError, match="neither"):
        frame_length(b"\x80\x00\x00\x00")


def test_stream_framer_cuts_back_to_back_messages_at_any_split():
    frames = [_message(0x001C, tid(1), [(0x002A, b"\x00\x00\x00\x01")]),
              channel_data(0x4001, b"xyz", pad=True),
              _message(0x0101, tid(2), [])]
    stream = b"".join(frames)
    for step in (1, 3, 7, len(stream)):
        f, out = StreamFramer(), []
        for i in range(0, len(stream), step):
            out += f.feed(stream[i:i + step])
        assert out == frames and f.buffered == b""


def test_stream_framer_needed_never_reads_past_a_frame():
    msg = _message(0x010B, tid(3), [(0x8022, b"coturn")])
    after = b"peer bytes that follow the ConnectionBind answer"
    stream, pos, f, got = msg + after, 0, StreamFramer(), []
    while not got:
        n = f.needed()
        assert pos + n <= len(msg)
        got = f.feed(stream[pos:pos + n])
        pos += n
    assert got == [msg] and stream[pos:] == after and f.needed() == 4
