"""Two ``stunturn-diag serve`` instances behind one address (issue 11, README "Running several
servers"): a real HAProxy in ``mode tcp`` with ``balance roundrobin`` and ``send-proxy-v2``
in front of two real ``serve`` processes that share a real ``redis-server``, everything on
free loopback ports and ended by PID.

Clients talk only to HAProxy's address. HAProxy connects to the instances from 127.0.0.1
(their ``--trusted-proxy``) and names each client in a PROXY protocol v2 header, so a
client bound to 127.0.0.2 or 127.0.0.3 is seen by its own address: pairing matches the
receiver's IP against the initiator's named target (which instance held what is read
from each instance's own ``/metrics``, scraped directly, not through the balancer).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from redislib import RedisServer, free_tcp_port
from test_server_longpoll import checkin, initiate, request
from test_server_scaleout import _At, _scrape
from testlib import in_background, missing, stop_process, wait_for

SECRET = "balancer-test-secret-0123456789"
WAIT_TIMEOUT = 20
INITIATOR = "127.0.0.4"
RECEIVER = "127.0.0.2"
OTHER = "127.0.0.3"

WAITERS = ("stunturn_waiters", ())
MATCHED = ("stunturn_checkins_total", (("result", "matched"),))
CONFLICTS = ("stunturn_conflicts_total", ())

#: HAProxy's own configuration for the test (README "Running several servers" shows it):
#: TCP mode, timeouts above --wait-timeout, the client named to each server by PROXY v2
HAPROXY_CFG = """\
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend signaling
    bind 127.0.0.1:{port}
    default_backend serve
backend serve
    balance roundrobin
    server a 127.0.0.1:{port_a} send-proxy-v2
    server b 127.0.0.1:{port_b} send-proxy-v2
"""


def test_the_readme_shows_this_config():
    """README's HAProxy snippet is the configuration this file runs (with its ports)."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    shown = re.search(r"^  ```\n(  defaults\n.*?)^  ```", readme, re.M | re.S)
    assert shown, "README shows no HAProxy configuration"
    assert re.sub(r"^  ", "", shown.group(1), flags=re.M) == HAPROXY_CFG.format(port=8080, port_a=8081,
                                                                               port_b=8082)


@dataclass
class _Instance:
    name: str
    proc: subprocess.Popen
    port: int

    @property
    def http_address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def metrics(self) -> dict:
        return _scrape(self)


def _serve(name: str, redis_url: str, secret: Path, log: Path) -> _Instance:
    """``stunturn-diag serve 127.0.0.1:0 --no-stun`` sharing ``redis_url``, trusting 127.0.0.1
    (HAProxy) to name its clients; its port from ``--json``."""
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "stunturn_diag", "serve", "127.0.0.1:0", "--no-stun",
                                 "--json", "--redis", redis_url, "--secret-file", str(secret),
                                 "--trusted-proxy", "127.0.0.1/32", "--wait-timeout", str(WAIT_TIMEOUT)],
                                stdout=subprocess.PIPE, stderr=err, text=True)
    line = proc.stdout.readline()
    if not line:
        stop_process(proc)
        raise AssertionError(f"serve {name} printed nothing:\n{log.read_text()}")
    port = int(json.loads(line)["http_url"].rsplit(":", 1)[1])
    return _Instance(name, proc, port)


@dataclass
class _Setup:
    balancer: _At
    instances: list[_Instance]
    redis: RedisServer

    def holder(self) -> str | None:
        """The name of the one instance holding the one waiting initiator, else ``None``."""
        held = {i.name: i.metrics()[WAITERS] for i in self.instances}
        names = [name for name, n in held.items() if n == 1]
        return names[0] if sorted(held.values()) == [0, 1] else None

    def counts(self, key) -> dict[str, float]:
        return {i.name: i.metrics().get(key, 0.0) for i in self.instances}


def _changed(before: dict[str, float], after: dict[str, float]) -> list[str]:
    return [name for name in after if after[name] != before[name]]


@pytest.fixture
def behind_haproxy(tmp_path):
    """Redis, two ``serve`` instances and ``haproxy -db`` in front of them; ended by PID."""
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        missing("haproxy is not installed (scripts/setup.sh installs it)")
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    redis = RedisServer().start()
    procs: list[subprocess.Popen] = []
    try:
        instances = []
        for name in ("a", "b"):
            instance = _serve(name, redis.url, secret, tmp_path / f"serve-{name}.log")
            procs.append(instance.proc)
            instances.append(instance)
        port = free_tcp_port()
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(HAPROXY_CFG.format(port=port, port_a=instances[0].port, port_b=instances[1].port))
        log = tmp_path / "haproxy.log"
        with log.open("w") as out:
            proxy = subprocess.Popen([haproxy, "-f", str(cfg), "-db"], stdout=out, stderr=subprocess.STDOUT)
        procs.append(proxy)
        balancer = _At(port)

        def up():
            assert proxy.poll() is None, f"haproxy exited {proxy.returncode}:\n{log.read_text()}"
            try:
                return request(balancer, "GET", "/healthz", timeout=2)[0] == 200
            except OSError:
                return False
        wait_for(up, timeout=20, what="haproxy to pass /healthz through")
        yield _Setup(balancer, instances, redis)
    finally:
        for proc in reversed(procs):
            stop_process(proc)
        redis.close()


