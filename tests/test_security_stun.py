"""Security: one host starving STUN over TCP, and STUN over UDP as a reflector (issue 10, 5/6)."""

from __future__ import annotations

import socket
import time

from stunturn_diag.sansio.stun import binding_request, decode, encode
from stunturn_server.config import ServerConfig, StunLimits
from stunturn_server.stun.service import start_stun_service
from stunturn_diag.stun_tcp import stun_tcp_transaction
from stunturn_diag.stun_requests import fresh_binding_request
from testlib import is_closed, wait_for


def _service(**limits):
    return start_stun_service(ServerConfig(stun_host="127.0.0.1", stun_port=0, alt_port=0,
                                           stun_limits=StunLimits(**limits)))


def _binding_over_tcp(address, source: str):
    with socket.create_connection(address, timeout=5, source_address=(source, 0)) as sock:
        return stun_tcp_transaction(sock, encode(fresh_binding_request()), time.monotonic() + 5)


def test_one_source_cannot_take_every_tcp_slot():
    service = _service(max_connections=12, max_per_source=4)
    address = (service.endpoints[0].ip, service.endpoints[0].port)
    hog = []
    try:
        for _ in range(20):  # bounded: the review's hog opened 256 in 0.5 s
            hog.append(socket.create_connection(address, timeout=5))
        wait_for(lambda: service.stats["tcp_rejected_source"] >= 16, what="the hog's extra connections")
        assert service.stats["tcp_open"] == 4
        assert sum(is_closed(s, 0.05) for s in hog) == 16
        # everyone else still gets answers
        assert _binding_over_tcp(address, "127.0.0.7").mapped_address[0] == "127.0.0.7"
    finally:
        for sock in hog:
            sock.close()
        service.stop()


def test_a_trickle_of_bytes_does_not_hold_a_slot():
    """Before: every byte reset the idle timer. Now a message must be whole within
    message_timeout, whatever trickles in meanwhile."""
    service = _service(message_timeout=0.5, idle_timeout=30)
    address = (service.endpoints[0].ip, service.endpoints[0].port)
    request = encode(fresh_binding_request())
    sock = socket.create_connection(address, timeout=5)
    try:
        sent = 0
        for byte in request:  # one byte per 0.1 s: the message needs > 2 s in all
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            sent += 1
            if is_closed(sock, 0.05):
                break
            time.sleep(0.1)
        assert sent < len(request), "the trickle held the connection for the whole message"
        wait_for(lambda: service.stats["tcp_closed_slow"] == 1, what="the slow close counted")
    finally:
        sock.close()
        service.stop()


def test_udp_answers_per_source_are_rate_limited_and_counted():
    """A spoofed flood names its victim as source: at most the burst plus the rate is sent there."""
    service = _service(udp_burst=10, udp_rate=5.0)
    primary = (service.endpoints[0].ip, service.endpoints[0].port)
    victim = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    victim.bind(("127.0.0.1", 0))
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.9", 0))
    try:
        started = time.monotonic()
        for _ in range(200):  # bounded flood, one source
            victim.sendto(encode(fresh_binding_request()), primary)
        wait_for(lambda: service.stats["udp_datagrams"] >= 200 or service.stats["dropped_rx_overflow"],
                 what="the flood to be read")
        elapsed = time.monotonic() - started
        answers = 0
        victim.settimeout(0.2)
        try:
            while victim.recv(2048):
                answers += 1
        except TimeoutError:
            pass
        assert answers <= 10 + 5.0 * (elapsed + 0.5) + 1, answers
        assert service.stats["dropped_rate_limited"] >= 200 - answers - service.stats["dropped_rx_overflow"]
        # another source is answered at once
        request = fresh_binding_request()
        other.settimeout(2)
        other.sendto(encode(request), primary)
        assert decode(other.recv(2048)).transaction_id == request.transaction_id
    finally:
        victim.close()
        other.close()
        service.stop()
