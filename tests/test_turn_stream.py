"""A UDP allocation over a stream (RFC 8656 sections 3.1 and 12.5), sans-IO: the TURN
client with ``stream=True`` against a scripted server on our STUN codec, its frames
cut by the one stream deframer, and the keep-alive decision on a fake clock."""

from __future__ import annotations

import pytest

from stunturn_diag.errors import TurnError, TurnFramingError
from stunturn_diag.sansio.stun import AttrType, MessageClass, Method, decode
from stunturn_diag.sansio.turn.client import (CHANNEL_NUMBER, KEEP_ALIVE_EVERY, LIFETIME,
                                              REQUESTED_TRANSPORT, PeerData, Refreshed,
                                              TurnClient, channel_data)
from stunturn_diag.sansio.turn.tcp import StreamFramer
from test_turn_client import MAPPED, PASSWORD, PEER, RELAYED, USER, answer, challenge, tid


def stream_client(now: float = 0.0) -> TurnClient:
    """Allocated over a stream: every message the server sends goes through the framer."""
    c, framer = TurnClient(USER, PASSWORD, stream=True), StreamFramer()
    first = c.allocate(tid(1), now)
    assert decode(first).get(REQUESTED_TRANSPORT) == b"\x11\x00\x00\x00"   # UDP relayed
    [frame] = framer.feed(challenge(first))
    [ev] = c.receive(frame, now)
    second = c.retry(ev.transaction_id, tid(2), now)
    ok = answer(second, MessageClass.SUCCESS, [(AttrType.XOR_RELAYED_ADDRESS, RELAYED),
                                               (AttrType.XOR_MAPPED_ADDRESS, MAPPED),
                                               (LIFETIME, (600).to_bytes(4, "big"))])
    assert framer.feed(ok[:7]) == []                      # partial: kept
    [frame] = framer.feed(ok[7:])
    c.receive(frame, now)
    assert c.relayed == RELAYED and c.expires == now + 600
    return c


def bound(c: TurnClient, now: float = 0.0, number: int = 0x4000) -> None:
    req = c.channel_bind(tid(3), PEER, number, now)
    assert decode(req).get(CHANNEL_NUMBER) == number.to_bytes(2, "big") + b"\x00\x00"
    c.receive(answer(req, MessageClass.SUCCESS, []), now)
    assert c.channels[PEER] == number


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 1199])
def test_channel_data_over_a_stream_is_padded_to_4_rfc8656_12_5(size):
    c = stream_client()
    bound(c)
    out = c.send(tid(4), PEER, b"x" * size)
    assert len(out) % 4 == 0 and len(out) == 4 + size + (-size % 4)
    assert out[:4] == b"\x40\x00" + size.to_bytes(2, "big")
    # the same datagram over UDP is not padded
    udp = TurnClient(USER, PASSWORD)
    udp.relayed, udp.channels = RELAYED, {PEER: 0x4000}
    udp._peers_by_channel[0x4000] = PEER
    assert udp.send(tid(4), PEER, b"x" * size) == channel_data(0x4000, b"x" * size)


def test_padded_channel_data_and_stun_back_to_back_from_the_server():
    """The server's stream: ChannelData (padded), a Data indication and a Refresh answer
    in one read, split anywhere; each frame gives its event, the padding is not data."""
    c = stream_client()
    bound(c)
    refresh = c.refresh(tid(5), 10.0)
    stream = (channel_data(0x4000, b"hello", pad=True)
              + answer(refresh, MessageClass.SUCCESS, [(LIFETIME, (600).to_bytes(4, "big"))])
              + channel_data(0x4000, b"", pad=True)
              + channel_data(0x4000, b"abcd", pad=True))
    for step in (1, 5, 9, len(stream)):
        framer, events = StreamFramer(), []
        client = stream_client()
        bound(client)
        client._pending[tid(5)] = c._pending[tid(5)]
        for i in range(0, len(stream), step):
            for frame in framer.feed(stream[i:i + step]):
                events += client.receive(frame, 10.0)
        assert events == [PeerData(PEER, b"hello", 0x4000), Refreshed(600),
                          PeerData(PEER, b"", 0x4000), PeerData(PEER, b"abcd", 0x4000)]
        assert framer.buffered == b""


