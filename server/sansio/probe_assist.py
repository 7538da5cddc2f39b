"""Probe-assist's pure core: who may ask, how much, and what the answer says.

- :class:`AssistLimits`: requests per source (a token bucket: 429 with Retry-After) and
  connect places per source and in all (429 / 503 ``busy``);
- :func:`host_allowed` / :class:`HostCheck`: does a request's Host header name this server
  (the DNS-rebinding guard)?
- :func:`connect_plan` / :func:`simopen_source`: which server address each source role
  connects from, for a caller of this address family;
- :func:`summarise`: each source's verdict from its attempts.

No sockets, clocks or threads: ``now`` and the lock come from the caller
(:mod:`stunturn_server.probe_assist`, whose socket actions live in
:mod:`stunturn_server.probe_assist_runner`).
"""

from __future__ import annotations

import ipaddress
import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Iterable

from stunturn_diag.sansio.netaddr import parse_hostport

from .limits import ConcurrencyLimiter, Lock, TokenBucket

#: outcomes that settle a source: further attempts from it would only repeat the answer
DEFINITIVE = ("connected", "rst", "icmp")
#: a source's verdict is its best attempt's outcome, in this order
RANK = {"connected": 0, "rst": 1, "icmp": 2, "timeout": 3, "error": 4, "unavailable": 5}


class AssistLimits:
    """Probe-assist's admission: ``burst`` requests per source refilled at ``rate`` per
    second, and at most ``per_source`` concurrent connects for one source, ``total`` in all.
    ``new_lock`` makes each limit's lock (a ``threading.Lock`` where threads share them)."""

    def __init__(self, *, burst: float, rate: float, per_source: int, total: int,
                 new_lock: Callable[[], Lock] = nullcontext) -> None:
        self.requests = TokenBucket(float(burst), float(rate), lock=new_lock())
        self.slots = ConcurrencyLimiter(per_source, total, lock=new_lock())

    def admit(self, source: str, now: float) -> int | None:
        """Spend one request token of ``source``: ``None`` when admitted, else the whole
        seconds (at least 1) until it has one again (nothing is spent then)."""
        wait = self.requests.retry_after(source, now)
        if self.requests.take(source, now):
            return None
        return max(1, math.ceil(wait))

    def acquire(self, source: str, n: int = 1) -> str | None:
        """Take ``n`` connect places for ``source``; ``None``, else ``"source"`` (its own share
        is used up) or ``"total"`` (all are): nothing is taken then."""
        return self.slots.acquire(source, n)

    def release(self, source: str, n: int = 1) -> None:
        self.slots.release(source, n)


def host_key(host: str) -> str:
    """A Host header value (or an address) without its port, lower case, IPs canonical; a
    value that is no ``host[:port]`` (:func:`~stunturn_diag.sansio.netaddr.parse_hostport`)
    stays as it is, and so names no server."""
    host = host.strip().lower()
    try:
        host = parse_hostport(host, default_port=0)[0]
    except ValueError:
        return host
    host = host.rstrip(".")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def host_allowed(host: str, allowed: frozenset[str], any_ip_literal: bool) -> bool:
    """Does a request's Host header name this server? (DNS-rebinding guard.)"""
    key = host_key(host or "")
    if not key:
        return False
    if key in allowed:
        return True
    if any_ip_literal:
        try:
            ipaddress.ip_address(key)
            return True  # a page served from an IP literal is that host's own: no rebinding
        except ValueError:
            return False
    return False


@dataclass(frozen=True)
class HostCheck:
    """The Host names a server accepts: its own addresses (``localhost`` too when one is a
    loopback address: no page can rebind it), the operator's names, and any IP literal when
    it listens on a wildcard address."""

    allowed: frozenset[str]
    any_ip_literal: bool

    @classmethod
    def of(cls, own_ips: Iterable[str | None], listen_ips: Iterable[str],
           names: Iterable[str]) -> "HostCheck":
        ours = {host_key(ip) for ip in own_ips if ip}
        if any(ipaddress.ip_address(ip).is_loopback for ip in ours):
            ours.add("localhost")
        return cls(frozenset(ours | {host_key(name) for name in names}),
                   any(ipaddress.ip_address(ip).is_unspecified for ip in listen_ips))

    def allows(self, host: str) -> bool:
        return host_allowed(host, self.allowed, self.any_ip_literal)


def _same_family(a: str, b: str) -> bool:
    return ipaddress.ip_address(a).version == ipaddress.ip_address(b).version


def connect_plan(sources: Iterable[str], caller_ip: str, alt_ip: str | None,
                 stun_ip: str) -> list[tuple[str, str | None]]:
    """``(role, server address to connect from)`` per requested source role: ``alt-ip`` from
    the alternate IP, ``alt-port`` from the primary IP (a port other than the STUN port);
    ``None`` when the server has no such address of the caller's family."""
    plan = []
    for role in sources:
        src = alt_ip if role == "alt-ip" else stun_ip
        if src is not None and not _same_family(src, caller_ip):
            src = None
        plan.append((role, src))
    return plan


def simopen_source(caller_ip: str, alt_ip: str | None, stun_ip: str) -> str | None:
    """The address a simultaneous-open connect comes from (the alternate IP, else the
    primary); ``None`` when it is not of the caller's family."""
    src = alt_ip or stun_ip
    return src if _same_family(src, caller_ip) else None


def summarise(plan: list[tuple[str, str | None]], attempts: dict[str, list[dict]]) -> list[dict]:
    """The ``results`` of a connect-back: per planned role its best outcome (:data:`RANK`) and
    its attempts, or ``unavailable`` with the reason for a role without a source."""
    results = []
    for role, src in plan:
        if src is None:
            results.append({"from": role, "outcome": "unavailable", "attempts": [],
                            "reason": "the server has no alternate IP" if role == "alt-ip"
                            else "address family mismatch"})
            continue
        tries = attempts[role]
        best = min(tries, key=lambda r: RANK.get(r.get("outcome"), 9))
        results.append({"from": role, "outcome": best.get("outcome"), "attempts": tries})
    return results
