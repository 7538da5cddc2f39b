"""The profile a side sends (punch/profile_runner.py): given, from the cache, or probed;
a cached profile measured behind another public IP is dropped."""

from __future__ import annotations

from types import SimpleNamespace

from stunturn_diag.punch.api import PunchOptions
from stunturn_diag.punch.profile_cache import ProfileCache
from stunturn_diag.punch.profile_runner import NatProfileSource

PROFILE = {"udp": {"mapping": "endpoint-independent", "filtering": "endpoint-independent"}}


def _source(tmp_path, **opts) -> tuple[NatProfileSource, list[str]]:
    said: list[str] = []
    src = NatProfileSource(SimpleNamespace(base_url="http://192.0.2.1:8080"),
                           PunchOptions(cache_dir=str(tmp_path), **opts), ["udp"],
                           lambda proto: ("192.0.2.1", 3478), said.append)
    return src, said


def test_a_given_profile_is_kept_and_nothing_is_probed(tmp_path):
    src, said = _source(tmp_path, nat_profile=PROFILE)
    src.learn(None)
    assert src.profile == PROFILE and said == []


def test_a_cached_profile_from_another_public_ip_is_dropped(tmp_path):
    src, said = _source(tmp_path, cache=False)      # the entry is set up here, not found
    src._cache = ProfileCache(str(tmp_path))
    src._cache_key = "k"
    src._cache.put("k", {"profile": PROFILE, "public_ip": "203.0.113.2", "probed": ["udp"],
                         "unreachable": {}})
    src.learn(None)
    assert src.profile == PROFILE and src.cached_public_ip == "203.0.113.2"
    assert "from the cache" in said[-1]
    assert not src.forget_if_moved("203.0.113.2")           # the same network
    assert src.forget_if_moved("198.51.100.9")
    assert src.profile is None and src.cached_public_ip is None
    assert src._cache.get("k") is None and "probing again" in said[-1]
