"""Library API (punch.api) through a real signaling server + STUN responder on loopback."""

from __future__ import annotations

import threading
import time

import pytest

from stunturn_diag.errors import ConfigError, NoInitiatorWaiting, PunchError
from stunturn_diag.punch import PunchResult, initiate, receive
from stunturn_diag.punch.api import PunchOptions
from stunturn_server.config import ServerConfig
from stunturn_server.runner import start_server

KEY = "api-test-key"


@pytest.fixture
def server():
    handle = start_server(ServerConfig(http_port=0, stun_port=0, wait_timeout=10))
    yield handle.http_url
    handle.stop()


def background(fn, *args, **kw):
    box = {}

    def run():
        try:
            box["value"] = fn(*args, **kw)
        except Exception as exc:          # noqa: BLE001 - handed to the test
            box["value"] = exc
    t = threading.Thread(target=run)
    t.start()
    return t, box


def finish_pair(t, box, other: PunchResult, said: list[str], progress: str) -> None:
    """Join the side run in the background: it got a channel too, its progress said
    ``progress``; close both."""
    t.join(10)
    result = box["value"]
    assert isinstance(result, PunchResult), result
    assert any(progress in s for s in said)
    result.close()
    other.close()


def test_initiator_and_receiver_get_connected_authenticated_channels(server):
    t, box = background(initiate, server, KEY, "127.0.0.1", protocol="udp")
    rec = receive(server, KEY, protocol="udp", wait=5, wait_interval=0.05)
    t.join(10)
    ini = box["value"]
    assert isinstance(ini, PunchResult) and isinstance(rec, PunchResult)
    try:
        assert ini.match_id == rec.match_id and ini.strategy == rec.strategy == "lan"
        assert ini.peer == rec.local and rec.peer == ini.local
        d = ini.as_dict()
        assert d["ok"] is True and d["protocol"] == "udp" and d["role"] == "initiator"
        assert d["connect_ms"] >= 0 and set(d["peer"]) == {"ip", "port"}
        ini.connection.send(b"to receiver")
        assert rec.connection.recv(2) == b"to receiver"
        rec.connection.send(b"to initiator")
        assert ini.connection.recv(2) == b"to initiator"
    finally:
        ini.close()
        rec.close()


def test_receiver_without_initiator_returns_at_once(server):
    start = time.monotonic()
    with pytest.raises(PunchError) as err:
        receive(server, KEY)
    assert time.monotonic() - start < 5
    assert err.value.reason == "no-initiator"
    assert isinstance(err.value.__cause__, NoInitiatorWaiting)


def test_receiver_wait_keeps_checking_in_until_the_initiator_comes(server):
    said = []
    t, box = background(receive, server, KEY, protocol="udp", wait=5, wait_interval=0.05,
                        progress=said.append)
    time.sleep(0.3)
    ini = initiate(server, KEY, "127.0.0.1")
    finish_pair(t, box, ini, said, "checking in again")


def test_a_receiver_slowed_down_by_the_failure_limit_ends_with_no_initiator():
    """Polling faster than the server's failed-check-in limit: the client waits out the
    Retry-After while its window lasts, and when the window closes the outcome is what
    happened (nobody waited), not the server's rate limit."""
    config = ServerConfig(http_port=0, stun_port=0, failure_burst=3, failure_rate=0.5,
                          target_failure_burst=100)
    with start_server(config) as handle:
        with pytest.raises(PunchError) as err:
            receive(handle.http_url, KEY, protocol="udp", probe=False, wait=1.5,
                    wait_interval=0.05)
    assert err.value.reason == "no-initiator", err.value
    assert "slowed" in str(err.value.__cause__)


def test_protocol_mismatch_is_reported(server):
    t, box = background(initiate, server, KEY, "127.0.0.1", protocol="tcp", punch_timeout=0.5)
    with pytest.raises(PunchError) as err:
        receive(server, KEY, protocol="udp", wait=5, wait_interval=0.05)
    t.join(15)
    assert err.value.reason == "protocol-mismatch" and "--protocol tcp" in str(err.value)
    assert isinstance(box["value"], PunchError)


