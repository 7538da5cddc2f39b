"""stunturn_diag.stun_tcp: one STUN transaction over TCP (RFC 8489 6.2.2 framing), shared by
probe and punch. A socketpair plays the server, so framing edge cases are exact."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from stunturn_diag.errors import StunDecodeError
from stunturn_diag.sansio.stun import AttrType, MessageClass, StunMessage, binding_request, decode, encode
from stunturn_diag.stun_tcp import recv_stun_message, stun_tcp_transaction
from stunturn_diag.stun_requests import fresh_binding_request


def _answer(req: bytes, *, tid: bytes | None = None) -> bytes:
    msg = decode(req)
    resp = StunMessage(msg.method, MessageClass.SUCCESS, tid or msg.transaction_id,
                       [(AttrType.XOR_MAPPED_ADDRESS, ("203.0.113.7", 40000))])
    return encode(resp)


def _serve(sock: socket.socket, reply) -> threading.Thread:
    def run():
        req = recv_stun_message(sock, time.monotonic() + 5)
        reply(sock, req)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_split_response_is_reassembled():
    a, b = socket.socketpair()
    with a, b:
        def reply(s, req):
            data = _answer(req)
            for i in range(0, len(data), 3):  # dribbled out in 3-byte pieces
                s.sendall(data[i:i + 3])
        t = _serve(b, reply)
        req = encode(fresh_binding_request())
        msg = stun_tcp_transaction(a, req, time.monotonic() + 5)
        t.join(5)
    assert msg.mapped_address == ("203.0.113.7", 40000)
    assert msg.transaction_id == req[8:20]


def test_answer_for_another_transaction_is_rejected():
    a, b = socket.socketpair()
    with a, b:
        t = _serve(b, lambda s, req: s.sendall(_answer(req, tid=b"\x01" * 12)))
        with pytest.raises(StunDecodeError, match="another transaction"):
            stun_tcp_transaction(a, encode(fresh_binding_request()), time.monotonic() + 5)
        t.join(5)


def test_close_mid_message_is_a_connection_error():
    a, b = socket.socketpair()
    with a:
        def reply(s, req):
            s.sendall(_answer(req)[:25])
            s.close()
        t = _serve(b, reply)
        with pytest.raises(ConnectionError):
            stun_tcp_transaction(a, encode(fresh_binding_request()), time.monotonic() + 5)
        t.join(5)


def test_silence_ends_at_the_deadline():
    a, b = socket.socketpair()
    with a, b:
        with pytest.raises(TimeoutError):
            stun_tcp_transaction(a, encode(fresh_binding_request()), time.monotonic() + 0.05)
        # the request itself was sent whole
        assert decode(recv_stun_message(b, time.monotonic() + 1)).msg_class == MessageClass.REQUEST


def test_non_stun_bytes_are_a_decode_error():
    a, b = socket.socketpair()
    with a, b:
        t = _serve(b, lambda s, req: s.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n"))
        with pytest.raises(StunDecodeError):
            stun_tcp_transaction(a, encode(fresh_binding_request()), time.monotonic() + 5)
        t.join(5)


def test_probe_stun_tcp_uses_it_against_the_real_responder():
    """The probe's helper, end to end against our STUN service over TCP on loopback."""
    from stunturn_server.config import ServerConfig
    from stunturn_server.runner import start_server

    from stunturn_diag.probe.tcp_sockets import reuse_socket, stun_tcp

    with start_server(ServerConfig(http_port=0, stun_port=0, alt_port=0)) as handle:
        primary = next(e for e in handle.stun_endpoints if e["role"] == "primary")
        s = reuse_socket(("127.0.0.1", 0))
        with s:
            mapped = stun_tcp(s, (primary["ip"], primary["port"]), 5.0)
            assert mapped == s.getsockname()[:2]  # loopback: no NAT
