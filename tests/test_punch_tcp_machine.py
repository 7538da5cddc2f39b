"""The pure TCP punch machine with a fake clock: rounds, back-off, settle, the 2 s
nomination rule, EADDRNOTAVAIL and listener renewal (no sockets here;
tests/test_punch_tcp.py runs the same machine through the select runner)."""

from __future__ import annotations

import errno

import pytest

from stunturn_diag.sansio.punch import tcp_machine as tm
from stunturn_diag.sansio.punch.tcp_machine import (Abort, CheckSynReceived, CheckSynSent, CheckUnacked,
                                                    Close,
                                                    DrainAccepts,
                                                    FilterListener, Listen, OpenConnect,
                                                    OpenListener, StreamRecv, Resume, StreamSend, SetTtl,
                                                    TcpPunchMachine)
from stunturn_diag.sansio.punch.wire import Role

PEER = ("203.0.113.9", 40000)
OTHER = ("198.51.100.4", 41000)


def machine(role=Role.INITIATOR, *, prime_ttl=2, pin=False, strategy=tm.STRATEGY_SIMULTANEOUS,
            candidates=(PEER,), deadline=10.0, **kw) -> TcpPunchMachine:
    return TcpPunchMachine(list(candidates), role=role, deadline=deadline, prime_ttl=prime_ttl,
                           strategy=strategy, pin=pin, isn_source=lambda: 0x1234, **kw)


def resume_all(m: TcpPunchMachine, actions, now):
    """Answer Resume actions (what the runner does); return the other actions in order."""
    out, queue = [], list(actions)
    while queue:
        action = queue.pop(0)
        if isinstance(action, Resume):
            queue[:0] = m.resume(action.step, action.index, now)
        else:
            out.append(action)
    return out


def only(kind, m: TcpPunchMachine, now: float, *, syn_sent: bool = False, syn_received: bool = False):
    """The timers' actions at ``now`` but those of the other state check (SYN resends and
    the SYN-RECEIVED watch look at the same full-TTL socket): those are answered with the
    socket being ``syn_sent`` / ``syn_received``."""
    out, answered = [], False
    for action in resume_all(m, m.on_timers(now), now):
        if isinstance(action, CheckSynReceived) and kind is not CheckSynReceived:
            out += m.on_syn_received(action.handle, syn_received, now)
            answered = True
        elif isinstance(action, CheckSynSent) and kind is not CheckSynSent and not m.candidates[0].priming:
            out += m.on_syn_sent(action.handle, syn_sent, now)
            answered = True
        else:
            out.append(action)
    if answered and not out:   # one check per pass: the other one comes at the next
        return only(kind, m, now, syn_sent=syn_sent, syn_received=syn_received)
    return out


def started(m: TcpPunchMachine, actions, rc=errno.EINPROGRESS, now=0.0):
    """Answer each OpenConnect with connect's ``rc``; the other actions, in order."""
    out = []
    for action in actions:
        out.append(action)
        if isinstance(action, OpenConnect):
            out += m.on_connect_started(action.handle, rc, 64, now)
    return out


def test_start_filters_then_listens_then_primes_each_candidate():
    m = machine(candidates=(PEER, OTHER))
    actions = m.start(0.0)
    assert actions[:2] == [FilterListener(tm.LISTENER, (PEER, OTHER)), Listen(tm.LISTENER)]
    assert [(a.address, a.ttl, a.isn) for a in actions[2:]] == [(PEER, 2, None), (OTHER, 2, None)]
    assert all(c.settle_at == c.next_connect == tm.SETTLE for c in m.candidates)
    assert m.on_filtered(False) == [] and m.filtered is False


def test_pinned_isn_prime_settles_into_a_fresh_full_ttl_socket_with_the_same_isn():
    m = machine(pin=True)
    (prime,) = started(m, m.start(0.0)[2:])
    assert prime.isn == 0x1234 | 1 and prime.ttl == 2
    assert resume_all(m, m.on_timers(tm.SETTLE - 0.001), tm.SETTLE - 0.001) == []
    _, _, timeout = m.wait(tm.SETTLE - 0.001)
    assert timeout == pytest.approx(0.001)
    (check,) = resume_all(m, m.on_timers(tm.SETTLE), tm.SETTLE)
    assert check == CheckSynSent(prime.handle)
    abort, full = m.on_syn_sent(prime.handle, True, tm.SETTLE)
    assert abort == Abort(prime.handle)
    assert (full.ttl, full.isn, m.candidates[0].connects) == (None, prime.isn, 1)