@pytest.mark.parametrize("kw", [{"protocol": "sctp"}, {"punch_timeout": 0},
                                {"wait": -1}, {"prime_ttl": 300}])
def test_bad_options_are_config_errors(kw):
    with pytest.raises(ConfigError):
        PunchOptions(**kw)


def test_short_key_is_refused_before_any_network_io():
    with pytest.raises(ConfigError):
        initiate("http://127.0.0.1:9", "short", "127.0.0.1")


def test_initiator_reissues_the_long_poll_beyond_the_servers_cap():
    handle = start_server(ServerConfig(http_port=0, stun_port=0, wait_timeout=0.5))
    try:
        said = []
        t, box = background(initiate, handle.http_url, KEY, "127.0.0.1", pair_timeout=5,
                            progress=said.append)
        time.sleep(1.2)                     # longer than the server holds one long-poll
        rec = receive(handle.http_url, KEY, protocol="udp", wait=3, wait_interval=0.05)
        finish_pair(t, box, rec, said, "still waiting")
    finally:
        handle.stop()


def test_initiator_gives_up_after_its_own_timeout():
    from stunturn_diag.errors import PairingTimeout

    handle = start_server(ServerConfig(http_port=0, stun_port=0, wait_timeout=0.3))
    try:
        with pytest.raises(PunchError) as err:
            initiate(handle.http_url, KEY, "127.0.0.1", pair_timeout=0.8)
        assert err.value.reason == "pairing-timeout"
        assert isinstance(err.value.__cause__, PairingTimeout)
    finally:
        handle.stop()


# -- the decision's verdict joined with the runner's failure (no network) -------------------

class _StubRendezvous:
    """Records what the API hands a runner's punch(); fails with ``reason``."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.calls: list[dict] = []

    def punch(self, targets, **kw):
        self.calls.append(kw)
        raise PunchError(f"stub runner failed ({self.reason})", reason=self.reason,
                         attempts=[{"target": f"{targets[0][0]}:{targets[0][1]}"}])


def _stub_punch(protocol: str, reason: str, *, mine: str, peer: str, prime_ttl=2,
                same_lan: bool = False):
    """Run the API's punch step against a stub runner; returns (PunchError, stub)."""
    from stunturn_diag.lab import CATALOGUE
    from stunturn_diag.punch.api import _Side

    opts = PunchOptions(protocol=protocol, nat_profile=CATALOGUE[mine].expected,
                        prime_ttl=prime_ttl)
    side = _Side("http://127.0.0.1:9", KEY, opts, "initiator", target_ip="198.51.100.7")
    mapped = ("203.0.113.2", 40000)
    srflx_ip = mapped[0] if same_lan else "198.51.100.7"
    details = {"srflx": {"ip": srflx_ip, "port": 41000},
               "local": [{"ip": "192.168.1.11", "port": 41000}],
               "nat": {**CATALOGUE[peer].expected, "punch": {"birthday": False}}}
    stub = _StubRendezvous(reason)
    with pytest.raises(PunchError) as err:
        side._punch(stub, {"match_id": "ab12", "protocol": protocol,
                           "peer": {"details": details}}, protocol, mapped, time.monotonic())
    return err.value, stub


@pytest.mark.parametrize("protocol,cause", [("tcp", "refused"), ("tcp", "unreachable"),
                                            ("tcp", "timeout"), ("udp", "timeout"),
                                            ("udp", "one-way"), ("udp", "packet-budget")])
def test_infeasible_plan_reports_relay_needed_with_the_runners_cause(protocol, cause):
    exc, _stub = _stub_punch(protocol, cause, mine="port-restricted", peer="symmetric-random")
    assert exc.reason == "relay-needed"
    assert exc.attempts[-1]["cause"] == cause and "stub runner failed" in \
        exc.attempts[-1]["message"]
    assert exc.message.startswith(f"{protocol.upper()} punch failed (")
    assert "random port" in exc.message and "relay" in exc.message
    assert exc.context["strategy"] == "relay-needed" and exc.context["protocol"] == protocol


@pytest.mark.parametrize("protocol", ["udp", "tcp"])
def test_feasible_plan_keeps_the_runners_reason(protocol):
    exc, _stub = _stub_punch(protocol, "timeout", mine="port-restricted", peer="full-cone")
    assert exc.reason == "timeout" and exc.context["strategy"] == "simultaneous"