@pytest.mark.parametrize("garbage", [b"\x80\x00\x00\x00", b"\xff\xff\xff\xff",
                                     b"\x00\x01\x00\x05" + b"\x00" * 16,   # STUN length % 4
                                     b"POST / HTTP/1.1\r\n",
                                     b"\x00\x01\x00\x04GET / HTTP"])     # no magic cookie
def test_garbage_on_the_stream_is_a_typed_framing_error(garbage):
    framer = StreamFramer()
    with pytest.raises(TurnFramingError) as err:
        framer.feed(garbage)
    assert isinstance(err.value, TurnError) and err.value.code == "turn-framing"


def test_garbage_after_a_good_frame_keeps_the_good_frame_out_first():
    c = stream_client()
    bound(c)
    framer = StreamFramer()
    assert framer.feed(channel_data(0x4000, b"ok", pad=True)) == [
        channel_data(0x4000, b"ok", pad=True)]
    with pytest.raises(TurnFramingError):
        framer.feed(b"\xc0\x00\x00\x00")


def test_keep_alive_refreshes_before_expiry_and_rebinds_the_channel_on_a_fake_clock():
    """RFC 8656 section 8 (Refresh before the lifetime ends) and 12.1 (a ChannelBind
    again refreshes channel and permission); at most one request per KEEP_ALIVE_EVERY."""
    c = stream_client(now=0.0)
    bound(c, now=0.0)                       # permission until 300, allocation until 600
    assert c.keep_alive(tid(6), PEER, 0.0) is None          # the first call starts the clock
    assert c.keep_alive(tid(6), PEER, 100.0) is None        # nothing due
    req = c.keep_alive(tid(7), PEER, 245.0)                 # permission ends within 60 s
    msg = decode(req)
    assert msg.method == Method.CHANNEL_BIND and msg.get(CHANNEL_NUMBER)[:2] == b"\x40\x00"
    assert c.keep_alive(tid(8), PEER, 246.0) is None        # not again before the gap
    c.receive(answer(req, MessageClass.SUCCESS, []), 247.0)
    assert c.permissions[PEER[0]] == 547.0
    assert c.keep_alive(tid(8), PEER, 300.0) is None        # renewed: nothing due
    req = c.keep_alive(tid(9), PEER, 545.0)                 # allocation ends within 60 s
    assert decode(req).method == Method.REFRESH
    assert decode(req).get(LIFETIME) == (600).to_bytes(4, "big")
    assert c.keep_alive(tid(10), PEER, 545.0 + KEEP_ALIVE_EVERY / 2) is None
    c.receive(answer(req, MessageClass.SUCCESS, [(LIFETIME, (600).to_bytes(4, "big"))]), 546.0)
    assert c.expires == 1146.0
    # the permission ran out meanwhile: the next call re-binds it
    assert decode(c.keep_alive(tid(11), PEER, 551.0)).method == Method.CHANNEL_BIND


def test_keep_alive_without_an_allocation_or_a_channel_sends_nothing():
    c = TurnClient(USER, PASSWORD, stream=True)
    assert c.keep_alive(tid(1), PEER, 0.0) is None and c.keep_alive(tid(1), PEER, 1e6) is None
    c = stream_client()
    c.keep_alive(tid(2), PEER, 0.0)
    assert c.keep_alive(tid(2), PEER, 100.0) is None        # no channel to that peer yet


def test_keep_alive_of_a_channel_less_tcp_allocation_renews_the_permission():
    """RFC 6062 TCP allocations have no channels: ``by_channel=False`` renews the peer's
    permission with CreatePermission (RFC 8656 section 9); a Refresh still comes first;
    something already due goes out on the first call."""
    c = stream_client(now=0.0)                       # allocation until 600, no permission
    req = c.keep_alive(tid(3), PEER, 0.0, by_channel=False)
    msg = decode(req)
    assert msg.method == Method.CREATE_PERMISSION
    assert c.keep_alive(tid(4), PEER, 1.0, by_channel=False) is None   # the gap
    c.receive(answer(req, MessageClass.SUCCESS, []), 1.0)
    assert c.permissions[PEER[0]] == 301.0
    assert c.keep_alive(tid(4), PEER, 100.0, by_channel=False) is None  # nothing due
    assert decode(c.keep_alive(tid(5), PEER, 245.0, by_channel=False)).method \
        == Method.CREATE_PERMISSION                  # within 60 s of its end
    assert decode(c.keep_alive(tid(6), PEER, 545.0, by_channel=False)).method == Method.REFRESH
