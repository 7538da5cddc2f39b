"""The port-mapped path: where the probe found the gateway's port mapping usable, ask it
(PCP RFC 6887, NAT-PMP RFC 6886 or UPnP IGD; :mod:`stunturn_diag.portmap.mapper`) to map
the UDP punch port before pairing and offer the mapped address to the peer
(``details.nat.punch.portmap``); :func:`stunturn_diag.sansio.punch.decision.decide` then knows this side is
reachable there (strategy ``portmap``).

The mapping is short-lived (:data:`LIFETIME`, within any session's first minutes),
renewed at half its lifetime while the channel is open and deleted once it closes or
the peer is lost (a watcher thread, bounded by :data:`MAX_SESSION`); when the plan does
not use it, it is deleted right after the punch.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from ..portmap import mapper
from stunturn_diag.sansio.netaddr import Address

#: the mapping's lifetime (seconds) and the watcher's bounds
LIFETIME = 120
MAX_SESSION = 24 * 3600.0
WATCH_EVERY = 0.5
#: the probe's names -> the mapper's, in order of preference (PCP first: it has nonces)
_METHODS = (("pcp", "pcp"), ("nat_pmp", "nat-pmp"), ("upnp", "upnp"))


def usable_method(profile: object) -> str | None:
    """The mapping protocol to use from a probe report's ``port_mapping`` (pure):
    None unless it says ``usable``."""
    block = profile.get("port_mapping") if isinstance(profile, dict) else None
    if not isinstance(block, dict) or block.get("usable") is not True:
        return None
    return next((method for name, method in _METHODS if block.get(name) is True), None)


class PortMapping:
    """One UDP mapping of the punch port on the gateway."""

    def __init__(self, method: str, internal_port: int, *, lifetime: int = LIFETIME,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.method, self.internal_port, self.lifetime = method, internal_port, lifetime
        self.clock = clock
        self.mapping: mapper.Mapping | None = None
        self.renewals = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def address(self) -> Address | None:
        m = self.mapping
        if m is None or not m.ok or not m.external_ip or not m.external_port:
            return None
        return m.external_ip, m.external_port

    def request(self, timeout: float = 1.0) -> Address | None:
        """Ask the gateway; the mapped address, None when it refused or was silent."""
        self.mapping = mapper.create(self.method, "udp", self.internal_port,
                                     lifetime=self.lifetime, timeout=timeout)
        return self.address

    def keep_for(self, channel) -> None:
        """Renew while ``channel`` is open; delete as it closes (or is found lost)."""
        if self._thread is None and self.address is not None:
            if isinstance(getattr(channel, "on_close", None), list):
                channel.on_close.append(self.release)     # deleted as the channel closes
            self._thread = threading.Thread(target=self._watch, args=(channel,),
                                            name="punch-portmap", daemon=True)
            self._thread.start()

    def _watch(self, channel) -> None:
        end = self.clock() + MAX_SESSION
        renew_at = self.clock() + self.lifetime / 2
        while not self._stop.wait(WATCH_EVERY) and self.clock() < end:
            if getattr(channel, "closed", False) or getattr(channel, "lost", False):
                break
            if self.clock() >= renew_at:
                got = mapper.renew(self.mapping, lifetime=self.lifetime)
                if got.ok:
                    self.mapping, self.renewals = got, self.renewals + 1
                renew_at = self.clock() + (self.lifetime / 2 if got.ok else 5.0)
        self.release()

    def release(self) -> None:
        """Delete the mapping (once)."""
        with self._lock:
            m, self.mapping = self.mapping, None
        if m is not None and m.ok:
            mapper.delete(m, timeout=1.0)
        self._stop.set()


def offer(side) -> PortMapping | None:
    """The hook of :mod:`.api` before pairing: map the UDP punch port when our profile
    says the gateway's mapping is usable (None otherwise, or when the gateway refused)."""
    method = usable_method(side.nat.profile)
    prepared = side.prepared.get("udp")
    if method is None or prepared is None:
        return None
    pm = PortMapping(method, prepared[0].local_address[1])
    address = pm.request()
    if address is None:
        side._say(f"the gateway did not map the punch port over {method} "
                  f"({pm.mapping.result if pm.mapping else 'no answer'})")
        return None
    side._say(f"the gateway mapped the punch port over {method}: {address[0]}:{address[1]}")
    return pm