@pytest.mark.parametrize("protocol", ["udp", "tcp"])
@pytest.mark.parametrize("option,same_lan,expected", [(2, False, 2), (3, False, 3),
                                                      (None, False, 0), (2, True, 0)])
def test_both_runners_get_an_explicit_prime_ttl(protocol, option, same_lan, expected):
    """PunchOptions.prime_ttl=None and a "lan" plan both mean: no priming (0), never the
    runners' own default for None."""
    _exc, stub = _stub_punch(protocol, "timeout", mine="port-restricted", peer="full-cone",
                             prime_ttl=option, same_lan=same_lan)
    (call,) = stub.calls
    assert call["prime_ttl"] == expected and isinstance(call["prime_ttl"], int)
    assert (call["strategy"] == "lan") is same_lan


# -- the receiver's transports and the default probe ------------------------------------------

def _udp_taken_tcp_free_port():
    """A UDP socket holding a port whose TCP twin is free (the receiver's UDP bind fails)."""
    import socket

    for _ in range(20):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        port = udp.getsockname()[1]
        probe = socket.socket()
        try:
            probe.bind(("0.0.0.0", port))
            probe.close()
            return udp, port
        except OSError:
            probe.close()
            udp.close()
    pytest.skip("no port free for TCP while taken for UDP")


def test_receiver_without_udp_tells_a_udp_initiator_at_once(server):
    """Real sockets: the receiver's UDP port is taken, TCP works. It checks in with TCP
    only; the initiator (asking UDP, willing to wait 30 s) fails right after the match with
    the same reason, instead of waiting for a UDP punch that cannot come."""
    holder, port = _udp_taken_tcp_free_port()
    try:
        t, box = background(initiate, server, KEY, "127.0.0.1", protocol="udp",
                            pair_timeout=30, probe=False)
        said = []
        with pytest.raises(PunchError) as err:
            receive(server, KEY, wait=5, wait_interval=0.05, local_port=port, probe=False,
                    progress=said.append)
        t.join(15)
    finally:
        holder.close()
    rec, ini = err.value, box["value"]
    assert any("udp not prepared" in s for s in said), said
    assert isinstance(ini, PunchError), ini
    for exc in (rec, ini):
        assert exc.reason == "protocol-unavailable", exc
        assert "could not prepare" in exc.message and "--protocol tcp" in str(exc)
        assert exc.context["protocol"] == "udp"
    assert rec.context["match_id"] == ini.context["match_id"]


def test_receiver_without_udp_still_takes_a_tcp_punch(server):
    holder, port = _udp_taken_tcp_free_port()
    try:
        t, box = background(initiate, server, KEY, "127.0.0.1", protocol="tcp", probe=False)
        rec = receive(server, KEY, wait=5, wait_interval=0.05, local_port=port, probe=False)
        t.join(15)
    finally:
        holder.close()
    ini = box["value"]
    assert isinstance(ini, PunchResult), ini
    try:
        assert rec.protocol == ini.protocol == "tcp" and rec.local[1] == port
        ini.connection.sendall(b"over tcp")
        assert rec.connection.recv(64) == b"over tcp"
    finally:
        ini.close()
        rec.close()


def test_punch_probes_by_default_and_not_with_probe_false(server):
    said_default, said_off = [], []
    t, box = background(initiate, server, KEY, "127.0.0.1", progress=said_default.append)
    rec = receive(server, KEY, protocol="udp", wait=10, wait_interval=0.05, probe=False,
                  progress=said_off.append)
    t.join(15)
    ini = box["value"]
    assert isinstance(ini, PunchResult), ini
    ini.close()
    rec.close()
    assert any("probing this NAT" in s for s in said_default), said_default
    assert any("NAT profile" in s and "no-nat" in s for s in said_default), said_default
    assert not any("probing" in s for s in said_off), said_off