def test_kernel_isn_prime_is_kept_at_full_ttl_then_gives_way_to_the_full_syn():
    """The priming socket's TTL is raised as soon as its SYN left and it waits in
    SYN-SENT (the peer's SYN must find a socket of ours: a listener's SYN-ACK, another
    ISN, gave one-way connections); at settle time a fresh socket sends the full SYN."""
    m = machine()
    prime, raise_ttl = started(m, m.start(0.0)[2:])
    assert (prime.ttl, prime.isn, raise_ttl) == (2, None, SetTtl(prime.handle, 64))
    assert resume_all(m, m.on_timers(tm.SETTLE - 0.001), tm.SETTLE - 0.001) == []
    assert m.wait(tm.SETTLE - 0.001)[2] == pytest.approx(0.001)
    (check,) = resume_all(m, m.on_timers(tm.SETTLE), tm.SETTLE)
    assert check == CheckSynSent(prime.handle)
    abort, full = m.on_syn_sent(prime.handle, True, tm.SETTLE)
    assert abort == Abort(prime.handle)
    assert (full.ttl, full.isn, m.candidates[0].connects) == (None, None, 1)


def test_kernel_isn_prime_the_peer_syn_reached_is_the_connection():
    m = machine()
    prime, _ = started(m, m.start(0.0)[2:])
    (check,) = resume_all(m, m.on_timers(tm.SETTLE), tm.SETTLE)
    assert m.on_syn_sent(prime.handle, False, tm.SETTLE) == []
    # no full SYN, and no stall rule: with kernel ISNs the prime is the connection
    assert resume_all(m, m.on_timers(tm.SETTLE + 1), tm.SETTLE + 1) == []
    assert m.on_connect_result(prime.handle, 0, tm.SETTLE + 1) == \
        [StreamSend(prime.handle, tm.NOMINATE)]
    assert m.candidates[0].connects == 0 and m.candidates[0].up


def test_kernel_isn_receiver_keeps_its_prime_the_initiator_sends_a_fresh_syn():
    """KERNEL_RECEIVER_KEEPS: at the settle time the initiator's prime, still in SYN-SENT,
    gives way to a fresh full-TTL socket; the receiver's stays (its one ISN) and counts
    as the round's connect."""
    ini = machine()
    prime, _ = started(ini, ini.start(0.0)[2:])
    (check,) = resume_all(ini, ini.on_timers(tm.SETTLE), tm.SETTLE)
    abort, fresh = started(ini, ini.on_syn_sent(prime.handle, True, tm.SETTLE), now=tm.SETTLE)
    assert abort == Abort(prime.handle) and fresh.ttl is None
    rec = machine(Role.RECEIVER)
    prime, _ = started(rec, rec.start(0.0)[2:])
    (check,) = resume_all(rec, rec.on_timers(tm.SETTLE), tm.SETTLE)
    assert check == CheckSynSent(prime.handle)
    assert rec.on_syn_sent(prime.handle, True, tm.SETTLE) == []
    cand = rec.candidates[0]
    assert cand.handle == prime.handle and not cand.priming and cand.connects == 1
    assert resume_all(rec, rec.on_timers(tm.SETTLE + 0.5), tm.SETTLE + 0.5) == []   # it waits
    assert rec.on_connect_result(prime.handle, 0, 0.6) == [StreamSend(prime.handle, tm.READY)]


