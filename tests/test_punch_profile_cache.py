"""The NAT profile cache: pure key/freshness decisions with an injected clock, and the file."""

from __future__ import annotations

import json
import os
import stat

from stunturn_diag.punch.profile_cache import (DEFAULT_MAX_AGE, MAX_ENTRIES, Network, ProfileCache,
                                               cache_key, default_gateway, forget, lookup,
                                               remember)

URL = "http://198.51.100.10:8080"
HOME = Network("192.168.1.10", "192.168.1.1", "02:00:00:00:00:01")
PROFILE = {"udp": {"mapping": "address-and-port-dependent", "port_allocation": "sequential"}}


def entry(**extra):
    return {"profile": PROFILE, "public_ip": "203.0.113.2", "probed": ["udp"], **extra}


def test_key_names_server_and_network_without_any_address_in_clear():
    key = cache_key(URL, HOME)
    assert key == cache_key(URL, Network("192.168.1.10", "192.168.1.1", "02:00:00:00:00:01"))
    # another router with the same private addressing (another MAC) is another network
    assert key != cache_key(URL, Network("192.168.1.10", "192.168.1.1", "02:00:00:00:00:02"))
    assert key != cache_key(URL, Network("192.168.1.11", "192.168.1.1", "02:00:00:00:00:01"))
    assert key != cache_key("http://198.51.100.10:8081", HOME)
    assert "192.168" not in key and "198.51" not in key


def test_only_a_network_with_a_known_gateway_is_cached():
    assert HOME.identified
    assert not Network("192.168.1.10", "192.168.1.1", None).identified
    assert not Network("192.168.1.10").identified


def test_fresh_until_max_age_then_a_miss():
    key = cache_key(URL, HOME)
    doc = remember({}, key, entry(), now=1000.0)
    assert lookup(doc, key, 1000.0)["profile"] == PROFILE
    assert lookup(doc, key, 1000.0 + DEFAULT_MAX_AGE) is not None
    assert lookup(doc, key, 1000.0 + DEFAULT_MAX_AGE + 0.1) is None
    assert lookup(doc, key, 1000.0 + 59, max_age=60) is not None
    assert lookup(doc, key, 1000.0 + 61, max_age=60) is None


def test_an_entry_from_the_future_is_not_trusted():
    key = cache_key(URL, HOME)
    assert lookup(remember({}, key, entry(), now=1000.0), key, 999.0) is None


def test_malformed_documents_are_misses():
    key = cache_key(URL, HOME)
    for doc in (None, [], {"entries": []}, {"entries": {key: "x"}},
                {"entries": {key: {"profile": [], "saved_at": 1.0}}},
                {"entries": {key: {"profile": {}, "saved_at": "1"}}},
                {"entries": {key: {"profile": {}, "saved_at": True}}}):
        assert lookup(doc, key, 1.0) is None


def test_remember_prunes_stale_entries_and_keeps_the_newest():
    doc: dict = {}
    for i in range(MAX_ENTRIES + 5):
        doc = remember(doc, f"k{i}", entry(), now=1000.0 + i)
    assert len(doc["entries"]) == MAX_ENTRIES and f"k{MAX_ENTRIES + 4}" in doc["entries"]
    assert "k0" not in doc["entries"]
    later = remember(doc, "new", entry(), now=1000.0 + DEFAULT_MAX_AGE + 100)
    assert list(later["entries"]) == ["new"]          # everything else was stale by then
    assert "new" not in forget(later, "new")["entries"]


def test_file_is_private_atomic_and_read_back_with_the_injected_clock(tmp_path):
    now = [5000.0]
    cache = ProfileCache(tmp_path / "c", clock=lambda: now[0])
    key = cache_key(URL, HOME)
    assert cache.get(key) is None                     # no file yet: a miss, not an error
    cache.put(key, entry())
    mode = stat.S_IMODE(os.stat(cache.path).st_mode)
    assert mode == 0o600 and stat.S_IMODE(os.stat(cache.directory).st_mode) == 0o700
    assert [p.name for p in cache.directory.iterdir()] == ["nat-profiles.json"]  # no temp left
    assert cache.get(key)["public_ip"] == "203.0.113.2"
    now[0] += DEFAULT_MAX_AGE + 1
    assert cache.get(key) is None
    cache.drop(key)
    assert json.loads(cache.path.read_text())["entries"] == {}


def test_a_corrupt_or_unwritable_cache_is_skipped(tmp_path):
    cache = ProfileCache(tmp_path, clock=lambda: 1.0)
    cache.path.write_text("{not json")
    assert cache.get("k") is None
    blocked = ProfileCache(tmp_path / "file-not-dir" / "sub", clock=lambda: 1.0)
    (tmp_path / "file-not-dir").write_text("")
    blocked.put("k", entry())                         # no exception: just not cached
    assert blocked.get("k") is None


def test_default_gateway_reads_linux_route_and_arp_tables(tmp_path):
    route = tmp_path / "route"
    route.write_text("Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n"
                     "eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n"
                     "eth1\t00000000\t0101A8C0\t0003\t0\t0\t200\t00000000\n"
                     "eth0\t00000000\t0102A8C0\t0003\t0\t0\t100\t00000000\n")
    arp = tmp_path / "arp"
    arp.write_text("IP address       HW type     Flags       HW address            Mask     Device\n"
                   "192.168.2.1      0x1         0x2         02:AA:bb:cc:dd:ee     *        eth0\n")
    assert default_gateway(str(route), str(arp)) == ("192.168.2.1", "02:aa:bb:cc:dd:ee")
    assert default_gateway(str(route), str(tmp_path / "none")) == ("192.168.2.1", None)
    assert default_gateway(str(tmp_path / "none"), str(arp)) == (None, None)
