"""TCP punching on loopback: simultaneous open, nomination, STUN over TCP, failures.

No NAT here (netns_tests/test_punch_tcp_matrix.py has the real kernel NATs); these
check the engine's socket mechanics, its bounded failure and its contract.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
from testlib import wait_for

from stunturn_server.config import ServerConfig
from stunturn_diag.errors import ConfigError, PunchError
from stunturn_diag.punch import tcp_runner
from stunturn_diag.sansio.punch import tcp_machine
from stunturn_diag.punch.tcp import DEFAULT_PRIME_TTL, TcpRendezvous
from stunturn_diag.punch.tcp_sockets import (attach_blackhole, blackhole_program, can_pin_isn,
                                             shared_port_socket)

LO = "127.0.0.1"


def _filter_allowed() -> bool:
    probe = shared_port_socket(LO, 0)
    try:
        return attach_blackhole(probe, [(LO, 9)])
    finally:
        probe.close()


needs_filter = pytest.mark.skipif(not _filter_allowed(), reason="this kernel refuses "
                                  "SO_ATTACH_FILTER here (needs CAP_NET_ADMIN)")


def punch_both(a: TcpRendezvous, b: TcpRendezvous, cands_a, cands_b, timeout=5.0, **kw):
    """Punch a (initiator) and b (receiver) concurrently; return (result_a, result_b)."""
    out: dict = {}

    def run(name, rv, cands, role):
        try:
            out[name] = rv.punch(cands, role=role, deadline=time.monotonic() + timeout, **kw)
        except Exception as exc:  # reported to the test thread
            out[name] = exc

    threads = [threading.Thread(target=run, args=("a", a, cands_a, "initiator")),
               threading.Thread(target=run, args=("b", b, cands_b, "receiver"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 5)
    return out["a"], out["b"]


def exchange(sa: socket.socket, sb: socket.socket) -> None:
    sa.settimeout(3)
    sb.settimeout(3)
    sa.sendall(b"ping")
    assert sb.recv(4) == b"ping"
    sb.sendall(b"pong")
    assert sa.recv(4) == b"pong"


@pytest.fixture
def pair():
    a, b = TcpRendezvous(LO), TcpRendezvous(LO)
    yield a, b
    a.close()
    b.close()


def test_simultaneous_open_on_loopback_exchanges_bytes(pair):
    a, b = pair
    sa, sb = punch_both(a, b, [(LO, b.local_port)], [(LO, a.local_port)])
    assert isinstance(sa, socket.socket) and isinstance(sb, socket.socket), (sa, sb)
    with sa, sb:
        assert sa.getsockname() == (LO, a.local_port)
        assert sa.getpeername() == (LO, b.local_port)
        assert sb.getpeername() == sa.getsockname()
        assert sa.gettimeout() is None  # returned in blocking mode
        exchange(sa, sb)


def test_kernel_isn_fallback_without_tcp_repair(pair, monkeypatch):
    """Without CAP_NET_ADMIN the engine keeps kernel ISNs (priming socket goes on)."""
    monkeypatch.setattr(tcp_runner, "can_pin_isn", lambda: False)
    a, b = pair
    sa, sb = punch_both(a, b, [(LO, b.local_port)], [(LO, a.local_port)])
    assert isinstance(sa, socket.socket) and isinstance(sb, socket.socket), (sa, sb)
    with sa, sb:
        exchange(sa, sb)


def test_no_priming_when_prime_ttl_is_zero(pair):
    a, b = pair
    sa, sb = punch_both(a, b, [(LO, b.local_port)], [(LO, a.local_port)], prime_ttl=0)
    assert isinstance(sa, socket.socket) and isinstance(sb, socket.socket), (sa, sb)
    with sa, sb:
        exchange(sa, sb)


def test_two_candidates_both_connect_but_one_connection_is_nominated():
    """Peer bound to 0.0.0.0 is reachable on 127.0.0.1 and 127.0.0.2: the initiator
    nominates one connection and both sides return exactly that one."""
    a, b = TcpRendezvous(LO), TcpRendezvous("0.0.0.0")
    try:
        b_cands = [(LO, a.local_port)]
        a_cands = [("127.0.0.2", b.local_port), (LO, b.local_port)]
        sa, sb = punch_both(a, b, a_cands, b_cands)
        assert isinstance(sa, socket.socket) and isinstance(sb, socket.socket), (sa, sb)
        with sa, sb:
            assert sa.getsockname() == sb.getpeername()
            assert sa.getpeername() == sb.getsockname()
            exchange(sa, sb)
    finally:
        a.close()
        b.close()


def test_listen_connect_strategy(pair):
    a, b = pair
    sa, sb = punch_both(a, b, [(LO, b.local_port)], [(LO, a.local_port)],
                        strategy="listen-connect")
    assert isinstance(sa, socket.socket) and isinstance(sb, socket.socket), (sa, sb)
    with sa, sb:
        exchange(sa, sb)


@pytest.mark.parametrize("pin", [True, False], ids=["pinned-isn", "kernel-isn"])
def test_peer_that_never_punches_fails_within_deadline_naming_rst(pair, pin, monkeypatch):
    if not pin:
        monkeypatch.setattr(tcp_runner, "can_pin_isn", lambda: False)
    a, b = pair
    closed = socket.socket()
    closed.bind((LO, 0))            # a port nobody listens on: the kernel answers RST
    port = closed.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(PunchError) as info:
        a.punch([(LO, port)], role="initiator", deadline=start + 1.0)
    closed.close()
    assert time.monotonic() - start < 3.0
    err = info.value
    assert err.reason == "refused"
    assert "RST" in err.message
    (attempt,) = err.attempts
    assert attempt["candidate"] == f"{LO}:{port}"
    assert "ECONNREFUSED" in attempt["error"]
    # retries are paced by the back-off (tcp_machine.retry_delay), never a storm
    rounds, t = 1, 0.0
    while t + tcp_machine.retry_delay(rounds) < 1.0:
        t += tcp_machine.retry_delay(rounds)
        rounds += 1
    assert 1 < attempt["connects"] <= rounds + 1


@needs_filter
def test_silent_peer_times_out(pair):
    """A peer whose listener black-holes us (it never connects back): reason timeout."""
    a, b = pair
    silent = shared_port_socket(LO, 0)
    silent.listen(1)
    assert attach_blackhole(silent, [(LO, a.local_port)])
    with pytest.raises(PunchError) as info:
        a.punch([silent.getsockname()], role="initiator", deadline=time.monotonic() + 0.8)
    silent.close()
    assert info.value.reason == "timeout"


@needs_filter
@pytest.mark.parametrize("lo", [LO, "::1"], ids=["ipv4", "ipv6"])
def test_blackhole_listener_drops_only_the_listed_source(lo):
    listener = shared_port_socket(lo, 0)
    listener.listen(4)
    dropped, passed = shared_port_socket(lo, 0), shared_port_socket(lo, 0)
    try:
        assert attach_blackhole(listener, [dropped.getsockname()[:2]])
        for s in (dropped, passed):
            s.connect_ex(listener.getsockname())
        listener.setblocking(True)
        listener.settimeout(2)
        conn, peer = listener.accept()
        conn.close()
        assert peer[:2] == passed.getsockname()[:2]
        listener.settimeout(0.3)
        with pytest.raises(socket.timeout):
            listener.accept()
    finally:
        for s in (listener, dropped, passed):
            s.close()


@needs_filter
def test_a_listener_of_the_other_family_needs_no_filter():
    listener = shared_port_socket("::1", 0)
    try:
        assert attach_blackhole(listener, [(LO, 9)])     # IPv4 cannot reach a V6ONLY socket
    finally:
        listener.close()


def test_blackhole_program_shape():
    prog = blackhole_program([("10.0.0.1", 1000), ("10.0.0.2", 2000)])
    assert len(prog) == 4 * 2 + 2
    assert all(len(insn) == 8 for insn in prog)


def test_own_address_is_skipped_and_empty_list_is_an_error(pair):
    a, _b = pair
    with pytest.raises(PunchError) as info:
        a.punch([(LO, a.local_port), ("::1", 5), ("bogus", 1)], role="initiator",
                deadline=time.monotonic() + 1)
    assert info.value.reason == "no-candidates"
    errors = " ".join(x["error"] for x in info.value.attempts)
    assert "own address" in errors and "IPv4" in errors and "(ip, port)" in errors


def test_bad_arguments_are_config_errors(pair):
    a, _b = pair
    with pytest.raises(ConfigError):
        a.punch([(LO, 9)], role="boss", deadline=time.monotonic() + 1)
    with pytest.raises(ConfigError):
        a.punch([(LO, 9)], role="initiator", deadline=time.monotonic() + 1, prime_ttl=300)
    with pytest.raises(ConfigError):
        TcpRendezvous("not-an-address")
    with pytest.raises(ConfigError):
        TcpRendezvous(LO, 70000)


def test_one_punch_per_rendezvous(pair):
    a, _b = pair
    with pytest.raises(PunchError):
        a.punch([(LO, 9)], role="initiator", deadline=time.monotonic() + 0.3)
    with pytest.raises(ConfigError):
        a.punch([(LO, 9)], role="initiator", deadline=time.monotonic() + 0.3)


def test_local_candidates():
    with TcpRendezvous(LO) as rv:
        assert rv.local_candidates() == [(LO, rv.local_port)]
    with TcpRendezvous() as rv:
        cands = rv.local_candidates()
        assert all(port == rv.local_port for _ip, port in cands)
        assert all(not ip.startswith("127.") for ip, _port in cands)
        assert len(cands) <= 8


def test_default_prime_ttl_and_pin_probe():
    assert DEFAULT_PRIME_TTL == 2
    assert can_pin_isn() in (True, False)


# -- STUN Binding over TCP ------------------------------------------------------------

@pytest.fixture
def stun_service():
    from stunturn_server.stun.service import start_stun_service
    service = start_stun_service(ServerConfig(http_host=LO, stun_port=0, alt_port=0))
    yield service
    service.stop()


def test_learn_mapping_over_tcp_and_keep_the_connection(stun_service):
    primary = stun_service.endpoints[0]
    with TcpRendezvous(LO) as rv:
        mapped = rv.learn_mapping((primary.ip, primary.port), 3.0)
        assert mapped == (LO, rv.local_port)      # no NAT on loopback
        assert rv._stun is not None and rv._stun.getpeername() == (primary.ip, primary.port)
        assert rv._stun.getsockname() == (LO, rv.local_port)


def test_learn_mapping_then_punch_from_the_same_port(stun_service):
    primary = stun_service.endpoints[0]
    a, b = TcpRendezvous(LO), TcpRendezvous(LO)
    try:
        ma = a.learn_mapping((primary.ip, primary.port), 3.0)
        mb = b.learn_mapping((primary.ip, primary.port), 3.0)
        sa, sb = punch_both(a, b, [mb], [ma])
        assert isinstance(sa, socket.socket) and isinstance(sb, socket.socket), (sa, sb)
        with sa, sb:
            assert sa.getsockname()[1] == ma[1]
            exchange(sa, sb)
    finally:
        a.close()
        b.close()


def test_learn_mapping_failure_is_a_punch_error():
    closed = socket.socket()
    closed.bind((LO, 0))
    port = closed.getsockname()[1]
    with TcpRendezvous(LO) as rv, pytest.raises(PunchError) as info:
        rv.learn_mapping((LO, port), 1.0)
    closed.close()
    assert info.value.reason == "stun-failed"
    assert f"{LO}:{port}" in info.value.message


def test_learn_mapping_from_a_silent_server_times_out():
    silent = socket.socket()
    silent.bind((LO, 0))
    silent.listen(1)                # accepts (kernel) but never answers
    with TcpRendezvous(LO) as rv, pytest.raises(PunchError) as info:
        rv.learn_mapping(silent.getsockname(), 0.5)
    silent.close()
    assert info.value.reason == "stun-failed"
    assert "no STUN Binding response" in info.value.message


def test_learn_mapping_resends_an_unanswered_syn_from_the_same_port():
    """A SYN nobody answers (a listener whose accept queue is full drops it, as a lossy
    path would) is resent from a fresh socket on the rendezvous port with the same ISN
    after 200 ms, a quick one 100 ms later, then 400 ms (``same_tuple_waits``), instead
    of the kernel's 1 s; without an ISN to pin, one socket (the kernel's schedule)."""
    from stunturn_diag.punch import tcp_stun

    full = socket.socket()
    full.bind((LO, 0))
    full.listen(0)
    filler = socket.create_connection(full.getsockname())   # takes the only queue slot
    made = []

    def make(isn):
        sock = shared_port_socket(LO, rv.local_port)       # (unpinned here: no root needed)
        made.append((sock.getsockname()[1], isn))
        return sock

    with TcpRendezvous(LO) as rv, pytest.raises(PunchError) as info:
        tcp_stun.tcp_binding_resending(make, full.getsockname(), 1.0, 0x1235)
    filler.close()
    full.close()
    assert info.value.reason == "stun-failed"
    assert len(made) == 5                # 0.2, 0.1, 0.4, 0.1 s, then the rest of the 1 s
    assert set(made) == {(rv.local_port, 0x1235)}          # one port, one ISN
    made.clear()
    full = socket.socket()
    full.bind((LO, 0))
    full.listen(0)
    filler = socket.create_connection(full.getsockname())
    with TcpRendezvous(LO) as rv, pytest.raises(PunchError):
        tcp_stun.tcp_binding_resending(make, full.getsockname(), 0.5, None)
    filler.close()
    full.close()
    assert made == [(rv.local_port, None)]


def test_a_binding_stuck_on_its_first_port_moves_to_a_new_port_for_the_rest():
    """No SYN-ACK through on the first port within half the timeout
    (``synwait.port_budgets``): ``new_port`` is asked once for a new local port, whose
    SYNs get the rest; here its first SYN is taken (the queue freed), so what fails
    then is the STUN answer that this listener never sends, not the connect."""
    from stunturn_diag.punch import tcp_stun

    full = socket.socket()
    full.bind((LO, 0))
    full.listen(0)
    filler = socket.create_connection(full.getsockname())   # takes the only queue slot
    made, ports, calls = [], [], []

    def maker(port):
        def make(isn):
            sock = shared_port_socket(LO, port)
            made.append(sock.getsockname()[1])
            return sock
        return make

    def new_port():
        calls.append(time.monotonic())
        full.accept()[0].close()                            # the queue has room again
        spare = shared_port_socket(LO, 0)
        ports.append(spare.getsockname()[1])
        spare.close()
        return maker(ports[-1])

    first = shared_port_socket(LO, 0)
    first_port = first.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(PunchError) as info:
        tcp_stun.tcp_binding_resending(maker(first_port), full.getsockname(), 1.2, 0x1235,
                                       new_port=new_port)
    filler.close()
    full.close()
    first.close()
    assert info.value.reason == "stun-failed"
    assert len(calls) == 1 and calls[0] - t0 >= 0.6 - 0.05   # after the first port's half
    n_first = made.index(ports[0])
    assert n_first >= 3 and set(made[:n_first]) == {first_port}
    assert made[n_first:] == [ports[0]]                       # connected at its first SYN
    assert "(from two local ports)" not in info.value.message  # the connect did not fail


def test_port_budgets_split_the_timeout_only_when_the_port_is_ours():
    from stunturn_diag.sansio.synwait import port_budgets

    assert port_budgets(3.0, True) == [1.5, 1.5]
    assert port_budgets(3.0, False) == [3.0]


def test_keepalive_refreshes_the_binding_until_punch(stun_service):
    primary = stun_service.endpoints[0]
    rv = TcpRendezvous(LO)
    try:
        rv.learn_mapping((primary.ip, primary.port), 3.0)
        before = stun_service.stats["requests"]
        rv.start_keepalive(interval=0.05)
        assert wait_for(lambda: stun_service.stats["requests"] >= before + 3, 5.0)
        assert rv.keepalive_error is None
        thread = rv._keepalive
        with pytest.raises(PunchError):
            rv.punch([(LO, 9)], role="initiator", deadline=time.monotonic() + 0.2)
        assert wait_for(lambda: not thread.is_alive(), 5.0)  # punch stopped it
    finally:
        rv.close()


def test_keepalive_stops_quietly_when_the_server_goes(stun_service):
    primary = stun_service.endpoints[0]
    rv = TcpRendezvous(LO)
    try:
        rv.learn_mapping((primary.ip, primary.port), 3.0)
        rv.start_keepalive(interval=0.05)
        stun_service.stop()
        assert wait_for(lambda: rv.keepalive_error is not None, 5.0)
        assert "STUN" in rv.keepalive_error
    finally:
        rv.close()


def test_learn_mapping_accepts_a_host_name(stun_service):
    primary = stun_service.endpoints[0]
    with TcpRendezvous(LO) as rv:
        assert rv.learn_mapping(("localhost", primary.port), 3.0) == (LO, rv.local_port)


def test_learn_mapping_rejects_a_server_of_the_other_family():
    with TcpRendezvous(LO) as rv, pytest.raises(PunchError) as info:
        rv.learn_mapping(("::1", 3478), 1.0)
    assert info.value.reason == "stun-failed" and "not IPv4" in info.value.message


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here")
def test_simultaneous_open_over_ipv6_loopback():
    """The same punch over IPv6 sockets (issue 14): hop limit for the TTL, IPv6-only
    shared ports, IPv4 candidates skipped."""
    with TcpRendezvous("::1") as a, TcpRendezvous("::1") as b:
        sa, sb = punch_both(a, b, [("::1", b.local_port), (LO, 9)], [("::1", a.local_port)])
        assert isinstance(sa, socket.socket) and isinstance(sb, socket.socket), (sa, sb)
        with sa, sb:
            assert sa.family == socket.AF_INET6
            assert sa.getpeername()[:2] == ("::1", b.local_port)
            exchange(sa, sb)


def test_keepalive_settings_follow_the_udp_options():
    from stunturn_diag.punch.tcp_sockets import configure_keepalive, keepalive_settings
    assert keepalive_settings(2.0, 10.0) == {"idle": 2, "interval": 2, "count": 4,
                                             "user_timeout_ms": 10000}
    assert keepalive_settings(0.2, 0.5)["idle"] == 1            # whole seconds, at least 1
    assert keepalive_settings(0.2, 0.5)["count"] == 1
    with socket.socket() as sock:
        cfg = configure_keepalive(sock, 1.0, 3.0)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == cfg["count"] == 2
        assert sock.getsockopt(socket.IPPROTO_TCP, 18) == 3000       # TCP_USER_TIMEOUT


def test_a_4tuple_held_by_the_listener_is_taken_from_the_accept_queue():
    """The peer's SYN found no connecting socket of ours, so the listener holds the
    connection (and its 4-tuple): our connect then fails with EADDRNOTAVAIL, which
    means "take it from the listener", not "try again in a while"."""
    listener = shared_port_socket(LO, 0)
    listener.listen(16)
    peer = shared_port_socket(LO, 0)
    peer_addr = peer.getsockname()[:2]
    try:
        peer.setblocking(True)
        peer.connect(listener.getsockname())          # established, waiting in the queue
        loop = tcp_runner.TcpPunchRunner(listener.getsockname()[:2], listener, [peer_addr],
                                         role="initiator", deadline=time.monotonic() + 5,
                                         prime_ttl=None,
                                         strategy=tcp_machine.STRATEGY_SIMULTANEOUS)
        cand = loop.machine.candidates[0]
        loop.execute(loop.machine.connect(cand, time.monotonic()))
        assert cand.errors == {"connect EADDRNOTAVAIL": 1}
        assert cand.up and cand.connects == 0 and cand.busy == 1
        assert [c.via for c in loop.machine.conns] == ["accept"] and \
            loop.machine.conns[0].cand is cand
        assert peer.recv(8) == tcp_machine.NOMINATE       # the nomination runs on it
    finally:
        for conn in getattr(getattr(loop, "machine", None), "conns", []):
            loop.socks[conn.handle].close()
        peer.close()
        listener.close()