def test_kernel_isn_prime_killed_by_icmp_is_replaced_at_once_a_refused_one_later():
    m = machine()
    prime, _ = started(m, m.start(0.0)[2:])
    close, again = m.on_connect_result(prime.handle, errno.EHOSTUNREACH, 0.0002)
    assert close == Close(prime.handle) and (again.ttl, again.isn) == (2, None)
    cand = m.candidates[0]
    assert cand.errors == {"prime EHOSTUNREACH": 1} and cand.primes == 2
    m.on_connect_started(again.handle, errno.EINPROGRESS, 64, 0.0002)
    assert m.on_connect_result(again.handle, errno.ECONNREFUSED, 0.0004) == [Close(again.handle)]
    assert resume_all(m, m.on_timers(0.0005), 0.0005) == []
    assert m.wait(0.0005)[2] == pytest.approx(0.0002 + tm.PRIME_EVERY - 0.0005)
    (third,) = resume_all(m, m.on_timers(0.0002 + tm.PRIME_EVERY), 0.0002 + tm.PRIME_EVERY)
    assert third.ttl == 2 and cand.connects == 0


def test_kernel_isn_primes_stop_at_max_primes():
    m = machine()
    actions, now = m.start(0.0)[2:], 0.0
    for _ in range(tm.MAX_PRIMES + 5):
        opened = [a for a in started(m, actions, now=now) if isinstance(a, OpenConnect)]
        if not opened:
            break
        actions = m.on_connect_result(opened[0].handle, errno.EHOSTUNREACH, now)[1:]
    assert m.candidates[0].primes == tm.MAX_PRIMES and actions == []
    (full,) = resume_all(m, m.on_timers(tm.SETTLE), tm.SETTLE)    # the full SYN still goes
    assert full.ttl is None


def test_refused_rounds_back_off_and_the_receiver_zigzags():
    for role, shift in ((Role.INITIATOR, 0.0), (Role.RECEIVER, tm.KERNEL_STEP)):
        m = machine(role, prime_ttl=None)
        assert m.start(0.0) == [FilterListener(tm.LISTENER, (PEER,)), Listen(tm.LISTENER)]
        (connect,) = started(m, resume_all(m, m.on_timers(0.0), 0.0))
        assert m.on_connect_result(connect.handle, errno.ECONNREFUSED, 1.0) == \
            [Close(connect.handle)]
        cand = m.candidates[0]
        assert cand.next_connect == pytest.approx(1.0 + tm.RETRY_FIRST + shift)
    assert [tm.retry_delay(n) for n in (1, 3, 4, 7, 30)] == [0.02, 0.02, 0.04, 0.08, 0.25]


def test_a_refused_full_syn_re_primes_at_once_with_the_full_syn_after_the_back_off():
    for pin in (True, False):
        m = machine(pin=pin)
        prime = started(m, m.start(0.0)[2:])[0]
        started(m, m.on_connect_result(prime.handle, errno.EHOSTUNREACH, 0.001), now=0.001)
        actions = resume_all(m, m.on_timers(tm.SETTLE), tm.SETTLE)
        if not pin:     # the replacement prime lives (no ICMP): it gives way first
            (check,) = actions
            actions = m.on_syn_sent(check.handle, True, tm.SETTLE)[1:]
        (connect,) = started(m, actions, now=tm.SETTLE)
        assert connect.ttl is None
        close, again = m.on_connect_result(connect.handle, errno.ECONNREFUSED, 0.05)
        assert close == Close(connect.handle) and again.ttl == 2
        assert m.candidates[0].next_connect == pytest.approx(0.05 + tm.RETRY_FIRST)


def _full_ttl_socket(m: TcpPunchMachine, now: float):
    """Pinned ISNs: prime (dead by its ICMP), then at ``now`` (>= SETTLE) the full-TTL
    connect of the round."""
    (prime,) = started(m, m.start(0.0)[2:])
    m.on_connect_result(prime.handle, errno.EHOSTUNREACH, 0.001)
    (connect,) = started(m, resume_all(m, m.on_timers(now), now), now=now)
    return connect


