"""The simultaneous-open test's parts: a low-TTL SYN crafted with Scapy, and our BPF-filtered
raw socket that waits for the server's SYN on the exact 4-tuple (real packets on loopback,
root); a part that breaks is reported at once as the test's error."""

from __future__ import annotations

import os
import time

import pytest
from testlib import free_port

from stunturn_diag.probe import simopen_runner as simopen


def test_crafted_syn_has_the_ttl_and_only_the_syn_flag():
    sc = simopen.scapy_parts()
    assert "error" not in sc
    pkt = sc["IP"](bytes(simopen.craft_syn(sc, ("192.168.1.10", 40000), ("198.51.100.20", 5555), ttl=2)))
    tcp = pkt[sc["TCP"]]
    assert pkt.ttl == 2 and pkt.src == "192.168.1.10" and pkt.dst == "198.51.100.20"
    assert (tcp.sport, tcp.dport) == (40000, 5555) and str(tcp.flags) == "S"
    # checksums Scapy computed are right: rebuilding with them cleared gives the same bytes
    again = pkt.copy()
    del again.chksum
    del again[sc["TCP"]].chksum
    assert bytes(again) == bytes(pkt)


@pytest.mark.skipif(os.geteuid() != 0, reason="raw sockets need root")
def test_watch_sees_only_the_expected_syn():
    from stunturn_diag.rawsock import SynWatch, ip_sender
    sc = simopen.scapy_parts()
    dport = free_port()
    src = ("127.0.0.3", 5555)
    sender = ip_sender()
    try:
        # decoys: another source port, a SYN-ACK from the right source, a SYN to another port
        decoy = SynWatch(dport)
        simopen.send_packets(sender, simopen.craft_syn(sc, ("127.0.0.3", 5556), ("127.0.0.1", dport), 64),
                             1, "127.0.0.1")
        synack = simopen.craft_syn(sc, src, ("127.0.0.1", dport), ttl=64)
        synack[sc["TCP"]].flags = "SA"
        simopen.send_packets(sender, synack, 1, "127.0.0.1")
        simopen.send_packets(sender, simopen.craft_syn(sc, src, ("127.0.0.1", dport + 1), 64), 1, "127.0.0.1")
        assert decoy.wait(src, time.monotonic() + 0.3) is False
        assert decoy.seen == [("127.0.0.3", 5556)]  # the kernel filter let only the other SYN to dport in
        decoy.close()
        # the expected SYN
        watch = SynWatch(dport)
        simopen.send_packets(sender, simopen.craft_syn(sc, src, ("127.0.0.1", dport), ttl=64), 1, "127.0.0.1")
        assert watch.wait(src, time.monotonic() + 5) is True
        watch.close()
    finally:
        sender.close()


def _ep(service):
    from stunturn_diag.sansio.probe.endpoints import Endpoints
    roles = {e.role: (e.ip, e.port) for e in service.endpoints}
    return Endpoints(roles["primary"], roles["alt-port"], roles["alt-ip"], roles["alt-both"])


def _set_event():
    import threading
    e = threading.Event()
    e.set()
    return e


def test_broken_scapy_is_an_error_at_once(monkeypatch, service):
    """Scapy that cannot be imported: the test records the error without waiting; the probe
    turns it into a failed (partial) verdict."""
    from stunturn_diag.sansio.probe.evidence import TcpEvidence
    from stunturn_diag.sansio.probe.tcp_classify import classify_simopen
    monkeypatch.setattr(simopen, "_scapy", {"error": "Scapy is not usable here (ImportError: no scapy)"})
    monkeypatch.setattr(simopen, "_loaded", _set_event())
    run = TcpEvidence()
    simopen.simopen_test(run, _ep(service), "127.0.0.1", lambda body: pytest.fail("asked the server"),
                         lambda: 2, timeout=3.0, rtt=0.01)
    assert "ImportError" in run.simopen["error"] and "connected" not in run.simopen
    v = classify_simopen(run.simopen)
    assert v.value is None and v.failed and "ImportError" in v.reason


@pytest.mark.skipif(os.geteuid() != 0, reason="raw sockets need root")
def test_refused_raw_socket_is_an_error(monkeypatch, service):
    from stunturn_diag.sansio.probe.evidence import TcpEvidence

    def refuse(dport, ipv6=False):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(simopen, "SynWatch", refuse)
    run = TcpEvidence()
    simopen.simopen_test(run, _ep(service), "127.0.0.1", lambda body: pytest.fail("asked the server"),
                         lambda: 2, timeout=3.0, rtt=0.01)
    assert "raw sockets" in run.simopen["error"] and "Operation not permitted" in run.simopen["error"]


@pytest.mark.skipif(os.geteuid() != 0, reason="raw sockets and sniffing need root")
def test_an_answer_without_source_is_an_error_not_an_exception(service):
    from stunturn_diag.sansio.probe.evidence import TcpEvidence

    run = TcpEvidence()
    simopen.simopen_test(run, _ep(service), "127.0.0.1", lambda body: {"unexpected": True}, lambda: 2,
                         timeout=3.0, rtt=0.01)
    assert "names no source address" in run.simopen["error"]
    assert "connected" not in run.simopen
