"""This side's NAT profile for the punch plan: given, cached for this network, or
probed now (the probe's punch profile: only the tests behind the verdicts the decision
reads). The cache's pure decisions and its file are :mod:`.profile_cache`; the
profile's shape is :func:`stunturn_diag.sansio.probe.profile.punch_profile`'s.
"""

from __future__ import annotations

import time
from typing import Callable

from ..errors import PunchError, StunturnError
from stunturn_diag.sansio.netaddr import Address
from stunturn_diag.sansio.probe.profile import punch_profile
from .profile_cache import Network, ProfileCache, cache_key, default_gateway


class NatProfileSource:
    """The profile one side sends, and what the probe found unreachable."""

    def __init__(self, client, opts, protocols: list[str],
                 stun_endpoint: Callable[[str], Address], say: Callable[[str], None]) -> None:
        """``client``: the signaling client (its base URL names the cache entry);
        ``opts``: the PunchOptions (probe, cache, cache_dir, cache_max_age, tls)."""
        self._client = client
        self.opts = opts
        self.protocols = protocols
        self._stun_endpoint = stun_endpoint
        self._say = say
        self.profile = opts.nat_profile
        #: protocol -> why the probe found it unreachable (its STUN binding is then skipped)
        self.unreachable: dict[str, str] = {}
        self._cache: ProfileCache | None = None
        self._cache_key: str | None = None
        #: the public IP a cached profile was measured behind (None: not from the cache)
        self.cached_public_ip: str | None = None

    def learn(self, info: dict | None) -> None:
        """A profile for the peer's plan: given, cached for this network, or probed now
        (``info``: the server's /v1/info, for the probe)."""
        if self.profile or not self.opts.probe:
            return
        if self.opts.cache:
            self._open_cache()
        if self._cache is not None and self._cache_key is not None:
            entry = self._cache.get(self._cache_key)
            probed = entry.get("probed") if entry else None
            if entry and isinstance(probed, list) and set(self.protocols) <= set(probed):
                self.profile = entry["profile"]
                self.cached_public_ip = entry.get("public_ip")
                unreachable = entry.get("unreachable")
                if isinstance(unreachable, dict):
                    self.unreachable = {p: str(why) for p, why in unreachable.items()
                                        if p in self.protocols}
                self._say(f"NAT profile from the cache (probed {time.time() - entry['saved_at']:.0f}s "
                          f"ago; --no-cache to probe again): {self.profile}")
                return
        self.probe(info)

    def _open_cache(self) -> None:
        """The cache and this network's entry name (none when the network cannot be named)."""
        from .udp import route_source_ip

        try:
            primary = self._stun_endpoint("udp")
        except PunchError:
            return
        local_ip = route_source_ip(primary)
        gateway_ip, gateway_mac = default_gateway()
        network = Network(local_ip or "", gateway_ip, gateway_mac)
        if not network.identified:
            return
        self._cache = ProfileCache(self.opts.cache_dir, max_age=self.opts.cache_max_age)
        self._cache_key = cache_key(self._client.base_url, network)

    def probe(self, info: dict | None) -> None:
        """Diagnose our NAT (stunturn_diag.probe's punch profile: only the tests behind the
        verdicts the decision reads) so the peer can plan with it.

        Runs before the punch sockets' STUN bindings, so none of the probe's flows falls
        between a binding and the punch (see :mod:`stunturn_diag.punch.api`)."""
        from ..probe import run_probe

        self._say("probing this NAT (--no-probe skips it) ...")
        started = time.monotonic()
        try:
            result = run_probe(self._client.base_url, tcp="tcp" in self.protocols,
                               punch_profile=True, info=info, tls=self.opts.tls)
        except StunturnError as exc:
            self._say(f"probe failed ({exc}); punching without a NAT profile")
            return
        if result.status == "unreachable":
            self._say(f"probe found no STUN answer ({'; '.join(result.notes[:1])}); "
                      "punching without a NAT profile")
            return
        reachable = {"udp": result.udp_reachable,
                     "tcp": result.tcp_reachable if result.tcp_ran else None}
        for proto in self.protocols:
            if reachable.get(proto) is False:
                self.unreachable[proto] = (f"the NAT probe got no STUN answer over {proto} "
                                           f"from the server (is {proto.upper()} blocked here?)")
        profile = punch_profile(result)
        if isinstance(result.port_mapping, dict):     # for portmap_path (not sent as such)
            profile["port_mapping"] = {k: result.port_mapping.get(k)
                                       for k in ("pcp", "nat_pmp", "upnp", "usable")}
        self.profile = profile
        self._say(f"NAT profile ({(time.monotonic() - started) * 1000:.0f} ms): {profile}")
        if self._cache is not None and self._cache_key is not None and profile:
            self._cache.put(self._cache_key, {
                "profile": profile, "public_ip": result.public_ip,
                "probed": [p for p in self.protocols if reachable.get(p) is not None],
                "unreachable": dict(self.unreachable)})

    def forget_if_moved(self, seen_ip: str) -> bool:
        """A cached profile measured behind another public IP than ``seen_ip`` (what
        STUN just saw) is from elsewhere: drop it (entry and profile) and say so; True
        then (the caller probes again and learns its mappings anew)."""
        if self.cached_public_ip is None or seen_ip == self.cached_public_ip:
            return False
        self._say(f"the cached NAT profile was measured behind {self.cached_public_ip}, "
                  f"now {seen_ip}: probing again")
        if self._cache is not None and self._cache_key is not None:
            self._cache.drop(self._cache_key)
        self.cached_public_ip = None
        self.profile = None
        return True