def test_a_simultaneous_open_stuck_in_syn_received_is_aborted_and_punched_anew():
    """Lab finding e (punch/tcp.py): our SYN-ACK lost before the peer's NAT leaves our
    socket SYN-RECEIVED for good; past SYN_RECV_STALL it is aborted and re-primed."""
    m = machine(Role.RECEIVER, pin=True)
    t0 = tm.SETTLE
    connect = _full_ttl_socket(m, t0)
    assert connect.ttl is None
    # the state is looked at every STATE_POLL, not before
    assert only(CheckSynReceived, m, t0 + tm.STATE_POLL / 2) == []
    t = t0 + tm.STATE_POLL
    assert only(CheckSynReceived, m, t) == [CheckSynReceived(connect.handle)]
    assert m.on_syn_received(connect.handle, False, t) == []       # still SYN-SENT
    t += tm.STATE_POLL
    assert only(CheckSynReceived, m, t) == [CheckSynReceived(connect.handle)]
    first = t                                                      # SYN-RECEIVED from here
    assert m.on_syn_received(connect.handle, True, t) == []
    while t + tm.STATE_POLL < first + tm.SYN_RECV_STALL:
        t += tm.STATE_POLL
        assert only(CheckSynReceived, m, t) == [CheckSynReceived(connect.handle)]
        assert m.on_syn_received(connect.handle, True, t) == []
    t = first + tm.SYN_RECV_STALL + 0.001
    assert only(CheckSynReceived, m, t) == [CheckSynReceived(connect.handle)]
    abort, prime = m.on_syn_received(connect.handle, True, t)
    assert abort == Abort(connect.handle) and prime.ttl == 2 and m.candidates[0].handle is None
    assert m.candidates[0].failures == 1
    assert m.attempts()[0]["error"] == "prime EHOSTUNREACH x1, stuck in SYN-RECEIVED for 1.5s x1"
    assert m.failure().reason == "timeout"


def test_a_socket_that_leaves_syn_received_in_time_is_kept():
    m = machine(pin=True)
    connect = _full_ttl_socket(m, tm.SETTLE)
    t = tm.SETTLE + tm.STATE_POLL
    only(CheckSynReceived, m, t)
    assert m.on_syn_received(connect.handle, True, t) == []
    t += tm.SYN_RECV_STALL - 0.01
    only(CheckSynReceived, m, t)
    assert m.on_syn_received(connect.handle, False, t) == []        # established meanwhile
    t += tm.SYN_RECV_STALL
    only(CheckSynReceived, m, t)
    assert m.on_syn_received(connect.handle, True, t) == []         # a new stall starts here
    assert m.candidates[0].handle == connect.handle


def test_pinned_rounds_toward_a_candidate_keep_its_isn_after_an_icmp_refusal():
    """An ICMP port unreachable (ECONNREFUSED) leaves our NAT's conntrack entry with the
    first ISN's window: the next round's prime and full SYN carry that ISN again, not a
    fresh one (which conntrack would mark INVALID once the peer's SYN passed)."""
    isns = iter([0x1000, 0x2000, 0x3000])
    m = TcpPunchMachine([PEER], role=Role.RECEIVER, deadline=10.0, prime_ttl=2,
                        strategy=tm.STRATEGY_SIMULTANEOUS, pin=True,
                        isn_source=lambda: next(isns))
    (prime,) = started(m, m.start(0.0)[2:])
    m.on_connect_result(prime.handle, errno.EHOSTUNREACH, 0.002)
    (full,) = started(m, resume_all(m, m.on_timers(tm.SETTLE), tm.SETTLE))
    assert full.ttl is None
    close, again = m.on_connect_result(full.handle, errno.ECONNREFUSED, 0.05)
    assert close == Close(full.handle) and again.ttl == 2
    assert prime.isn == full.isn == again.isn == 0x1000 | 1