def test_details_carry_each_transports_own_flow_count():
    """UDP's binding came first, then TCP's, then two check-ins: a sequential NAT moved
    UDP's port counter by 3 and TCP's by 2 before the punch."""
    from stunturn_diag.punch.api import _Side
    from stunturn_diag.sansio.punch.candidates import peer_addresses, peer_transports

    side = _Side("http://127.0.0.1:9", KEY, PunchOptions(), "receiver", protocols=["udp", "tcp"])
    side.prepared = {"udp": (None, ("203.0.113.18", 20000), [("192.168.2.10", 5000)]),
                     "tcp": (None, ("203.0.113.18", 20001), [("192.168.2.10", 5001)])}
    side.pair_flows = 2
    d = side._details()
    assert peer_addresses(d, "udp") == (("203.0.113.18", 20000), [("192.168.2.10", 5000)], 3)
    assert peer_addresses(d, "tcp") == (("203.0.113.18", 20001), [("192.168.2.10", 5001)], 2)
    assert peer_transports(d) == (["udp", "tcp"], {})
    side.prepared = {"tcp": side.prepared["tcp"]}
    side.unavailable = {"udp": "no STUN answer " * 40}
    d = side._details()
    assert peer_addresses(d, "tcp")[2] == 2
    have, why = peer_transports(d)
    assert have == ["tcp"] and 0 < len(why["udp"]) <= 160


@pytest.mark.parametrize("role,prepared,unavailable,peer,reason", [
    # the receiver tried UDP and failed: both say protocol-unavailable
    ("receiver", ["tcp"], {"udp": "blocked"}, {}, "protocol-unavailable"),
    ("initiator", ["udp"], {}, {"nat": {"punch": {"transports": ["tcp"],
                                                  "unavailable": {"udp": "blocked"}}}},
     "protocol-unavailable"),
    # the receiver was told --protocol tcp: both say protocol-mismatch
    ("receiver", ["tcp"], {}, {}, "protocol-mismatch"),
    ("initiator", ["udp"], {}, {"nat": {"punch": {"transports": ["tcp"]}}}, "protocol-mismatch"),
    # it has UDP, or an older receiver does not say: nothing to object to
    ("receiver", ["udp", "tcp"], {}, {}, None),
    ("initiator", ["udp"], {}, {"nat": {"punch": {"transports": ["tcp", "udp"]}}}, None),
    ("initiator", ["udp"], {}, {"nat": {"punch": {}}}, None),
])
def test_both_sides_judge_the_initiators_protocol_alike(role, prepared, unavailable, peer,
                                                        reason):
    from stunturn_diag.sansio.punch.details import transport_problem

    problem = transport_problem(role, "udp", prepared, unavailable, peer)
    assert (problem.reason if problem else None) == reason
    if reason == "protocol-unavailable":
        assert "blocked" in problem.message and "--protocol tcp" in str(problem)


def test_a_receiver_with_no_transport_at_all_says_what_to_do():
    from stunturn_diag.sansio.punch.details import transport_problem

    peer = {"nat": {"punch": {"transports": [], "unavailable": {"udp": "x", "tcp": "y"}}}}
    problem = transport_problem("initiator", "tcp", ["tcp"], {}, peer)
    assert problem.reason == "protocol-unavailable" and "firewall" in str(problem)


@pytest.mark.parametrize("role", ["initiator", "receiver"])
def test_a_receiver_that_tried_one_transport_only_is_not_told_both_failed(role):
    """--protocol tcp on the receiver and its TCP binding failed: the hint names that one
    transport, not "neither transport reaches the server"."""
    from stunturn_diag.sansio.punch.details import transport_problem

    unavailable = {"tcp": "no STUN Binding response over TCP within 3s"}
    peer = {"nat": {"punch": {"transports": [], "unavailable": unavailable}}}
    problem = transport_problem(role, "tcp", [], unavailable, peer)
    assert problem.reason == "protocol-unavailable"
    assert "neither" not in str(problem) and "TCP only (its --protocol)" in str(problem)


