"""A dual-stack server (issue 14): IPv6 listeners beside IPv4 (config, /v1/info, probe
assist's family view) and pairing that matches a receiver by an IP of either family.
No sockets: the Flask test client and the pure matcher."""

from __future__ import annotations

import itertools

import pytest

from stunturn_diag.errors import ConfigError
from stunturn_server.app import create_app
from stunturn_server.config import ServerConfig
from stunturn_server.sansio.matching import Conflict, KeyHasher, Matcher
from stunturn_server.sansio.validation import BadRequest, initiate_request
from stunturn_server.store import InMemoryStore

V4, ALT4 = "198.51.100.10", "198.51.100.20"
V6, ALT6 = "2001:db8:0:100::10", "2001:db8:0:100::20"
RID = "ab" * 16
DUAL = dict(http_host=V4, alt_ip=ALT4, http_host6=V6, alt_ip6=ALT6)


@pytest.mark.parametrize("settings,match", [
    (dict(http_host=V4, http_host6=ALT4), "must be an IPv6"),
    (dict(http_host=V4, alt_ip6=ALT6), "needs http_host6"),
    (dict(http_host=V6, http_host6=ALT6), "beside an IPv4"),
    (dict(http_host=V4, http_host6="not-an-ip"), "must be an IPv6"),
])
def test_bad_dual_stack_settings_are_config_errors(settings, match):
    with pytest.raises(ConfigError, match=match):
        ServerConfig(**settings)


def test_family_views():
    cfg = ServerConfig(**DUAL)
    assert cfg.family_config(4) is cfg
    v6 = cfg.family_config(6)
    assert (v6.stun_ip, v6.alt_ip, v6.http_host6) == (V6, ALT6, None)
    assert cfg.for_peer("2001:db8:1::10").alt_ip == ALT6      # probe assist answers from v6
    assert cfg.for_peer("203.0.113.2") is cfg
    assert ServerConfig(http_host=V4).family_config(6) is None
    assert ServerConfig(http_host=V6).family_config(6).stun_ip == V6   # [V6]:PORT alone


def test_info_lists_both_families():
    info = create_app(ServerConfig(**DUAL)).test_client().get("/v1/info").get_json()
    fam = info["families"]
    assert fam["ipv4"]["stun"]["primary"] == {"ip": V4, "port": 3478}
    assert fam["ipv6"]["http"]["ip"] == V6
    six = fam["ipv6"]["stun"]
    assert six["primary"] == {"ip": V6, "port": 3478}
    assert six["alt_both"] == {"ip": ALT6, "port": 3479} and six["behaviour_tests"] is True
    assert info["stun"] == fam["ipv4"]["stun"]        # the old key keeps its meaning
    only4 = create_app(ServerConfig(http_host=V4, alt_ip=ALT4)).test_client().get("/v1/info").get_json()
    assert only4["families"]["ipv6"] is None


def test_v6_without_alternate_says_so():
    info = create_app(ServerConfig(http_host=V4, alt_ip=ALT4, http_host6=V6)).test_client() \
        .get("/v1/info").get_json()
    six = info["families"]["ipv6"]["stun"]
    assert six["behaviour_tests"] is False and any("alternate" in u for u in six["unavailable"])


def _req(**fields):
    return initiate_request({"rendezvous": RID, "protocol": "udp", **fields})


def test_target_ip_forms():
    assert _req(target_ip="203.0.113.2").target_ips == ("203.0.113.2",)
    assert _req(target_ip=["203.0.113.2", "2001:DB8:1::10"]).target_ips == ("203.0.113.2", "2001:db8:1::10")
    both = _req(target_ip="203.0.113.2", target_ip6="2001:db8:1::10")
    assert both.target_ip == "203.0.113.2" and both.target_ips[1] == "2001:db8:1::10"
    for bad in (dict(target_ip=["203.0.113.2", "203.0.113.3"]), dict(target_ip=[]),
                dict(target_ip="203.0.113.2", target_ip6="203.0.113.3"),
                dict(target_ip=["203.0.113.2", "2001:db8::1", "2001:db8::2"])):
        with pytest.raises(BadRequest):
            _req(**bad)


@pytest.fixture
def matcher():
    ids = itertools.count(1)
    return Matcher(InMemoryStore(), KeyHasher(b"s" * 32), new_id=lambda: f"id{next(ids)}")


def test_a_receiver_of_either_family_takes_the_initiator(matcher):
    for receiver_ip in ("203.0.113.2", "2001:db8:1::10"):
        reg = matcher.register(RID, ("203.0.113.2", "2001:db8:1::10"), "udp", observed=(V4, 1),
                               details={}, now=0, timeout=10)
        assert matcher.store.waiting_count() == 2
        match = matcher.checkin(RID, observed=(receiver_ip, 5), details={}, now=1)
        assert match is not None and match.receiver_observed[0] == receiver_ip
        assert matcher.store.waiting_count() == 0               # the sibling slot is empty too
        assert reg.mailbox.wait(0) is match
        assert matcher.leave(reg.waiter) is False               # taken: its match was delivered
        other = "2001:db8:1::10" if receiver_ip == "203.0.113.2" else "203.0.113.2"
        assert matcher.checkin(RID, observed=(other, 5), details={}, now=1) is None
        reg.mailbox.close()


def test_conflict_in_one_family_stores_nothing(matcher):
    matcher.register(RID, "2001:db8:1::10", "udp", observed=(V4, 1), details={}, now=0, timeout=10)
    with pytest.raises(Conflict):
        matcher.register(RID, ["203.0.113.2", "2001:db8:1::10"], "udp", observed=(V4, 2), details={},
                         now=0, timeout=10)
    assert matcher.store.waiting_count() == 1                   # the v4 entry was taken back


def test_leaving_removes_every_entry(matcher):
    reg = matcher.register(RID, ["203.0.113.2", "2001:db8:1::10"], "tcp", observed=(V4, 1), details={},
                           now=0, timeout=10)
    assert matcher.leave(reg.waiter) is True and matcher.store.waiting_count() == 0


def test_initiate_over_http_with_target_ip6_is_accepted():
    client = create_app(ServerConfig(stun_enabled=False, wait_timeout=0.2)).test_client()
    r = client.post("/v1/initiate", json={"rendezvous": RID, "target_ip": "203.0.113.2",
                                          "target_ip6": "2001:db8:1::10", "protocol": "udp", "timeout": 0.1})
    assert r.status_code == 408 and r.get_json()["error"] == "timeout"


def test_probe_assist_accepts_the_ipv6_host_header():
    """The DNS-rebinding guard knows the IPv6 listen address as this server's own name."""
    client = create_app(ServerConfig(**DUAL)).test_client()
    r = client.post("/v1/probe/tcp-connect", json={"port": 0},
                    headers={"Host": f"[{V6}]:8080"}, environ_base={"REMOTE_ADDR": "2001:db8:1::10"})
    assert r.status_code == 400            # past the Host check: the body is what is wrong
    r = client.post("/v1/probe/tcp-connect", json={"port": 0},
                    headers={"Host": "[2001:db8::99]:8080"}, environ_base={"REMOTE_ADDR": "2001:db8:1::10"})
    assert r.status_code == 403 and r.get_json()["error"] == "host-not-allowed"
