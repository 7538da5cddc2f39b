"""The simultaneous-open test's Scapy parts: a crafted low-TTL SYN, and the sniffer that
waits for the server's SYN on the exact 4-tuple (real packets on loopback, root)."""

from __future__ import annotations

import os
import socket
import time

import pytest

from stunturn_diag.probe import simopen


def _free_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


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


@pytest.mark.skipif(os.geteuid() != 0, reason="raw sockets and sniffing need root")
def test_sniffer_sees_only_the_expected_syn():
    sc = simopen.scapy_parts()
    dport = _free_port()
    expect = {"src": ("127.0.0.3", 5555)}
    l3 = sc["L3RawSocket"]()
    try:
        # decoys: another source port, and a SYN-ACK from the right source
        decoy = simopen.start_syn_watch(sc, "127.0.0.1", dport, expect)
        l3.send(simopen.craft_syn(sc, ("127.0.0.3", 5556), ("127.0.0.1", dport), ttl=64))
        synack = simopen.craft_syn(sc, ("127.0.0.3", 5555), ("127.0.0.1", dport), ttl=64)
        synack[sc["TCP"]].flags = "SA"
        l3.send(synack)
        assert simopen.wait_syn(decoy, time.monotonic() + 0.3) is False
        # the expected SYN
        watch = simopen.start_syn_watch(sc, "127.0.0.1", dport, expect)
        l3.send(simopen.craft_syn(sc, ("127.0.0.3", 5555), ("127.0.0.1", dport), ttl=64))
        assert simopen.wait_syn(watch, time.monotonic() + 5) is True
    finally:
        l3.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="raw sockets and sniffing need root")
def test_an_answer_without_source_is_an_error_not_an_exception(service):
    from stunturn_diag.probe.endpoints import Endpoints
    from stunturn_diag.probe.tcp import TcpRun

    roles = {e.role: (e.ip, e.port) for e in service.endpoints}
    ep = Endpoints(roles["primary"], roles["alt-port"], roles["alt-ip"], roles["alt-both"])
    run = TcpRun()
    simopen.simopen_test(run, ep, "127.0.0.1", lambda body: {"unexpected": True}, lambda: 2,
                         timeout=3.0, rtt=0.01)
    assert "names no source address" in run.simopen["error"]
    assert "connected" not in run.simopen