def test_a_refused_relay_is_named_where_it_would_have_carried_the_protocol():
    """The receiver's UDP is blocked but it reaches the relay over TCP for UDP; a side
    with --no-relay makes that path unusable: the hint says both ways out."""
    from stunturn_diag.sansio.punch.details import transport_problem

    unavailable = {"udp": "no STUN answer over udp"}
    peer = {"nat": {"punch": {"transports": ["tcp"], "unavailable": unavailable,
                              "relay_only": {"udp": "blocked"}}}}
    problem = transport_problem("initiator", "udp", ["udp"], {}, peer, relay=False)
    assert problem.reason == "protocol-unavailable"
    assert "--protocol tcp" in str(problem) and "without --no-relay" in str(problem)
    assert transport_problem("initiator", "udp", ["udp"], {}, peer, relay=True) is None


def test_a_cached_profile_from_another_public_ip_is_dropped_and_probed_again(server):
    """The cache entry for this network says "measured behind 203.0.113.99"; STUN now sees
    127.0.0.1: the profile is not shared, the probe runs again and replaces the entry."""
    from stunturn_diag.punch.profile_cache import (Network, ProfileCache, cache_key,
                                                   default_gateway)
    from stunturn_diag.punch.udp import route_source_ip
    from stunturn_diag.signaling import SignalingClient

    gateway = default_gateway()
    if None in gateway:
        pytest.skip("no default gateway with a known MAC: nothing to key the cache on")
    client = SignalingClient(server)
    primary = client.info()["stun"]["primary"]
    key = cache_key(client.base_url, Network(route_source_ip((primary["ip"], primary["port"])),
                                             *gateway))
    cache = ProfileCache()
    stale = {"udp": {"mapping": "address-and-port-dependent", "port_allocation": "random"}}
    cache.put(key, {"profile": stale, "public_ip": "203.0.113.99", "probed": ["udp", "tcp"]})
    said = []
    with pytest.raises(PunchError) as err:
        receive(server, KEY, progress=said.append)
    assert err.value.reason == "no-initiator"
    assert any("from the cache" in s for s in said), said
    assert any("203.0.113.99" in s and "probing again" in s for s in said), said
    assert any("NAT profile (" in s and "no-nat" in s for s in said), said
    entry = cache.get(key)
    assert entry["public_ip"] == "127.0.0.1" and entry["profile"]["udp"]["mapping"] == "no-nat"


@pytest.mark.parametrize("role,relay,reason", [
    ("receiver", True, None), ("initiator", True, None),
    # no relay in the match (or this side will not use one): the old verdict stays
    ("receiver", False, "protocol-unavailable"), ("initiator", False, "protocol-unavailable"),
])
def test_a_receiver_without_udp_that_reaches_the_relay_over_tcp_is_no_problem(role, relay,
                                                                              reason):
    """RFC 8656 section 3.1: its UDP goes through a UDP allocation made over TCP."""
    from stunturn_diag.sansio.punch.details import signaling_details, transport_problem

    receiver = signaling_details(None, {"tcp": (("203.0.113.5", 4000), [])}, pair_flows=1,
                                 birthday=False, unavailable={"udp": "no STUN answer"},
                                 portmap=None, next_port=None, counter_rate=None, software="t",
                                 relay_only={"udp": "no STUN answer"})
    assert receiver["nat"]["punch"]["relay_only"] == {"udp": "no STUN answer"}
    if role == "receiver":
        problem = transport_problem(role, "udp", ["tcp"], {"udp": "no STUN answer"}, {},
                                    relay_only={"udp": "no STUN answer"}, relay=relay)
    else:
        problem = transport_problem(role, "udp", [], {}, receiver, relay=relay)
    assert (problem.reason if problem else None) == reason


def test_a_side_with_no_relay_says_so_and_a_receiver_without_udp_then_has_no_way():
    from stunturn_diag.sansio.punch.candidates import peer_uses_relay
    from stunturn_diag.sansio.punch.details import signaling_details

    def details(relay: bool) -> dict:
        return signaling_details(None, {}, pair_flows=0, birthday=False, unavailable={},
                                 portmap=None, next_port=None, counter_rate=None,
                                 software="t", relay=relay)
    assert details(False)["nat"]["punch"]["relay"] is False and not peer_uses_relay(details(False))
    assert "relay" not in details(True)["nat"]["punch"] and peer_uses_relay(details(True))
    assert peer_uses_relay({}) and peer_uses_relay({"nat": {"punch": {}}})   # older peers
