"""`lab demo`'s message exchange through a punched channel, and how the demo renders it."""

from __future__ import annotations

import queue
import socket
import threading

from stunturn_diag.lab.demo import render
from stunturn_diag.lab.demo_peer import _tcp_exchange, _udp_exchange


class LossyChannel:
    """Half of an in-memory datagram channel (UdpChannel's send/recv) that drops the
    first ``drop`` datagrams it sends."""

    def __init__(self, inbox: queue.Queue, outbox: queue.Queue, drop: int = 0) -> None:
        self.inbox, self.outbox, self.drop, self.sent = inbox, outbox, drop, 0

    def send(self, data: bytes) -> None:
        self.sent += 1
        if self.sent > self.drop:
            self.outbox.put(data)

    def recv(self, timeout: float | None = None) -> bytes:
        try:
            return self.inbox.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError from None


def _pair(drop: int = 0):
    q1, q2 = queue.Queue(), queue.Queue()
    return LossyChannel(q1, q2, drop), LossyChannel(q2, q1, drop)


def _both(fn, a, b, timeout: float) -> dict:
    got: dict = {}
    threads = [threading.Thread(target=lambda: got.__setitem__("a", fn(a, "from a", timeout))),
               threading.Thread(target=lambda: got.__setitem__("b", fn(b, "from b", timeout)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 5)
    return got


def test_udp_messages_cross_both_ways():
    a, b = _pair()
    assert _both(_udp_exchange, a, b, 3.0) == {"a": "from b", "b": "from a"}
    assert a.sent < 10 and b.sent < 10            # stops once both sides confirmed


def test_udp_exchange_rides_out_lost_datagrams():
    a, b = _pair(drop=4)
    assert _both(_udp_exchange, a, b, 3.0) == {"a": "from b", "b": "from a"}


def test_udp_exchange_with_a_silent_peer_is_bounded():
    a, _ = _pair()
    assert _udp_exchange(a, "hello", 0.3) is None
    assert a.sent <= 5


def test_udp_exchange_ignores_garbage_and_stops_at_end_of_data():
    a, b = _pair()
    b.send(b"not json")
    b.send(b'{"no": "msg"}')
    b.send(b"")                                    # the peer ended the channel
    assert _udp_exchange(a, "hello", 1.0) is None


def test_tcp_messages_cross_both_ways():
    a, b = socket.socketpair()
    try:
        assert _both(_tcp_exchange, a, b, 3.0) == {"a": "from b", "b": "from a"}
    finally:
        a.close()
        b.close()


def test_tcp_exchange_without_a_line_is_none():
    a, b = socket.socketpair()
    try:
        b.sendall(b"no newline")
        b.shutdown(socket.SHUT_WR)
        assert _tcp_exchange(a, "hello", 1.0) is None
        assert b.recv(100) == b"hello\n"
    finally:
        a.close()
        b.close()


def _side(host, local, mapped, peer, sent, received):
    addr = lambda t: {"ip": t[0], "port": t[1]}   # noqa: E731
    return {"step": "x", "status": "ok", "host": host, "stderr": "", "result": {
        "ok": True, "strategy": "simultaneous", "connect_ms": 30.5,
        "explanation": "both mappings are endpoint-independent: punch the reflexive addresses",
        "local": addr(local), "mapped": addr(mapped), "peer": addr(peer),
        "sent": sent, "received": received, "exchange_error": None}}


def test_render_shows_each_side_and_the_messages():
    report = {"lab": "stl-000000", "ok": True, "peers": {"initiator": {"host": "a1"},
                                                         "receiver": {"host": "b1"}},
              "sites": {"a": {"nat": "port-restricted", "public_ip": "203.0.113.2",
                              "host": "a1"}},
              "steps": [{"step": "punch udp", "status": "ok", "protocol": "udp",
                         "initiator": _side("a1", ("192.168.1.10", 4000), ("203.0.113.2", 4000),
                                            ("203.0.113.18", 5000), "hello from a1",
                                            "hello from b1"),
                         "receiver": _side("b1", ("192.168.2.10", 5000),
                                           ("203.0.113.18", 5000), ("203.0.113.2", 4000),
                                           "hello from b1", "hello from a1"),
                         "exchange": {"a1 -> b1": True, "b1 -> a1": True}}]}
    text = render(report)
    assert "    strategy simultaneous: both mappings are endpoint-independent" in text
    assert ("    initiator a1: 192.168.1.10:4000 (mapped 203.0.113.2:4000) -> peer "
            "203.0.113.18:5000, authenticated 30.5 ms after the match") in text
    assert '    b1 -> a1: "hello from b1" arrived through the punched channel' in text
    assert "ok=True" not in text and "{'ip'" not in text
    assert text.endswith("a1 and b1 talked directly over UDP")


def test_render_names_a_missing_message_and_the_failed_step():
    report = {"lab": "stl-000000", "ok": False, "peers": {}, "sites": {},
              "steps": [{"step": "punch tcp", "status": "failed", "protocol": "tcp",
                         "initiator": _side("a1", ("192.168.1.10", 1), ("203.0.113.2", 1),
                                            ("203.0.113.18", 2), "hello from a1", None),
                         "receiver": _side("b1", ("192.168.2.10", 2), ("203.0.113.18", 2),
                                           ("203.0.113.2", 1), "hello from b1",
                                           "hello from a1"),
                         "exchange": {"a1 -> b1": True, "b1 -> a1": False}}]}
    report["steps"][0]["initiator"]["result"]["exchange_error"] = "no message from the peer"
    text = render(report)
    assert "    b1 -> a1: message did NOT arrive" in text
    assert "    initiator: no message from the peer" in text
    assert text.endswith("punch tcp (no message through the channel)")