def test_pinned_full_syn_unanswered_is_resent_from_a_fresh_socket_before_the_kernel_would():
    m = machine(pin=True)
    (prime,) = started(m, m.start(0.0)[2:])
    m.on_connect_result(prime.handle, errno.EHOSTUNREACH, 0.002)
    (full,) = started(m, resume_all(m, m.on_timers(tm.SETTLE), tm.SETTLE), now=tm.SETTLE)
    cand, now, sent = m.candidates[0], tm.SETTLE, []
    for wait in (0.2, 0.4, 0.8):               # doubling while below the kernel's 1 s
        assert only(CheckSynSent, m, now + wait - 0.01) == []
        now += wait
        (check,) = only(CheckSynSent, m, now)
        assert check == CheckSynSent(full.handle)
        abort, again = started(m, m.on_syn_sent(full.handle, True, now), now=now)
        assert abort == Abort(full.handle) and (again.ttl, again.isn) == (None, full.isn)
        sent.append(again)
        full = again
    assert cand.connects == 1 and cand.resend_at == 0.0       # the kernel's schedule now
    assert only(CheckSynSent, m, now + 5.0) == []
    m2 = machine(pin=True)                     # a socket the peer's SYN reached stays
    (prime,) = started(m2, m2.start(0.0)[2:])
    m2.on_connect_result(prime.handle, errno.EHOSTUNREACH, 0.002)
    (full,) = started(m2, resume_all(m2, m2.on_timers(tm.SETTLE), tm.SETTLE), now=tm.SETTLE)
    (check,) = only(CheckSynSent, m2, tm.SETTLE + 0.2)
    assert m2.on_syn_sent(full.handle, False, tm.SETTLE + 0.2) == []
    assert m2.candidates[0].handle == full.handle
    m3 = machine()                             # kernel ISNs: never (a new ISN each socket)
    prime, *_ = started(m3, m3.start(0.0)[2:])
    (check,) = resume_all(m3, m3.on_timers(tm.SETTLE), tm.SETTLE)
    abort, full = started(m3, m3.on_syn_sent(prime.handle, True, tm.SETTLE), now=tm.SETTLE)
    assert abort == Abort(prime.handle) and full.ttl is None
    assert resume_all(m3, m3.on_timers(0.5), 0.5) == []


def test_rounds_stop_at_max_connects_and_the_deadline_names_the_rst():
    m = machine(prime_ttl=None, max_connects=2)
    m.start(0.0)
    now = 0.0
    for _ in range(2):
        (connect,) = started(m, resume_all(m, m.on_timers(now), now))
        m.on_connect_result(connect.handle, errno.ECONNREFUSED, now)
        now += 1.0
    assert resume_all(m, m.on_timers(now), now) == []
    err = m.failure()
    assert err.reason == "refused" and "RST" in err.message
    assert m.attempts() == [{"candidate": "203.0.113.9:40000", "strategy": "simultaneous-open",
                             "error": "ECONNREFUSED x2", "connects": 2}]


def test_initiator_nominates_and_wins_on_ready_and_ack():
    m = machine(prime_ttl=None)
    m.start(0.0)
    (connect,) = started(m, resume_all(m, m.on_timers(0.0), 0.0))
    h = connect.handle
    assert m.on_connect_result(h, 0, 0.01) == [StreamSend(h, tm.NOMINATE)]
    assert m.on_send_result(h, None, 0.01) == [] and m.candidates[0].up
    assert m.wait(0.01)[:2] == ([tm.LISTENER, h], [])
    assert m.on_readable(h, 0.02) == [StreamRecv(h, 16)]
    assert m.on_data(h, tm.READY, "", 0.02) == [] and m.winner is None
    assert m.on_readable(h, 0.02) == [StreamRecv(h, 8)]
    assert m.on_data(h, tm.NOMINATE_ACK, "", 0.03) == [] and m.winner == h
    assert m.leftover() == []


def test_receiver_confirms_the_nomination_and_wins_once_the_peer_acknowledged_it():
    """Receiving NOMINATE proves only the way in: the receiver wins once the peer has
    acknowledged READY and NOMINATE_ACK (nothing left in the send queue)."""
    m = machine(Role.RECEIVER, prime_ttl=None)
    m.start(0.0)
    h = m.allocate()
    assert m.on_accepted(h, PEER, 0.5) == [StreamSend(h, tm.READY)]
    m.on_send_result(h, None, 0.5)
    assert m.on_data(h, tm.NOMINATE, "", 0.6) == [StreamSend(h, tm.NOMINATE_ACK)]
    assert m.winner is None
    assert m.on_send_result(h, None, 0.6) == [CheckUnacked(h)]
    resume_all(m, m.on_timers(0.6), 0.6)
    assert m.on_unacked(h, 16, 0.6) == [] and m.winner is None
    assert m.wait(0.6)[0] == [tm.LISTENER]       # its bytes are the handshake's now
    assert m.wait(0.6)[2] == pytest.approx(tm.CONFIRM_POLL)
    assert m.expire(0.602) == [CheckUnacked(h)]
    assert m.on_unacked(h, 0, 0.602) == [] and m.winner == h


