"""STUN service on real loopback sockets: the four RFC 5780 endpoints over UDP, TCP framing
(RFC 8489 section 6.2.2), TCP limits, drop-and-count, bind errors, clean idempotent stop."""

from __future__ import annotations

import socket

import pytest

from stunturn_diag.errors import ConfigError
from stunturn_diag.sansio.stun import AttrType, MessageClass, binding_request, decode, encode
from stunturn_server.config import ServerConfig, StunLimits
from stunturn_server.stun.service import start_stun_service
from stunturn_diag.stun_requests import fresh_binding_request
from testlib import A1, A2, is_closed, wait_for


def udp_client(ip: str = A1) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(5)
    sock.bind((ip, 0))
    return sock


def endpoint(svc, role):
    return next(ep for ep in svc.endpoints if ep.role == role)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise AssertionError(f"connection closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def read_message(sock: socket.socket):
    header = recv_exact(sock, 20)
    body = recv_exact(sock, int.from_bytes(header[2:4], "big"))
    return decode(header + body)


def test_endpoints_follow_rfc5780_layout(service):
    eps = {ep.role: (ep.ip, ep.port) for ep in service.endpoints}
    assert [ep.role for ep in service.endpoints] == ["primary", "alt-port", "alt-ip", "alt-both"]
    p1, p2 = eps["primary"][1], eps["alt-port"][1]
    assert p1 != p2 and 0 not in (p1, p2)
    assert eps == {"primary": (A1, p1), "alt-port": (A1, p2), "alt-ip": (A2, p1),
                   "alt-both": (A2, p2)}


@pytest.mark.parametrize("change_ip,change_port,sender", [
    (False, False, "primary"), (True, False, "alt-ip"), (False, True, "alt-port"),
    (True, True, "alt-both")])
def test_udp_change_request_comes_from_the_right_address(service, change_ip, change_port, sender):
    client = udp_client()
    primary = endpoint(service, "primary")
    request = fresh_binding_request(change_ip=change_ip, change_port=change_port)
    client.sendto(encode(request), (primary.ip, primary.port))
    data, source = client.recvfrom(4096)
    response = decode(data)
    expected = endpoint(service, sender)
    assert source == (expected.ip, expected.port)
    assert response.transaction_id == request.transaction_id
    assert response.mapped_address == client.getsockname()
    assert response.response_origin == (expected.ip, expected.port)
    other = endpoint(service, "alt-both")
    assert response.other_address == (other.ip, other.port)
    client.close()


def test_udp_every_endpoint_answers(service):
    client = udp_client()
    for ep in service.endpoints:
        client.sendto(encode(fresh_binding_request()), (ep.ip, ep.port))
        data, source = client.recvfrom(4096)
        assert source == (ep.ip, ep.port)
        assert decode(data).response_origin == (ep.ip, ep.port)
    client.close()


def test_udp_response_port(service):
    client, target = udp_client(), udp_client()
    primary = endpoint(service, "primary")
    client.sendto(encode(fresh_binding_request(response_port=target.getsockname()[1])),
                  (primary.ip, primary.port))
    data, source = target.recvfrom(4096)
    assert decode(data).mapped_address == client.getsockname()
    client.close(), target.close()


def test_udp_garbage_is_counted_and_service_keeps_answering(service):
    client = udp_client()
    primary = (endpoint(service, "primary").ip, endpoint(service, "primary").port)
    for junk in (b"", b"\xff" * 50, b"hello", bytes(24),
                 encode(fresh_binding_request(), fingerprint=True)[:-1] + b"\x01"):
        client.sendto(junk, primary)
    client.sendto(encode(fresh_binding_request()), primary)
    data, _ = client.recvfrom(4096)
    assert decode(data).msg_class == MessageClass.SUCCESS
    # the counters are updated by the service's thread: wait until all six were counted
    stats = wait_for(lambda: service.stats if service.stats["responses"] >= 1
                     and service.stats["udp_datagrams"] >= 6 else None)
    assert stats["dropped_non_stun"] >= 3 and stats["dropped_malformed"] >= 1
    assert stats["udp_datagrams"] == 6 and stats["requests"] == 1
    client.close()


def test_ipv6_loopback():
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python")
    try:
        svc = start_stun_service(ServerConfig(http_host="::1", stun_port=0, alt_port=0))
    except ConfigError as exc:
        pytest.skip(f"no ::1 here: {exc}")
    with svc:
        client = udp_client("::1")
        ep = svc.endpoints[0]
        client.sendto(encode(fresh_binding_request()), (ep.ip, ep.port))
        response = decode(client.recvfrom(4096)[0])
        assert response.mapped_address == client.getsockname()[:2]
        assert response.other_address is None
        client.close()


# -- TCP ---------------------------------------------------------------------------------

def tcp_to(svc, role: str = "primary") -> socket.socket:
    ep = endpoint(svc, role)
    sock = socket.create_connection((ep.ip, ep.port), timeout=5)
    return sock


def test_tcp_back_to_back_and_split_messages(service):
    sock = tcp_to(service, "alt-both")
    first, second, third = fresh_binding_request(), fresh_binding_request(), fresh_binding_request(padding=100)
    sock.sendall(encode(first) + encode(second))
    data = encode(third)
    sock.sendall(data[:7])
    got = [read_message(sock), read_message(sock)]
    sock.sendall(data[7:])
    got.append(read_message(sock))
    assert [m.transaction_id for m in got] == [first.transaction_id, second.transaction_id,
                                              third.transaction_id]
    ep = endpoint(service, "alt-both")
    assert got[0].mapped_address == sock.getsockname()
    assert got[0].response_origin == (ep.ip, ep.port)
    assert got[2].get(AttrType.PADDING) is not None
    sock.close()


def test_tcp_change_request_refused_with_420(service):
    sock = tcp_to(service)
    sock.sendall(encode(fresh_binding_request(change_ip=True)))
    response = read_message(sock)
    assert response.error.code == 420
    sock.sendall(encode(fresh_binding_request()))  # the connection stays usable
    assert read_message(sock).msg_class == MessageClass.SUCCESS
    sock.close()


@pytest.mark.parametrize("junk", [b"GET / HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x02\x00" + bytes(60)])
def test_tcp_garbage_closes_the_connection(service, junk):
    sock = tcp_to(service)
    sock.sendall(junk)
    assert is_closed(sock)
    wait_for(lambda: service.stats["tcp_closed_garbage"] >= 1, what="garbage counter")
    sock.close()


def limited(**limits):
    return start_stun_service(ServerConfig(stun_host=A1, stun_port=0, alt_port=0,
                                           stun_limits=StunLimits(**limits)))


def test_tcp_idle_connection_is_closed():
    with limited(idle_timeout=0.2) as svc:
        sock = tcp_to(svc)
        assert is_closed(sock)
        assert svc.stats["tcp_closed_idle"] == 1
        sock.close()


def test_tcp_connection_cap():
    with limited(max_connections=2) as svc:
        keep = [tcp_to(svc), tcp_to(svc)]
        wait_for(lambda: svc.stats["tcp_open"] == 2, what="two open connections")
        extra = tcp_to(svc)
        assert is_closed(extra)
        assert svc.stats["tcp_rejected"] == 1
        keep[0].sendall(encode(fresh_binding_request()))
        assert read_message(keep[0]).msg_class == MessageClass.SUCCESS
        for sock in keep + [extra]:
            sock.close()


def test_tcp_per_connection_byte_cap():
    with limited(max_bytes=1000) as svc:
        sock = tcp_to(svc)
        request = encode(fresh_binding_request())
        try:
            for _ in range(100):
                sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass
        sock.settimeout(5)
        try:
            while sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        assert svc.stats["tcp_closed_limit"] == 1
        assert svc.stats["requests"] <= 1000 // len(request)
        sock.close()


def test_tcp_message_split_over_many_writes_is_answered(service):
    sock = tcp_to(service)
    request = fresh_binding_request(padding=64)
    for byte in encode(request):
        sock.send(bytes([byte]))
    assert read_message(sock).transaction_id == request.transaction_id
    sock.close()


# -- lifecycle and errors ---------------------------------------------------------------

def test_stop_is_idempotent_and_releases_ports():
    svc = start_stun_service(ServerConfig(stun_host=A1, alt_ip=A2, stun_port=0, alt_port=0))
    eps = list(svc.endpoints)
    svc.stop()
    svc.stop()
    assert not svc.running
    again = start_stun_service(ServerConfig(stun_host=A1, alt_ip=A2, stun_port=eps[0].port,
                                            alt_port=eps[1].port))
    assert [(e.ip, e.port) for e in again.endpoints] == [(e.ip, e.port) for e in eps]
    again.stop()


def test_port_in_use_is_a_clear_config_error(service):
    primary = endpoint(service, "primary")
    with pytest.raises(ConfigError) as info:
        start_stun_service(ServerConfig(stun_host=A1, stun_port=primary.port, alt_port=0))
    message = str(info.value)
    assert f"{A1}:{primary.port}" in message and "UDP" in message
    assert "port" in (info.value.hint or "")


def test_tcp_port_in_use_is_reported():
    blocker = socket.socket()
    blocker.bind((A1, 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        with pytest.raises(ConfigError, match=rf"TCP, primary\) on {A1}:{port}"):
            start_stun_service(ServerConfig(stun_host=A1, stun_port=port, alt_port=0))
    finally:
        blocker.close()


def test_address_not_on_this_machine_is_reported():
    with pytest.raises(ConfigError, match="192.0.2.1") as info:
        start_stun_service(ServerConfig(stun_host="192.0.2.1", stun_port=0, alt_port=0))
    assert "address" in info.value.hint


@pytest.mark.parametrize("stun_host,alt_ip", [("127.0.0.1", "::1"), ("0.0.0.0", "127.0.0.2"),
                                               ("127.0.0.1", "127.0.0.1")])
def test_inconsistent_alternate_ip_is_rejected(stun_host, alt_ip):
    with pytest.raises(ConfigError):
        start_stun_service(ServerConfig(stun_host=stun_host, alt_ip=alt_ip, stun_port=0,
                                        alt_port=0))


def test_bad_tcp_limit_in_config():
    with pytest.raises(ConfigError, match=r"stun_limits\.idle_timeout"):
        start_stun_service(ServerConfig(stun_host=A1, stun_port=0, alt_port=0,
                                        stun_limits=StunLimits(idle_timeout=-1)))


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_wildcard_bind_answers_from_the_address_the_client_used(host):
    """Bound to 0.0.0.0 / ::, RESPONSE-ORIGIN and the reply's source are the request's
    destination address (IP_PKTINFO / IPV6_PKTINFO for UDP, getsockname for TCP)."""
    try:
        svc = start_stun_service(ServerConfig(http_host=host, stun_port=0, alt_port=0))
    except ConfigError as exc:
        pytest.skip(f"cannot bind {host}: {exc}")
    with svc:
        port = svc.endpoints[0].port
        for destination in (A1, A2, "127.3.4.5"):
            client = udp_client()
            client.sendto(encode(fresh_binding_request()), (destination, port))
            data, source = client.recvfrom(4096)
            response = decode(data)
            assert source == (destination, port)
            assert response.response_origin == (destination, port)
            assert response.mapped_address == client.getsockname()  # IPv4, also via ::
            client.close()
            with socket.create_connection((destination, port), timeout=5) as sock:
                sock.sendall(encode(fresh_binding_request()))
                assert read_message(sock).response_origin == (destination, port)
        assert svc.stats["internal_errors"] == svc.stats["send_errors"] == 0


def test_random_datagrams_never_break_the_loop(service):
    import random

    rng = random.Random(8489)
    client = udp_client()
    primary = (endpoint(service, "primary").ip, endpoint(service, "primary").port)
    valid = encode(fresh_binding_request())
    for batch in range(1, 11):  # 300 datagrams, in batches small enough for the socket buffer
        for _ in range(30):
            data = bytearray(valid + bytes(rng.randrange(256) for _ in range(rng.randrange(40))))
            for _ in range(rng.randint(1, 3)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            client.sendto(bytes(data), primary)
        wait_for(lambda: service.stats["udp_datagrams"] >= 30 * batch, what="batch processed")
    client.settimeout(0.05)
    try:  # drain whatever was answered
        while client.recvfrom(4096):
            pass
    except OSError:
        pass
    client.settimeout(5)
    client.sendto(valid, primary)
    assert decode(client.recvfrom(4096)[0]).msg_class == MessageClass.SUCCESS
    stats = service.stats
    assert stats["internal_errors"] == 0
    handled = sum(v for k, v in stats.items()
                  if k in ("responses", "errors_sent") or k.startswith("dropped_"))
    assert handled == stats["udp_datagrams"] == 301
    client.close()


def test_udp_flood_is_bounded_by_the_kernel_queue_and_its_drops_are_counted(service, monkeypatch):
    """While the loop is stuck, a flood only fills the kernel's receive queue (the service
    keeps no queue of its own); the overflow is counted and the service answers afterwards."""
    import threading

    responder = service._responder
    stuck, release = threading.Event(), threading.Event()
    handle = responder.handle

    def slow_handle(*args, **kwargs):
        if not release.is_set():
            stuck.set()
            release.wait(30)
        return handle(*args, **kwargs)

    monkeypatch.setattr(responder, "handle", slow_handle)
    primary = endpoint(service, "primary")
    flood = udp_client()
    sent = 0
    try:
        junk = b"\x01\x01" + bytes(18)  # a classic Binding *response*: dropped, never answered
        flood.sendto(junk, (primary.ip, primary.port))
        sent += 1
        assert stuck.wait(10), "the service never read the first datagram"
        for _ in range(5000):  # bounded: far more than the receive buffer holds
            flood.sendto(junk, (primary.ip, primary.port))
            sent += 1
    finally:
        release.set()
        flood.close()
    client = udp_client()
    request, answer, copies = fresh_binding_request(), None, 0
    try:
        client.settimeout(0.2)
        for copies in range(1, 51):  # the queue may still be full when the first copy arrives
            client.sendto(encode(request), (primary.ip, primary.port))
            try:
                answer = decode(client.recv(2048))
                break
            except TimeoutError:
                continue
    finally:
        client.close()
    assert answer is not None and answer.transaction_id == request.transaction_id
    stats = wait_for(lambda: (s := service.stats)["udp_datagrams"] >= 2 and s, what="counters")
    assert stats["dropped_rx_overflow"] > 0, stats
    assert stats["udp_datagrams"] < sent, stats  # the queue held only part of the flood
    flood_seen = stats["dropped_non_stun"] + stats["dropped_malformed"] + stats["dropped_not_request"]
    assert flood_seen <= sent and stats["requests"] <= copies, stats
    assert stats["udp_datagrams"] + stats["dropped_rx_overflow"] <= sent + copies, stats
    # all dropped, all counted: by the responder, or before it by the per-source UDP rate
    assert flood_seen + stats["dropped_rate_limited"] == stats["udp_datagrams"] - stats["requests"], stats