def test_pairs_match_across_the_two_instances_behind_haproxy(behind_haproxy):
    """Initiator on one instance, receiver on the other, both ways round: Redis pairs them,
    and each side learns the other's real address (127.0.0.4 and 127.0.0.2, not HAProxy's)."""
    setup = behind_haproxy
    crossed: set[tuple[str, str]] = set()
    for round_ in range(8):  # round robin decides; an extra /healthz shifts which one is next
        if round_ % 2:
            assert request(setup.balancer, "GET", "/healthz")[0] == 200
        key = f"balancer-pair-{round_}"
        thread, result = in_background(initiate, setup.balancer, key=key, source=INITIATOR, timeout=15)
        held_by = wait_for(setup.holder, timeout=15, what="one instance to hold the initiator")
        before = setup.counts(MATCHED)
        status, received = checkin(setup.balancer, key=key, source=RECEIVER)
        thread.join(15)
        assert status == 200 and result["value"][0] == 200, (status, received, result)
        initiated = result["value"][1]
        assert initiated["match_id"] == received["match_id"]
        assert initiated["peer"]["observed"]["ip"] == RECEIVER
        assert received["peer"]["observed"]["ip"] == INITIATOR
        matched_on = _changed(before, setup.counts(MATCHED))
        assert len(matched_on) == 1, matched_on
        crossed.add((held_by, matched_on[0]))
        if {("a", "b"), ("b", "a")} <= crossed:
            break
    assert {("a", "b"), ("b", "a")} <= crossed, crossed
    assert wait_for(lambda: setup.redis.keys("stunturn:w:*") == 0, what="no waiter left in Redis")


def test_the_receivers_real_address_comes_through_proxy_v2(behind_haproxy):
    """The target must be the receiver's own IP as the PROXY header names it: a receiver from
    127.0.0.3 matches a target of 127.0.0.3, not one of 127.0.0.1 (HAProxy's address, which
    the servers would see without the header), nor does one from 127.0.0.2."""
    setup = behind_haproxy
    # the target named as the address the balancer connects from: no match for 127.0.0.3
    thread, result = in_background(initiate, setup.balancer, key="balancer-wrong-ip", target="127.0.0.1",
                                   source=INITIATOR, timeout=3)
    wait_for(setup.holder, timeout=15, what="the initiator naming 127.0.0.1 to wait")
    assert checkin(setup.balancer, key="balancer-wrong-ip", source=OTHER)[0] == 404
    thread.join(15)
    assert result["value"][0] == 408, result

    # the same key naming 127.0.0.3: a receiver from 127.0.0.2 finds nobody, one from 127.0.0.3 matches
    thread, result = in_background(initiate, setup.balancer, key="balancer-right-ip", target=OTHER,
                                   source=INITIATOR, timeout=15)
    wait_for(setup.holder, timeout=15, what="the initiator naming 127.0.0.3 to wait")
    assert checkin(setup.balancer, key="balancer-right-ip", source=RECEIVER)[0] == 404
    status, received = checkin(setup.balancer, key="balancer-right-ip", source=OTHER)
    thread.join(15)
    assert status == 200 and result["value"][0] == 200, (status, received, result)
    assert result["value"][1]["peer"]["observed"]["ip"] == OTHER
    assert received["peer"]["observed"]["ip"] == INITIATOR


def test_a_second_initiator_gets_409_on_the_other_instance(behind_haproxy):
    """A second initiator for the same key and target from the same real address gets 409
    from whichever instance it lands on (the conflict is seen in Redis); one from another
    real address is held like a waiter nobody answers (408) - the PROXY header tells them
    apart, HAProxy's own address would make both look alike. The first still matches."""
    setup = behind_haproxy
    conflict_seen: set[tuple[str, str]] = set()
    for round_ in range(6):
        key = f"balancer-conflict-{round_}"
        thread, result = in_background(initiate, setup.balancer, key=key, source=INITIATOR, timeout=15)
        held_by = wait_for(setup.holder, timeout=15, what="one instance to hold the first initiator")
        before = setup.counts(CONFLICTS)
        status, body = initiate(setup.balancer, key=key, source=INITIATOR, timeout=15)
        assert status == 409 and body["error"] == "conflict", (status, body)
        refused_on = _changed(before, setup.counts(CONFLICTS))
        assert len(refused_on) == 1, refused_on
        conflict_seen.add((held_by, refused_on[0]))
        assert initiate(setup.balancer, key=key, source=OTHER, timeout=1)[0] == 408
        status, received = checkin(setup.balancer, key=key, source=RECEIVER)
        thread.join(15)
        assert status == 200 and result["value"][0] == 200, (status, received, result)
        if any(held != refused for held, refused in conflict_seen):
            break
    assert any(held != refused for held, refused in conflict_seen), conflict_seen
