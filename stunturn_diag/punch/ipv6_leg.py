"""The IPv6 leg of a dual-stack punch: sockets and mappings, before the match.

Through a dual-stack server's IPv4 URL, each punch protocol this side prepares (UDP,
TCP) gets a second socket bound to ``::`` whose mapping comes from the server's IPv6
STUN endpoint (``/v1/info`` ``families.ipv6``), learnt beside the IPv4 one. Nothing
here is an error: no route, IPv6 disabled, a server without IPv6, all end as a reason
(``why`` for the whole leg, ``errors`` per protocol) that goes into the signaling
details (:func:`stunturn_diag.sansio.punch.families.ipv6_block`) and the report.
"""

from __future__ import annotations

import threading
from typing import Callable

from ..errors import StunturnError
from stunturn_diag.sansio.netaddr import url_host
from stunturn_diag.sansio.punch.candidates import address_of
from stunturn_diag.sansio.punch.families import attach_ipv6, ipv6_block

#: longest wait for the IPv6 STUN binding (seconds; the IPv4 one has stun_timeout)
STUN6_TIMEOUT = 2.0


class Ipv6Leg:
    """Per protocol: (rendezvous, mapped, local candidates) over IPv6, or why not."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.paths: dict[str, tuple] = {}
        self.errors: dict[str, str] = {}
        #: why this side has no IPv6 leg at all; None while it has (or may get) one
        self.why: str | None = None
        #: False: the leg does not apply (an IPv6 URL already) and is never mentioned
        self.active = False
        self._threads: list[threading.Thread] = []
        self._said = False

    def start(self, info: dict, base_url: str, protocols: list[str], *, enabled: bool,
              local_ip: str, stun_timeout: float) -> None:
        """Decide whether the leg applies and start learning the mappings (threads)."""
        self.close()
        self.paths, self.errors, self.why = {}, {}, None
        self.active = ":" not in url_host(base_url)
        if not self.active:
            return
        from ..probe.dual_stack import ipv6_plan
        _url6, why = ipv6_plan(info)
        if not enabled:
            why = "IPv6 disabled (--no-ipv6)"
        elif local_ip not in ("0.0.0.0", ""):
            why = f"bound to the IPv4 address {local_ip}"
        stun6 = ((info.get("families") or {}).get("ipv6") or {}).get("stun") or {}
        server = address_of(stun6.get("primary"))
        if why is None and server is None:
            why = "the server names no IPv6 STUN endpoint"
        if why is not None:
            self.why = why
            self.say_unavailable()
            return
        transports = stun6.get("transports") or ["udp", "tcp"]
        for proto in protocols:
            if proto not in transports:
                self.errors[proto] = f"the server's IPv6 STUN responder has no {proto.upper()}"
                continue
            t = threading.Thread(target=self._learn, args=(proto, server, stun_timeout),
                                 name=f"punch-stun-{proto}6", daemon=True)
            t.start()
            self._threads.append(t)

    def _learn(self, proto: str, server, stun_timeout: float) -> None:
        try:
            if proto == "udp":
                from .udp import UdpRendezvous
                rv = UdpRendezvous("::", 0)
            else:
                from .tcp import TcpRendezvous
                rv = TcpRendezvous("::", 0)
        except (StunturnError, OSError) as exc:
            self.errors[proto] = f"no IPv6 socket here ({getattr(exc, 'message', exc)})"
            return
        try:
            mapped = rv.learn_mapping(server, min(stun_timeout, STUN6_TIMEOUT))
            local = rv.local_candidates()
            rv.start_keepalive()
            self.paths[proto] = (rv, mapped, local)
        except (StunturnError, OSError) as exc:
            rv.close()
            self.errors[proto] = (f"no IPv6 path to the server's STUN responder "
                                  f"({getattr(exc, 'message', exc)})")

    def join(self) -> None:
        for t in self._threads:
            t.join()
        self._threads = []
        if self.active and self.why is None and not self.paths and self.errors:
            self.why = next(iter(self.errors.values()))
        self.say_unavailable()

    def say_unavailable(self) -> None:
        """One line, once, when this side punches without IPv6 (never an error)."""
        if self.active and self.why and not self._said:
            self._said = True
            self.say(f"IPv6 unavailable: {self.why}; IPv4 only")

    def reason(self, protocol: str) -> str | None:
        """None when we hold an IPv6 mapping for ``protocol``, else why not."""
        if protocol in self.paths:
            return None
        return self.why or self.errors.get(protocol) or "not prepared"

    def attach(self, nat: dict, protocols: list[str]) -> dict:
        """``nat`` with our ``punch.ipv6`` block (only when the leg applies)."""
        if not self.active:
            return nat

        def entry(proto):
            rv_mapped_local = self.paths.get(proto)
            if rv_mapped_local is not None:
                return rv_mapped_local[1], rv_mapped_local[2], None
            return None, [], self.reason(proto)

        udp = entry("udp") if "udp" in protocols else (None, [], "UDP not prepared")
        tcp = entry("tcp") if "tcp" in protocols else None
        return attach_ipv6(nat, ipv6_block(*udp, tcp=tcp))

    def keep_only(self, protocol: str) -> None:
        for proto in list(self.paths):
            if proto != protocol:
                self.paths.pop(proto)[0].close()

    def close(self) -> None:
        for t in self._threads:
            t.join()
        self._threads = []
        for rv, _m, _l in self.paths.values():
            rv.close()
        self.paths = {}
