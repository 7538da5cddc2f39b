"""The sans-IO TURN client (RFC 8656) against a scripted server built on our STUN codec,
and the TURN REST credentials."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from stunturn_diag.errors import TurnError
from stunturn_diag.sansio.stun import (AttrType, ErrorCode, MessageClass, Method, StunMessage, decode,
                                encode, long_term_key)
from stunturn_diag.turn import (Allocated, ChannelBound, Challenged, PeerData,
                                PermissionsCreated, Refreshed, TurnClient, TurnFailure,
                                channel_data, is_channel_data, parse_channel_data,
                                rest_credentials)
from stunturn_diag.sansio.turn.client import CHANNEL_NUMBER, DATA, LIFETIME, REQUESTED_TRANSPORT

USER, PASSWORD, REALM, NONCE = "alice", "pw", "stunturn.test", "n0nce"
KEY = long_term_key(USER, REALM, PASSWORD)
RELAYED, MAPPED, PEER = ("198.51.100.10", 49200), ("203.0.113.2", 40000), ("192.0.2.7", 5000)


def tid(n: int) -> bytes:
    return bytes([n]) * 12


def answer(request: bytes, msg_class, attrs, *, key: bytes | None = KEY) -> bytes:
    req = decode(request)
    return encode(StunMessage(req.method, msg_class, req.transaction_id, attrs), integrity_key=key)


def challenge(request: bytes, code: int = 401, nonce: str = NONCE) -> bytes:
    return answer(request, MessageClass.ERROR, [(AttrType.ERROR_CODE, ErrorCode(code, "x")),
                                                (AttrType.REALM, REALM), (AttrType.NONCE, nonce)],
                  key=None)


def allocated_client() -> TurnClient:
    c = TurnClient(USER, PASSWORD)
    first = c.allocate(tid(1), 0.0)
    [ev] = c.receive(challenge(first), 0.0)
    second = c.retry(ev.transaction_id, tid(2), 0.0)
    c.receive(answer(second, MessageClass.SUCCESS, [(AttrType.XOR_RELAYED_ADDRESS, RELAYED),
                                                    (AttrType.XOR_MAPPED_ADDRESS, MAPPED),
                                                    (LIFETIME, (600).to_bytes(4, "big"))]), 0.0)
    return c


def test_allocate_long_term_credentials_rfc8656_7_1():
    c = TurnClient(USER, PASSWORD)
    first = c.allocate(tid(1), 10.0, lifetime=300)
    req = decode(first)
    assert req.method == Method.ALLOCATE and req.get(AttrType.MESSAGE_INTEGRITY) is None
    assert req.get(REQUESTED_TRANSPORT) == b"\x11\x00\x00\x00"
    assert req.get(LIFETIME) == (300).to_bytes(4, "big")
    [ev] = c.receive(challenge(first), 10.0)
    assert ev == Challenged(tid(1), Method.ALLOCATE, 401) and c.realm == REALM
    second = c.retry(tid(1), tid(2), 10.0)
    signed = decode(second, integrity_key=KEY)        # the server can verify it
    assert (signed.get(AttrType.USERNAME), signed.get(AttrType.REALM),
            signed.get(AttrType.NONCE)) == (USER, REALM, NONCE)
    assert signed.transaction_id == tid(2)
    [ok] = c.receive(answer(second, MessageClass.SUCCESS, [
        (AttrType.XOR_RELAYED_ADDRESS, RELAYED), (AttrType.XOR_MAPPED_ADDRESS, MAPPED),
        (LIFETIME, (300).to_bytes(4, "big"))]), 11.0)
    assert ok == Allocated(RELAYED, MAPPED, 300)
    assert c.expires == 311.0 and c.refresh_due(252.0) and not c.refresh_due(250.0)


def test_response_without_valid_integrity_or_unknown_transaction_is_dropped():
    c = TurnClient(USER, PASSWORD)
    [ev] = c.receive(challenge(c.allocate(tid(1), 0)), 0)
    second = c.retry(ev.transaction_id, tid(2), 0)
    ok = [(AttrType.XOR_RELAYED_ADDRESS, RELAYED)]
    assert c.receive(answer(second, MessageClass.SUCCESS, ok, key=None), 0) == []
    assert c.receive(answer(second, MessageClass.SUCCESS, ok, key=b"wrong"), 0) == []
    other = encode(StunMessage(Method.ALLOCATE, MessageClass.SUCCESS, tid(9), ok), integrity_key=KEY)
    assert c.receive(other, 0) == [] and c.receive(b"garbage", 0) == []
    assert c.receive(answer(second, MessageClass.SUCCESS, ok), 0) == [Allocated(RELAYED, None, 600)]


def test_wrong_credentials_end_in_a_failure():
    c = TurnClient(USER, "not-the-password")
    [ev] = c.receive(challenge(c.allocate(tid(1), 0)), 0)
    second = c.retry(ev.transaction_id, tid(2), 0)
    [fail] = c.receive(challenge(second), 0)
    assert isinstance(fail, TurnFailure) and fail.code == 401


def test_stale_nonce_438_updates_the_nonce_rfc8489_9_2_5():
    c = allocated_client()
    req = c.refresh(tid(3), 5.0)
    stale = encode(StunMessage(Method.REFRESH, MessageClass.ERROR, tid(3), [
        (AttrType.ERROR_CODE, ErrorCode(438, "Stale Nonce")), (AttrType.REALM, REALM),
        (AttrType.NONCE, "fresh")]), integrity_key=KEY)
    assert c.receive(stale, 5.0) == [Challenged(tid(3), Method.REFRESH, 438)]
    again = decode(c.retry(tid(3), tid(4), 5.0), integrity_key=KEY)
    assert again.get(AttrType.NONCE) == "fresh" and req != again


@pytest.mark.parametrize("method_call,code", [("allocate", 486), ("allocate", 437),
                                              ("refresh", 437), ("allocate", 508)])
def test_error_responses_are_failure_events(method_call, code):
    c = allocated_client()
    req = c.refresh(tid(5), 1.0) if method_call == "refresh" else c.allocate(tid(5), 1.0)
    [fail] = c.receive(answer(req, MessageClass.ERROR, [(AttrType.ERROR_CODE, ErrorCode(code, "no"))]), 1.0)
    assert isinstance(fail, TurnFailure) and fail.code == code
    # 437 to a Refresh: the allocation is gone; to an Allocate: the old one stays
    assert (c.relayed is None) == (method_call == "refresh" and code == 437)


def test_refresh_zero_deletes_the_allocation():
    c = allocated_client()
    req = c.refresh(tid(6), 2.0, lifetime=0)
    assert decode(req).get(LIFETIME) == bytes(4)
    assert c.receive(answer(req, MessageClass.SUCCESS, [(LIFETIME, bytes(4))]), 2.0) == [Refreshed(0)]
    assert c.relayed is None
    with pytest.raises(TurnError, match="allocate"):
        c.create_permission(tid(7), ["192.0.2.7"], 2.0)


def test_permission_channel_bind_and_data_rfc8656_9_11_12():
    c = allocated_client()
    req = decode(c.create_permission(tid(8), [PEER[0]], 3.0), integrity_key=KEY)
    assert req.get(AttrType.XOR_PEER_ADDRESS) == (PEER[0], 0)
    assert c.receive(answer(encode(req), MessageClass.SUCCESS, []), 3.0) == \
        [PermissionsCreated((PEER[0],))]
    assert not c.permission_due(PEER[0], 200.0) and c.permission_due(PEER[0], 250.0)
    send = decode(c.send(tid(9), PEER, b"hi"))
    assert (send.method, send.msg_class) == (Method.SEND, MessageClass.INDICATION)
    assert send.get(DATA) == b"hi" and send.get(AttrType.XOR_PEER_ADDRESS) == PEER
    bind = c.channel_bind(tid(10), PEER, 0x4001, 4.0)
    assert decode(bind).get(CHANNEL_NUMBER) == b"\x40\x01\x00\x00"
    assert c.receive(answer(bind, MessageClass.SUCCESS, []), 4.0) == [ChannelBound(PEER, 0x4001)]
    assert c.send(tid(11), PEER, b"abc") == b"\x40\x01\x00\x03abc"
    assert c.receive(b"\x40\x01\x00\x02ok\x00\x00", 5.0) == [PeerData(PEER, b"ok", 0x4001)]
    assert c.receive(b"\x40\x02\x00\x02ok", 5.0) == []            # unbound channel
    data = encode(StunMessage(Method.DATA, MessageClass.INDICATION, tid(12),
                              [(AttrType.XOR_PEER_ADDRESS, ("192.0.2.8", 1)), (DATA, b"x")]))
    assert c.receive(data, 5.0) == [PeerData(("192.0.2.8", 1), b"x")]
    with pytest.raises(TurnError, match="bound to"):
        c.channel_bind(tid(13), ("192.0.2.9", 1), 0x4001, 5.0)
    with pytest.raises(TurnError, match="0x4000-0x4FFF"):
        c.channel_bind(tid(13), PEER, 0x3FFF, 5.0)


def test_channel_data_framing_rfc8656_12_4():
    assert channel_data(0x4FFF, b"abcde", pad=True) == b"\x4f\xff\x00\x05abcde\x00\x00\x00"
    assert parse_channel_data(b"\x40\x00\x00\x01z\x00\x00\x00") == (0x4000, b"z")
    assert is_channel_data(b"\x40\x00\x00\x00") and not is_channel_data(b"\x00\x01\x00\x00")
    for bad in (b"\x40\x00", b"\x40\x00\x00\x09abc", b"\x80\x00\x00\x00"):
        with pytest.raises(TurnError):
            parse_channel_data(bad)


def test_rest_credentials_are_coturns_hmac_sha1_base64():
    cred = rest_credentials("s3cret", now=1000.4, ttl=600, random_id="ab12")
    assert cred["username"] == "1600:ab12" and cred["expires"] == 1600
    want = base64.b64encode(hmac.new(b"s3cret", b"1600:ab12", hashlib.sha1).digest()).decode()
    assert cred["password"] == want