def test_the_receiver_acknowledges_one_nomination_at_a_time():
    """Two predicted pairs up at once, NOMINATE on both: one NOMINATE_ACK only, so the
    initiator (which wins on the connection carrying it) keeps the receiver's connection;
    the other is acknowledged only if the first fails (here: unacknowledged for 2 s)."""
    m = machine(Role.RECEIVER, prime_ttl=None, candidates=(PEER, OTHER))
    m.start(0.0)
    a, b = m.allocate(), m.allocate()
    for h, peer in ((a, PEER), (b, OTHER)):
        m.on_accepted(h, peer, 0.5)
        m.on_send_result(h, None, 0.5)
    assert m.on_data(a, tm.NOMINATE, "", 0.6) == [StreamSend(a, tm.NOMINATE_ACK)]
    assert m.on_data(b, tm.NOMINATE, "", 0.6) == []            # held, not acknowledged
    assert m.on_send_result(a, None, 0.6) == [CheckUnacked(a)]
    m.on_unacked(a, 16, 0.61)                                   # the peer has not acked yet
    actions = m.expire(2.5)                                     # a: 2 s without its ack
    assert Abort(a) in actions and StreamSend(b, tm.NOMINATE_ACK) in actions, actions
    assert m.winner is None
    assert m.on_send_result(b, None, 2.5) == [CheckUnacked(b)]
    assert m.on_unacked(b, 0, 2.5) == [] and m.winner == b


def test_a_one_way_connection_is_aborted_on_both_sides_after_2s():
    """Seen unprivileged: the receiver's bytes never arrive. It never wins, and the
    initiator's connected (not accepted) socket waiting for READY is dropped too."""
    rec = machine(Role.RECEIVER, prime_ttl=None)
    rec.start(0.0)
    h = rec.allocate()
    rec.on_accepted(h, PEER, 1.0)
    rec.on_send_result(h, None, 1.0)
    rec.on_data(h, tm.NOMINATE, "", 1.0)
    rec.on_send_result(h, None, 1.0)
    rec.on_unacked(h, 16, 1.0)
    assert rec.expire(3.0) == [Abort(h)] and rec.winner is None and not rec.candidates[0].up
    ini = machine(prime_ttl=None)
    ini.start(0.0)
    (connect,) = started(ini, resume_all(ini, ini.on_timers(0.0), 0.0))
    ini.on_connect_result(connect.handle, 0, 1.0)
    ini.on_send_result(connect.handle, None, 1.0)
    assert ini.expire(2.9) == []
    assert ini.expire(3.0) == [Abort(connect.handle)]
    assert ini.conn_errors == ["203.0.113.9:40000 (connect) no nomination within 2s"]


def test_the_winner_is_never_aborted_by_the_nomination_rule():
    """The runner looks at the timers once more before it hands the winner over; a winner
    whose connection came up 2 s before (a loaded host) must not be aborted then."""
    m = machine(prime_ttl=None)
    m.start(0.0)
    (connect,) = started(m, resume_all(m, m.on_timers(0.0), 0.0))
    h = connect.handle
    m.on_connect_result(h, 0, 0.01)
    m.on_send_result(h, None, 0.01)
    m.on_data(h, tm.READY, "", 1.9)
    m.on_data(h, tm.NOMINATE_ACK, "", 1.99)
    assert m.winner == h
    assert Abort(h) not in m.expire(2.5) and m.winner == h and m.conn_errors == []


def test_stray_bytes_drop_the_connection_and_free_its_candidate():
    m = machine(Role.RECEIVER, prime_ttl=None)
    m.start(0.0)
    h = m.allocate()
    m.on_accepted(h, PEER, 0.5)
    m.on_send_result(h, None, 0.5)
    assert m.on_data(h, b"GET / HTTP/1.1", "", 0.7) == [Close(h)]
    cand = m.candidates[0]
    assert not cand.up and cand.next_connect == pytest.approx(0.7 + tm.RETRY_INTERVAL)
    assert m.failure().reason == "nomination-failed"


