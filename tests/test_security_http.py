"""Security: lenient parsing, slow senders and connection hoarding against a real server (issue 10, 5/7/8)."""

from __future__ import annotations

import json
import logging
import socket
import time

import pytest

from securitylib import call, raw_exchange
from stunturn_server.config import ServerConfig
from stunturn_server.runner import start_server
from testlib import wait_for

BODY = b'{"rendezvous": "%s"}' % (b"ab" * 32)


@pytest.fixture
def server():
    config = ServerConfig(http_port=0, stun_enabled=False, http_request_timeout=1.0, http_io_timeout=5.0,
                          max_connections=6, max_connections_per_ip=4, max_waiters_per_ip=4)
    with start_server(config) as handle:
        yield handle


def _request(*header_lines: str, body: bytes = BODY) -> bytes:
    head = "POST /v1/checkin HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    return (head + "".join(line + "\r\n" for line in header_lines) + "\r\n").encode() + body


@pytest.mark.parametrize("lines", [
    (f"Content-Length: {len(BODY)}", "Transfer-Encoding: chunked"),     # TE + CL (smuggling)
    (f"Content-Length: {len(BODY)}", f"Content-Length: {len(BODY)}"),   # duplicate CL
    (f"Content-Length: {len(BODY)}", "X-Folded: a", " continued"),      # obs-fold
    ("Content-Length: +30",),                                            # not digits
    ("Transfer-Encoding: gzip, chunked",),
])
def test_ambiguous_framing_is_400_and_closed(server, lines, caplog):
    caplog.set_level(logging.INFO)
    answer = raw_exchange(server.http_address, _request(*lines))  # returns once the server closed
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), answer
    assert json.loads(body)["error"] == "bad-request"
    assert answer.count(b"HTTP/1.1") == 1  # nothing after it was read as a second request
    assert "Traceback" not in caplog.text  # details only at DEBUG
    assert call(server.http_address, "GET", "/healthz")[0] == 200


def test_malformed_requests_log_one_line_per_source(server, caplog):
    caplog.set_level(logging.INFO)
    for _ in range(5):
        raw_exchange(server.http_address, b"BREW /pot HTTP/7.0\r\n\r\n", source="127.0.0.9")
    lines = [r for r in caplog.records if "malformed HTTP" in r.getMessage()]
    assert len(lines) == 1 and "Traceback" not in caplog.text


def test_slow_sender_is_cut_off_by_the_whole_request_deadline(server):
    """A byte every 0.2 s never leaves the connection silent for the 5 s I/O timeout, yet the
    1 s whole-request deadline ends it long before the 100-byte headers are through."""
    sock = socket.create_connection(server.http_address, timeout=10)
    request = _request(f"Content-Length: {len(BODY)}", "X-Pad: " + "p" * 60)
    sent = 0
    try:
        for byte in request[:100]:  # bounded: 100 bytes, at most 20 s
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            sent += 1
            if _readable(sock):  # the server answered (408) or closed: it gave up on us
                break
            time.sleep(0.2)
    finally:
        sock.close()
    assert sent < 100, "the server kept reading a request that trickled in for 20 s"


def _readable(sock) -> bool:
    import select

    return bool(select.select([sock], [], [], 0)[0])


def test_connections_over_the_global_cap_are_refused_at_once(server):
    held = []
    try:
        for i in range(6):  # 6 sources x 1 idle connection = the global cap
            held.append(socket.create_connection(server.http_address, timeout=10,
                                                 source_address=(f"127.0.4.{i + 1}", 0)))
        wait_for(lambda: _refused(server, "127.0.4.99"), what="a connection over the global cap refused")
    finally:
        for sock in held:
            sock.close()
    wait_for(lambda: call(server.http_address, "GET", "/healthz")[0] == 200, what="capacity back")


def _refused(server, source: str) -> bool:
    """A silent client over the cap is answered and closed without waiting for it (no draining):
    the read ends well inside its 3 s timeout."""
    sock = socket.create_connection(server.http_address, timeout=3, source_address=(source, 0))
    try:
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    except TimeoutError:
        return False  # counted by the server only once its greenlet ran: try again
    finally:
        sock.close()
    assert data.startswith(b"HTTP/1.1 503 ") and b"too-many-connections" in data, data
    return True


def test_one_source_cannot_take_every_connection(server):
    held = []
    try:
        for _ in range(4):
            held.append(socket.create_connection(server.http_address, timeout=10))
        wait_for(lambda: b" 429 " in raw_exchange(server.http_address, b"GET /healthz HTTP/1.1\r\n"
                                                  b"Host: t\r\n\r\n").split(b"\r\n", 1)[0],
                 what="the fifth connection from one source refused")
        # another source is still served
        assert call(server.http_address, "GET", "/healthz", source="127.0.0.8")[0] == 200
    finally:
        for sock in held:
            sock.close()
