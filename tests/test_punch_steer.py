"""Counter steering I/O (stunturn_diag.punch.steer_runner): where the flows go, fresh ports, and
the steering loop over a simulated sequential counter (clock injected)."""

from __future__ import annotations

import socket

import pytest

from stunturn_diag.errors import PunchError
from stunturn_diag.punch import steer_runner
from stunturn_diag.sansio.punch import counter
from stunturn_diag.sansio.punch.counter import Reading
from stunturn_diag.punch.steer_runner import CounterSteer
from testlib import wait_for


def _primary(service):
    ep = next(ep for ep in service.endpoints if ep.role == "primary")
    return ep.ip, ep.port


def test_burns_spare_the_stun_budget_and_use_a_new_port_each(service):
    """A burn larger than the STUN service's per-source burst (200) goes to the burn
    sink, not to the STUN port: the reading right after it is answered, none of the
    service's answers is rate-limited, and every burn datagram left from its own port."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(5)
    try:
        cs = CounterSteer(_primary(service), burn_to=sink.getsockname())
        cs.read()
        before, flows = service.stats["requests"], cs.flows
        cs.burn(250)
        assert cs.flows - flows == 250
        sources = set()
        for _ in range(250):
            _data, src = sink.recvfrom(2048)
            sources.add(src[1])
        assert len(sources) == 250
        cs.read()
        stats = wait_for(lambda: service.stats if service.stats["requests"] > before else None)
        assert stats.get("dropped_rate_limited", 0) == 0, stats
    finally:
        sink.close()


def test_burns_go_to_the_discard_port_of_the_stun_host_by_default():
    assert CounterSteer(("198.51.100.10", 3478)).burn_to == ("198.51.100.10", steer_runner.DISCARD_PORT)


class _Sock:
    def __init__(self, port: int) -> None:
        self.port, self.closed = port, False

    def close(self) -> None:
        self.closed = True


def test_a_fresh_socket_never_reuses_a_port_toward_the_same_destination():
    cs = CounterSteer(("192.0.2.1", 3478))
    ports = iter([40000, 40000, 40001, 40000, 40001, 40002])
    held: list = []
    dst = ("192.0.2.1", 9)
    got = [cs._fresh(lambda: _Sock(next(ports)), lambda s: s.port, dst, held).port
           for _ in range(3)]
    assert got == [40000, 40001, 40002]
    assert [s.port for s in held] == [40000, 40000, 40001]     # kept open, then closed
    # another destination: the same local port is a new flow there
    assert cs._fresh(lambda: _Sock(40000), lambda s: s.port, ("192.0.2.1", 3478), []).port \
        == 40000


def test_a_reading_not_above_the_last_one_is_an_old_mapping_and_is_taken_again():
    cs = CounterSteer(("192.0.2.1", 3478))
    answers = iter([Reading(20100, 1.0), Reading(20050, 2.0), Reading(20103, 3.0)])

    def read_once(held):
        cs.flows += 1
        return next(answers)
    cs._read_once = read_once
    assert cs.read().port == 20100
    assert cs.read() == Reading(20103, 3.0)
    assert cs.flows == 2                      # the old mapping moved nothing


class _SimulatedNat(CounterSteer):
    """A sequential counter moved by others at ``rate`` flows/s on a fake clock; a
    reading is answered ``delays[i]`` seconds after its request (its flow) left."""

    def __init__(self, port: int, rate: float, delays: list[float]) -> None:
        self.now = 10.0
        super().__init__(("192.0.2.1", 3478), clock=lambda: self.now)
        self.port, self.rate, self.delays, self._t = port, rate, list(delays), self.now

    def _others(self) -> None:
        self.port += int(round((self.now - self._t) * self.rate))
        self._t = self.now

    def _flow(self) -> int:
        self._others()
        self.port += 1
        return self.port - 1

    def read(self) -> Reading:
        self.now += 0.001
        port, sent = self._flow(), self.now
        self.now += self.delays.pop(0) if self.delays else 0.001
        self.flows += 1
        reading = Reading(port, sent)
        self.readings.append(reading)
        return reading

    def burn(self, n: int) -> None:
        for _ in range(n):
            self._flow()
            self.flows += 1
        self.now += 0.005


def test_steering_lands_inside_the_window_after_a_burn():
    sim = _SimulatedNat(20200, 100.0, [0.001, 0.001])
    first = Reading(20100, 9.0)
    skip = sim.steer_to(20350, 8, first, 1)
    assert skip == sim.readings[-1].port + 1 - 20350
    assert 20350 <= _lands(sim) < 20358


def _lands(sim: _SimulatedNat) -> int:
    """The port our first punch flow gets, PUNCH_SPAN after steering."""
    sim.now += counter.PUNCH_SPAN
    sim._others()
    return sim.port


def test_a_late_answer_before_the_burn_counts_what_others_opened_meanwhile():
    """The first reading after the match is answered 100 ms late (a retransmission): at
    100 flows/s others took 10 ports meanwhile; the burn leaves them out."""
    sim = _SimulatedNat(20200, 100.0, [0.1, 0.001])
    sim.steer_to(20350, 8, Reading(20100, 9.0), 1)
    assert 20350 <= _lands(sim) < 20358


def test_a_late_confirming_answer_is_read_again_not_punched_blind():
    sim = _SimulatedNat(20200, 100.0, [0.001, 0.1, 0.001, 0.001])
    try:
        sim.steer_to(20350, 8, Reading(20100, 9.0), 1)
    except PunchError as exc:       # the window went by meanwhile: said at once
        assert exc.reason == "port-counter-too-fast"
    else:
        assert 20350 <= _lands(sim) < 20358
    assert len(sim.readings) == 3


def test_a_counter_that_really_is_too_fast_still_fails_with_its_rate():
    first = Reading(19700, 9.0)             # 500 flows/s up to the match at t=10
    promised = counter.promise(first, 1, 500.0, 1.5)
    sim = _SimulatedNat(20200, 500.0, [0.001] * 4)
    with pytest.raises(PunchError) as err:
        sim.steer_to(promised, 8, first, 1)
    assert err.value.reason == "port-counter-too-fast" and "flows/s" in err.value.message


def test_port_promise_reads_twice_first_then_once_per_request(monkeypatch):
    """PortPromise (the API's promise while pairing): a first rate from two readings
    RATE_SAMPLE apart, then one reading per signaling request; a failed reading
    withdraws the promise."""
    readings = iter([Reading(20000, 0.0), Reading(20021, 0.2), Reading(20042, 0.4)])

    class FakeSteer:
        def __init__(self, server, timeout):
            self.server, self.timeout, self.flows = server, timeout, 0

        def read(self):
            self.flows += 1
            try:
                return next(readings)
            except StopIteration:
                raise PunchError("no answer", reason="stun-failed") from None

    monkeypatch.setattr(steer_runner, "CounterSteer", FakeSteer)
    said, slept = [], []
    promise = steer_runner.PortPromise(lambda: ("192.0.2.1", 3478), timeout=0.5,
                                       say=said.append, sleep=slept.append)
    assert promise.refresh(own_flows=1, horizon=0.5)
    assert slept == [steer_runner.RATE_SAMPLE]
    assert promise.counter_rate == pytest.approx(100.0)     # 20 others' flows in 0.2 s
    assert promise.next_port == counter.promise(Reading(20021, 0.2), 1, 100.0, 0.5)
    assert promise.refresh(own_flows=2, horizon=0.5) and slept == [steer_runner.RATE_SAMPLE]
    assert promise.next_port == counter.promise(Reading(20042, 0.4), 1, promise.counter_rate,
                                                0.5)
    assert not promise.refresh(own_flows=3, horizon=0.5)
    assert promise.next_port is None and "port counter" in said[0]
