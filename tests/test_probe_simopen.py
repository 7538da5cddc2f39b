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


# --- rounds: a SYN that left too late to precede the server's proves nothing ------------

def test_a_round_counts_only_when_our_syn_left_before_the_servers_could():
    from stunturn_diag.sansio.probe import simopen as plan
    won = {"connected": False, "delay_ms": 30, "syn_sent_ms": 29.9}
    lost = {"connected": False, "delay_ms": 30, "syn_sent_ms": 30.0}
    assert not plan.lost_race(won) and plan.lost_race(lost)
    assert not plan.lost_race({**lost, "connected": True})   # it arrived: the crossing worked
    assert plan.next_delay_ms(won, 1, loss=False, misses=1) is None
    assert plan.next_delay_ms(won, 1, loss=True, misses=1) == 30      # once more after loss
    assert plan.next_delay_ms(won, 2, loss=True, misses=2) is None
    assert plan.next_delay_ms(lost, 1, loss=False, misses=0) == 60
    assert plan.next_delay_ms({**lost, "syn_sent_ms": 99.3}, 1, loss=False, misses=0) == 199
    assert plan.next_delay_ms({**lost, "syn_sent_ms": 900}, 2, loss=False, misses=0) == plan.MAX_DELAY_MS
    assert plan.next_delay_ms(lost, plan.MAX_ROUNDS, loss=False, misses=0) is None
    assert plan.next_delay_ms({"error": "no STUN answer"}, 1, loss=True, misses=0) is None
    assert plan.race_error(won) is None and "30 ms after asking" in plan.race_error(lost)
    assert plan.first_delay_ms(0.0002) == 30 and plan.first_delay_ms(0.05) == 200
    assert plan.wait_ms(0.0002) == 250 and plan.wait_ms(1.0) == 3000


def _stalling_server(stalls: int):
    """A probe-assist stand-in whose first ``stalls`` answers come back after the delay the
    request asked for (what a loaded host sees), from a source that never sends a SYN."""
    bodies = []

    def answer(body):
        bodies.append(body)
        if len(bodies) <= stalls:
            end = time.monotonic() + body["delay_ms"] / 1000 + 0.02
            while time.monotonic() < end:   # bounded: the asked delay plus 20 ms
                time.sleep(0.005)
        return {"source": {"ip": "127.0.0.2", "port": free_port()}}
    return answer, bodies


@pytest.mark.skipif(os.geteuid() != 0, reason="raw sockets need root")
def test_a_lost_race_is_run_again_with_a_longer_delay(service):
    from stunturn_diag.sansio.probe.evidence import TcpEvidence
    from stunturn_diag.sansio.probe.tcp_classify import classify_simopen
    answer, bodies = _stalling_server(stalls=1)
    run = TcpEvidence()
    simopen.simopen_test(run, _ep(service), "127.0.0.1", answer, lambda: 2, timeout=3.0, rtt=0.001)
    first, second = run.simopen["earlier_rounds"][0], (run.simopen["earlier_rounds"] + [run.simopen])[1]
    assert first["connected"] is False and first["syn_sent_ms"] >= first["delay_ms"] == 30
    assert [b["delay_ms"] for b in bodies][:2] == [30, second["delay_ms"]]
    assert second["delay_ms"] >= 2 * first["syn_sent_ms"]
    v = classify_simopen(run.simopen)
    if second["syn_sent_ms"] < second["delay_ms"]:   # it won the race: its "no" stands
        assert run.simopen["rounds"] == 2 and v.value is False and not v.failed
    else:   # this host stalled again (heavy load): a third round or the error, never a false
        assert run.simopen["rounds"] == 3 and v.value is not True
        assert v.failed == ("error" in run.simopen)


@pytest.mark.skipif(os.geteuid() != 0, reason="raw sockets need root")
def test_every_round_lost_is_an_error_not_a_false(service):
    from stunturn_diag.sansio.probe import simopen as plan
    from stunturn_diag.sansio.probe.evidence import TcpEvidence
    from stunturn_diag.sansio.probe.tcp_classify import classify_simopen
    answer, bodies = _stalling_server(stalls=plan.MAX_ROUNDS)
    run = TcpEvidence()
    simopen.simopen_test(run, _ep(service), "127.0.0.1", answer, lambda: 2, timeout=3.0, rtt=0.001)
    assert len(bodies) == plan.MAX_ROUNDS == run.simopen["rounds"]
    v = classify_simopen(run.simopen)
    assert v.value is None and v.failed and "too slow to tell" in v.reason