def test_an_accepted_connection_not_nominated_within_2s_is_aborted_and_punched_anew():
    m = machine(prime_ttl=None)
    m.start(0.0)
    h = m.allocate()
    m.on_accepted(h, PEER, 1.0)
    m.on_send_result(h, None, 1.0)
    resume_all(m, m.on_timers(2.5), 2.5)
    assert m.expire(2.5) == []
    assert m.wait(2.5)[2] == tm.TICK              # the 2 s mark is later than one tick
    resume_all(m, m.on_timers(2.99), 2.99)
    assert m.expire(2.99) == [] and m.wait(2.99)[2] == pytest.approx(0.01)
    assert m.expire(3.0) == [Abort(h)]
    cand = m.candidates[0]
    assert not cand.up and cand.next_connect == pytest.approx(3.0 + tm.RETRY_INTERVAL)
    assert m.conn_errors == ["203.0.113.9:40000 (accept) no nomination within 2s"]


def test_eaddrnotavail_takes_the_listener_connection_and_is_no_connect_attempt():
    m = machine(prime_ttl=None)
    m.start(0.0)
    (connect,) = resume_all(m, m.on_timers(0.0), 0.0)
    actions = m.on_connect_started(connect.handle, errno.EADDRNOTAVAIL, 64, 0.0)
    assert actions[:2] == [Close(connect.handle), DrainAccepts(tm.LISTENER)]
    h = m.allocate()                            # the runner drains: the listener had it
    assert m.on_accepted(h, PEER, 0.0) == [StreamSend(h, tm.NOMINATE)]
    m.on_send_result(h, None, 0.0)
    assert resume_all(m, actions[2:], 0.001) == []
    cand = m.candidates[0]
    assert cand.up and cand.connects == 0 and cand.busy == 1
    assert cand.next_connect == pytest.approx(0.001 + tm.RETRY_FIRST)


def test_a_4tuple_busy_three_times_renews_the_listener_at_most_three_times():
    m = machine(prime_ttl=None)
    m.start(0.0)
    renewals, now = 0, 0.0
    for busy in range(1, 13):
        (connect,) = resume_all(m, m.on_timers(now), now)
        actions = m.on_connect_started(connect.handle, errno.EADDRNOTAVAIL, 64, now)
        actions = resume_all(m, actions, now)       # nothing queued to accept
        opens = [a for a in actions if isinstance(a, OpenListener)]
        assert len(opens) == (1 if busy % tm.RENEW_AFTER == 0 and renewals < 3 else 0)
        for new in opens:
            old = m.listener
            follow = m.on_listener_opened(new.handle, None)
            assert follow[:3] == [FilterListener(new.handle, (PEER,)), Listen(new.handle),
                                  DrainAccepts(old)]
            assert resume_all(m, follow[3:], now) == [Close(old)]
            assert m.listener == new.handle
            renewals += 1
        now = m.candidates[0].next_connect
    assert renewals == m.renewed == tm.MAX_RENEWALS
    assert m.candidates[0].connects == 0
    assert m.leftover() == [m.listener]           # the renewed listener is ours to close


def test_a_failed_renewal_is_reported_and_the_old_listener_stays():
    m = machine(prime_ttl=None)
    m.start(0.0)
    assert m.on_listener_opened(m._renew_listener()[0].handle, "Address in use") == []
    assert m.listener == tm.LISTENER and m.renewed == 0
    assert m.conn_errors == ["listener renewal failed: Address in use"]


def test_listen_connect_receiver_only_listens():
    m = machine(Role.RECEIVER, strategy=tm.STRATEGY_LISTEN)
    assert m.start(0.0) == [Listen(tm.LISTENER)]
    assert resume_all(m, m.on_timers(5.0), 5.0) == []
    assert not m.pin
    m2 = machine(Role.INITIATOR, strategy=tm.STRATEGY_LISTEN)
    m2.start(0.0)
    (connect,) = resume_all(m2, m2.on_timers(0.0), 0.0)
    assert connect.ttl is None


def test_accepted_strangers_beyond_max_pending_are_closed():
    m = machine(prime_ttl=None, candidates=())
    m.start(0.0)
    for i in range(tm.MAX_PENDING):
        h = m.allocate()
        m.on_accepted(h, ("192.0.2.1", 1000 + i), 0.0)
        m.on_send_result(h, None, 0.0)
    h = m.allocate()
    assert m.on_accepted(h, ("192.0.2.1", 9), 0.0) == [Close(h)]
    assert m.accepted == tm.MAX_PENDING + 1
