"""Library API: pair through a signaling server and get a connected, authenticated channel.

The counterpart of the original Go library's ``GetTCPPeer``/``GetClientPeer`` +
``PunchTCPHole``/``PunchUDPHole``::

    from stunturn_diag.punch import initiate, receive, PunchError

    # machine A (names B's public IP and waits for it):
    result = initiate("http://server:8080", key, target_ip="203.0.113.7", protocol="udp")
    # machine B (checks in; wait=60 keeps checking in for up to a minute):
    result = receive("http://server:8080", key, wait=60)

    conn = result.connection   # UdpChannel (datagrams) or SecureStream (TCP): both encrypted

Both raise :class:`PunchError` (``.reason``, ``.attempts``) when no authenticated
channel results, pairing included (``reason`` ``no-initiator``, ``pairing-timeout``,
``pairing-conflict``, ``server-unreachable``, ``protocol-unavailable``...; the
:class:`SignalingError` is the ``__cause__``). Only invalid arguments raise
:class:`ConfigError`, before any I/O.

Steps on each side: ask the server for its STUN endpoint; know this NAT (a cached
profile, else the quick probe, while the slow rendezvous KDF (scrypt) runs beside it); learn the
server-reflexive address from the socket that will punch (keeping it alive; a receiver
learns its UDP and TCP mappings concurrently and keeps whichever it got); send it with
local addresses, the transports it has and the NAT profile; get matched; both sides
check that the initiator's protocol is one the receiver has (else both fail at once
with ``protocol-unavailable``; with a relay offered, a side whose UDP got no STUN
answer takes the relay reached over TCP instead, ``nat.punch.relay_only``); derive the
same plan as the peer
(:func:`stunturn_diag.sansio.punch.decision.decide`), punch, authenticate (:mod:`stunturn_diag.sansio.punch.handshake`).

Port prediction and the probe: a sequentially allocating NAT hands every new flow the
next port, so the flows opened after a STUN binding are counted (``flows_after_stun``,
per transport). The probe's own flows all end before the punch sockets' STUN bindings
(the probe runs first, its result is needed before pairing anyway), so they never
enter that count; the UDP binding's first datagram leaves before the TCP SYN, so the
two bindings' order is known too.
The server only ever sees :func:`stunturn_diag.sansio.punch.keys.rendezvous_id` of the key; the peer's
candidates are vetted (:func:`stunturn_diag.sansio.punch.candidates.vet_peer_candidates`) before we send to them.
"""

from __future__ import annotations

import os
import random
import threading
import time
from stunturn_diag.sansio.netaddr import url_host
from dataclasses import dataclass, field
from typing import Callable

from .. import __version__
from ..errors import (ConfigError, NoInitiatorWaiting, PairingTimeout, PunchError, RateLimited,
                      SignalingError, StunturnError)
from ..signaling import SignalingClient, TlsOptions
from stunturn_diag.sansio.punch.handshake import Handshake, StartedPake, start_pake
from stunturn_diag.sansio.punch.candidates import (address_of, build_targets, peer_uses_relay,
                                                  vet_peer_candidates)
from stunturn_diag.sansio.probe.profile import punch_profile
from stunturn_diag.sansio.punch.decision import Plan, decide, priming_gap, profile_from_details
from stunturn_diag.sansio.punch.details import (flows_after_stun, peer_details, signaling_details,
                                               transport_problem)
from stunturn_diag.sansio.punch.engine import DEFAULT_PRIME_TTL
from stunturn_diag.sansio.punch.families import (HAPPY_EYEBALLS_DELAY, FamilyPlan, family_of,
                                                plan_families)
from .ipv6_leg import Ipv6Leg
from stunturn_diag.sansio.punch.keys import rendezvous_id
from .profile_cache import DEFAULT_MAX_AGE
from .profile_runner import NatProfileSource
from . import portmap_path, relay_path
from .handshake_runner import authenticate_stream
from .steer_runner import PortPromise
from stunturn_diag.sansio.punch.wire import Role
from stunturn_diag.sansio.netaddr import Address

PROTOCOLS = ("udp", "tcp")
#: sequential NATs: seconds from a counter reading to the punch, receiver (one
#: check-in away) and how often a waiting initiator renews its promise
RECEIVER_HORIZON = 0.5
PROMISE_REFRESH = 1.0
#: PunchError.reason for pairing failures (signaling error code -> reason)
_PAIRING_REASONS = {"timeout": "pairing-timeout", "conflict": "pairing-conflict"}
#: runner failure reasons that, for a plan decided infeasible, mean "use a relay"
#: (UDP engine: timeout, one-way, packet-budget; TCP engine: timeout, refused, unreachable;
#: steering a predicted port: port-counter-too-fast)
_RELAY_CAUSES = {"timeout": "nothing got through", "one-way": "only one direction got through",
                 "packet-budget": "the packet budget ran out",
                 "refused": "the peer's NAT answered with RST",
                 "unreachable": "ICMP unreachable",
                 # a predict plan whose NAT handed the promised ports to other flows
                 "port-counter-too-fast": "our NAT's port counter moved past the promised ports"}


@dataclass
class PunchOptions:
    """Knobs of one punch (all times in seconds)."""

    protocol: str = "udp"
    #: initiator: how long to wait for the receiver (None = the server's wait timeout)
    pair_timeout: float | None = None
    #: from the match to an authenticated channel
    punch_timeout: float = 10.0
    stun_timeout: float = 3.0
    #: receiver: keep checking in this long (0 = once)
    wait: float = 0.0
    wait_interval: float = 1.0
    #: TTL of the priming packets (expire past our NAT, before the peer's); 0 or None disables
    prime_ttl: int | None = DEFAULT_PRIME_TTL
    #: allow the bounded many-ports attempt (both sides must allow it)
    birthday: bool = False
    #: our NAT profile (the probe's --json report or its "udp"/"tcp" sections)
    nat_profile: dict | None = None
    #: without a nat_profile: know this NAT (cached profile, else the quick probe) and share it
    probe: bool = True
    #: reuse a recent probe result of this network and server, and store new ones
    cache: bool = True
    #: how old a cached profile may be (seconds)
    cache_max_age: float = DEFAULT_MAX_AGE
    #: cache directory (None: $XDG_CACHE_HOME/stunturn-diag or ~/.cache/stunturn-diag)
    cache_dir: str | None = None
    local_ip: str = "0.0.0.0"
    local_port: int = 0
    #: keepalive period and silence after which the peer counts as lost (UDP channel
    #: frames; TCP: SO_KEEPALIVE, TCP_KEEPIDLE/INTVL/CNT and TCP_USER_TIMEOUT)
    keepalive_interval: float = 2.0
    peer_timeout: float = 10.0
    #: fall back to the server's TURN relay (UDP; TCP where it offers RFC 6062 TCP
    #: allocations) when the plan is relay-needed or the
    #: direct attempt fails; relay_timeout bounds the relayed handshake after that point
    relay: bool = True
    relay_timeout: float = 5.0
    progress: Callable[[str], None] | None = None
    #: how an https:// signaling server is verified (None: the system trust store)
    tls: TlsOptions | None = None
    #: through an IPv4 server URL of a dual-stack server: also punch over IPv6, which
    #: gets this head start in seconds (RFC 8305 section 5); False: IPv4 only
    ipv6: bool = True
    happy_eyeballs_delay: float = HAPPY_EYEBALLS_DELAY

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"protocol must be udp or tcp, got {self.protocol!r}")
        for name in ("punch_timeout", "stun_timeout", "wait_interval", "peer_timeout",
                     "keepalive_interval", "cache_max_age", "relay_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r}")
        if not 0 <= self.happy_eyeballs_delay <= 2.0:
            raise ConfigError("happy_eyeballs_delay must be 0..2 seconds (RFC 8305 section 5), "
                              f"got {self.happy_eyeballs_delay!r}")
        if self.wait < 0:
            raise ConfigError(f"wait must be >= 0 seconds, got {self.wait!r}")
        if not isinstance(self.local_port, int) or not 0 <= self.local_port <= 65535:
            raise ConfigError(f"local_port must be 0..65535, got {self.local_port!r}")
        if self.prime_ttl is not None and not 0 <= self.prime_ttl <= 255:
            raise ConfigError(f"prime_ttl must be 0..255 (0 or None: no priming), "
                              f"got {self.prime_ttl!r}")


@dataclass
class PunchResult:
    """A punched, authenticated connection and how it came about."""

    connection: object            # UdpChannel (udp) or SecureStream (tcp)
    protocol: str
    role: Role
    match_id: str
    local: Address                # our socket's address
    mapped: Address | None        # our server-reflexive address
    peer: Address                 # where the peer's authenticated packets come from
    strategy: str
    connect_ms: float             # from the match to the authenticated channel
    explanation: str = ""
    notes: list[str] = field(default_factory=list)
    #: through the TURN relay: our relayed address, and why the direct path was not taken
    relay: Address | None = None
    relay_reason: str | None = None
    #: strategy portmap, the side reached: its gateway-mapped address
    portmap: Address | None = None
    #: dual-stack UDP: per family ("6", "4") whether it was tried, won, lost or why not
    families: dict | None = None

    @property
    def family(self) -> int:
        """The IP family of the path (4 or 6)."""
        return family_of(self.peer[0])

    def as_dict(self) -> dict:
        def addr(a):
            return {"ip": a[0], "port": a[1]} if a else None
        return {"ok": True, "protocol": self.protocol, "role": self.role,
                "match_id": self.match_id, "local": addr(self.local),
                "mapped": addr(self.mapped), "peer": addr(self.peer),
                "strategy": self.strategy, "connect_ms": round(self.connect_ms, 1),
                "explanation": self.explanation, "relayed": self.relay is not None,
                "relay": addr(self.relay), "relay_reason": self.relay_reason,
                "portmap": addr(self.portmap), "family": self.family,
                "families": self.families}

    def close(self) -> None:
        self.connection.close()


def initiate(server_url: str, key: str, target_ip: str, *, protocol: str = "udp",
             options: PunchOptions | None = None, **overrides) -> PunchResult:
    """Initiator: long-poll until the receiver at ``target_ip`` checks in, then punch."""
    opts = _options(options, protocol, overrides)
    return _Side(server_url, key, opts, Role.INITIATOR, target_ip=target_ip).run()


def receive(server_url: str, key: str, *, protocol: str | None = None,
            options: PunchOptions | None = None, **overrides) -> PunchResult:
    """Receiver: check in (repeatedly for ``wait`` seconds), then punch.

    The protocol is the initiator's choice: without ``protocol`` a UDP and a TCP socket
    learn their mappings concurrently before the check-in, and the receiver checks in with
    whichever it got; it fails (``protocol-unavailable``, the waiting initiator too) only
    when the initiator asked for one it could not prepare.
    """
    opts = _options(options, protocol or "udp", overrides)
    protocols = [protocol] if protocol else ["udp", "tcp"]
    return _Side(server_url, key, opts, Role.RECEIVER, protocols=protocols).run()


def _options(options: PunchOptions | None, protocol: str, overrides: dict) -> PunchOptions:
    base = options or PunchOptions(protocol=protocol)
    if overrides or (options and protocol != options.protocol):
        values = {**base.__dict__, "protocol": protocol, **overrides}
        return PunchOptions(**values)
    return base


def _runner_prime_ttl(plan: Plan, prime_ttl: int | None) -> int:
    """The TTL handed to both runners: an int, 0 meaning no priming packets.

    ``PunchOptions.prime_ttl=None`` disables priming, and so does a ``lan`` plan (on a
    shared LAN nothing needs it). Always an explicit int, so the runners' own
    defaults for ``None`` never apply.
    """
    if plan.strategy == "lan" or not prime_ttl:
        return 0
    return int(prime_ttl)




class _Side:
    """One side's run: NAT profile, rendezvous, pairing, decision, punch, authentication."""

    def __init__(self, server_url: str, key: str, opts: PunchOptions, role: Role | str, *,
                 target_ip: str | None = None, protocols: list[str] | None = None) -> None:
        if not isinstance(key, str) or not 8 <= len(key) <= 256:
            raise ConfigError("the access key must be 8 to 256 printable characters",
                              hint="pass --key or set STUNTURN_KEY")
        self.client = SignalingClient(server_url, tls=opts.tls)
        self.key = key
        self.opts = opts
        self.role = Role(role)
        self.target_ip = target_ip
        self.protocols = protocols or [opts.protocol]
        #: flows (HTTP requests) opened after the last STUN binding, for port prediction
        self.pair_flows = 0
        #: protocol -> (rendezvous, mapped, local), in the order their bindings were made
        #: sequential NAT: the port our first punch flow is promised (see counter.py)
        self.promise = PortPromise(lambda: self._stun_endpoint("udp"),
                                   timeout=min(1.0, opts.stun_timeout), say=self._say)
        self.prepared: dict = {}
        #: protocol -> why it could not be prepared (also told to the peer)
        self.unavailable: dict[str, str] = {}
        #: of those, the ones used through the TURN relay reached over TCP (UDP blocked)
        self.relay_only: dict[str, str] = {}
        self._errors: dict[str, PunchError] = {}
        #: protocol -> its bound rendezvous (or why it could not bind), before any packet
        self._bound: dict[str, object] = {}
        #: this side's NAT profile: given, cached for this network, or probed
        self.nat = NatProfileSource(self.client, opts, self.protocols, self._stun_endpoint,
                                    self._say)
        self._info: dict | None = None
        self.rendezvous = ""
        self.pake: StartedPake | None = None
        #: the gateway's mapping of the UDP punch port (portmap_path), when usable
        self._portmap: portmap_path.PortMapping | None = None
        #: dual stack (IPv4 URL): the IPv6 rendezvous per protocol, or why not
        self.v6 = Ipv6Leg(self._say)

    def _say(self, text: str) -> None:
        if self.opts.progress:
            self.opts.progress(text)

    def flows_after_stun(self, protocol: str) -> int:
        """Flows our NAT saw after ``protocol``'s STUN binding: the later bindings + pairing."""
        return flows_after_stun(list(self.prepared), protocol, self.pair_flows)

    def _details(self) -> dict:
        """Our signaling details (:func:`details.signaling_details`), with the IPv6
        block (:func:`families.ipv6_block`) when we race the families."""
        out = self._signaling_details()
        out["nat"] = self.v6.attach(out["nat"], list(self.prepared) or self.protocols)
        return out

    def _signaling_details(self) -> dict:
        return signaling_details(
            self.nat.profile, {p: (mapped, local) for p, (_rv, mapped, local) in self.prepared.items()},
            pair_flows=self.pair_flows, birthday=self.opts.birthday, unavailable=self.unavailable,
            portmap=self._portmap.address if self._portmap is not None else None,
            next_port=self.promise.next_port, counter_rate=self.promise.counter_rate,
            software=f"stunturn-diag/{__version__}", relay_only=self.relay_only,
            relay=self.opts.relay)

    def _stun_endpoint(self, protocol: str) -> Address:
        info = self._info if self._info is not None else self.client.info()
        self._info = info
        from ..probe.dual_stack import for_url_family   # dual-stack server: the URL's family
        stun = for_url_family(info, self.client.base_url).get("stun")
        stun = stun if isinstance(stun, dict) else {}
        primary = address_of(stun.get("primary"))
        transports = stun.get("transports") or ["udp", "tcp"]
        if primary is None or protocol not in transports:
            raise PunchError(f"the signaling server offers no STUN endpoint over {protocol}",
                             hint="start the server with its STUN responder enabled",
                             reason="no-stun")
        if primary[0] in ("0.0.0.0", "::"):
            host = url_host(self.client.base_url)
            primary = (host, primary[1])
        return primary

    def _rendezvous(self, protocol: str):
        if protocol == "udp":
            from .udp import UdpRendezvous
            local_ip = self.opts.local_ip
            if local_ip == "0.0.0.0" and ":" in self._stun_endpoint(protocol)[0]:
                local_ip = "::"     # a server reached over IPv6: punch over IPv6
            return UdpRendezvous(local_ip, self.opts.local_port)
        try:
            from .tcp import TcpRendezvous
        except ImportError:
            raise PunchError("TCP punching is not available in this installation",
                             hint="use --protocol udp", reason="tcp-unavailable") from None
        local_ip = self.opts.local_ip
        if local_ip == "0.0.0.0" and ":" in self._stun_endpoint(protocol)[0]:
            local_ip = "::"         # a server reached over IPv6: punch over IPv6
        return TcpRendezvous(local_ip, self.opts.local_port)

    # -- the NAT profile -----------------------------------------------------------------

    def _learn_profile(self) -> None:
        """A profile for the peer's plan (:meth:`NatProfileSource.learn`)."""
        self.nat.learn(self._info)

    def _check_cached_network(self) -> None:
        """A cached profile whose public IP is not the one STUN just saw is from elsewhere:
        drop it, probe now and learn the mappings again (so the probe's flows come first)."""
        if not self.prepared:
            return
        seen = next(iter(self.prepared.values()))[1][0]
        if not self.nat.forget_if_moved(seen):
            return
        self._close_prepared()
        self.nat.probe(self._info)
        self._prepare(self.protocols)

    # -- the mappings --------------------------------------------------------------------

    def _prepare_one(self, proto: str, udp_sent: threading.Event) -> tuple:
        """Learn ``proto``'s mapping; raises PunchError. TCP waits until the UDP binding's
        first datagram left, so a sequential NAT sees the two flows in a known order."""
        if proto in self.nat.unreachable:
            raise PunchError(self.nat.unreachable[proto], reason="stun-failed",
                             hint="--no-probe tries the STUN binding anyway")
        stun_server = self._stun_endpoint(proto)
        rv = self._bound.pop(proto, None) or self._rendezvous(proto)
        if isinstance(rv, BaseException):
            raise rv
        try:
            if proto == "udp":
                mapped = rv.learn_mapping(stun_server, self.opts.stun_timeout,
                                          on_first_send=udp_sent.set)
            else:
                udp_sent.wait(self.opts.stun_timeout)
                mapped = rv.learn_mapping(stun_server, self.opts.stun_timeout)
            return rv, mapped, rv.local_candidates()
        except BaseException:
            rv.close()
            raise

    def _prepare(self, protocols: list[str]) -> None:
        """Learn the mapping of every protocol, concurrently; keep the ones that worked."""
        self.v6.start(self._info or {}, self.client.base_url, protocols, enabled=self.opts.ipv6,
                      local_ip=self.opts.local_ip, stun_timeout=self.opts.stun_timeout)
        udp_sent = threading.Event()
        if "udp" not in protocols:
            udp_sent.set()
        outcome: dict[str, object] = {}

        def job(proto: str) -> None:
            try:
                outcome[proto] = self._prepare_one(proto, udp_sent)
            except BaseException as exc:    # handed to the caller's thread
                outcome[proto] = exc
            finally:
                if proto == "udp":
                    udp_sent.set()

        threads = [threading.Thread(target=job, args=(p,), name=f"punch-stun-{p}", daemon=True)
                   for p in protocols[1:]]
        for t in threads:
            t.start()
        job(protocols[0])
        for t in threads:
            t.join()
        self.v6.join()
        self.prepared, self.unavailable, self._errors = {}, {}, {}
        for proto in protocols:
            got = outcome[proto]
            if isinstance(got, tuple):
                self.prepared[proto] = got
            elif isinstance(got, StunturnError):
                self.unavailable[proto] = got.message
                self._errors[proto] = got if isinstance(got, PunchError) else PunchError(
                    got.message, hint=got.hint, reason=getattr(got, "code", "failed"))
        for proto, got in outcome.items():
            if isinstance(got, BaseException) and not isinstance(got, StunturnError):
                self._close_prepared()
                raise got
        for proto in self.unavailable:
            if self.prepared:
                self._say(f"{proto} not prepared ({self.unavailable[proto]}); only "
                          f"{', '.join(self.prepared)} can be punched")
        for rv, _m, _l in self.prepared.values():
            if hasattr(rv, "start_keepalive"):
                rv.start_keepalive()

    def _bind(self) -> None:
        """Bind every protocol's socket first: a bad --bind fails before the probe runs."""
        for proto in self.protocols:
            try:
                self._bound[proto] = self._rendezvous(proto)
            except StunturnError as exc:
                if self.role is Role.INITIATOR:
                    raise
                self._bound[proto] = exc

    def _close_prepared(self) -> None:
        self.v6.close()
        for rv, _m, _l in self.prepared.values():
            rv.close()
        self.prepared = {}
        for rv in self._bound.values():
            if not isinstance(rv, BaseException):
                rv.close()
        self._bound = {}

    def _relay_offered(self) -> bool:
        """``/v1/info`` says the server hands matched peers a UDP TURN relay, and we use it."""
        turn = (self._info or {}).get("turn") if isinstance(self._info, dict) else None
        return bool(self.opts.relay and isinstance(turn, dict) and turn.get("enabled")
                    and "udp" in (turn.get("transports") or []))

    def _learn_relay_only(self) -> None:
        """UDP that got no STUN answer (the probe's or our binding's: UDP blocked) is
        used through the relay over TCP when one is offered (RFC 8656 section 3.1):
        ``self.relay_only``, told to the peer in ``nat.punch.relay_only``."""
        err = self._errors.get("udp")
        self.relay_only = {}
        if err is not None and err.reason == "stun-failed" and self._relay_offered():
            self.relay_only["udp"] = err.message
            self._say(f"udp not prepared ({err.message}): it goes through the TURN relay "
                      "reached over TCP")

    # -- pairing -------------------------------------------------------------------------

    def _pair(self) -> dict:
        if self.role is Role.INITIATOR:
            return self._long_poll()
        end = time.monotonic() + self.opts.wait
        attempt = 0
        while True:
            attempt += 1
            self.pair_flows += 1
            self._refresh_promise(horizon=RECEIVER_HORIZON)
            try:
                return self.client.checkin(self.rendezvous, details=self._details())
            except NoInitiatorWaiting:
                left = end - time.monotonic()
                if left <= 0:
                    if not self.prepared:      # nothing to punch with: say why, not "no initiator"
                        raise next(iter(self._errors.values())) from None
                    raise
                if attempt == 1:
                    self._say(f"no initiator waiting yet; checking in again every "
                              f"{self.opts.wait_interval:g}s for up to {self.opts.wait:g}s ...")
                time.sleep(min(self.opts.wait_interval, left))
            except RateLimited as exc:  # polled faster than the server's failure limit: slow down
                left = end - time.monotonic()
                if exc.retry_after <= left:
                    time.sleep(exc.retry_after)
                    continue
                if attempt == 1:
                    raise                      # limited from the start: say so
                # the wait window closes while slowed down: it ended with no initiator found
                if not self.prepared:
                    raise next(iter(self._errors.values())) from None
                raise NoInitiatorWaiting(
                    f"no initiator waited within {self.opts.wait:g}s (the server slowed our "
                    f"check-ins for {exc.retry_after:g}s: too many failed ones from here)",
                    hint="start the initiator first, or check in with a longer --wait-interval",
                ) from exc

    def _long_poll(self) -> dict:
        """Initiator: long-poll; re-issue it while ``pair_timeout`` exceeds the server's cap."""
        self._say(f"waiting for the receiver at {self.target_ip} to check in ...")
        cap = self._info.get("wait_timeout") if isinstance(self._info, dict) else None
        total = self.opts.pair_timeout
        if not total and self._sequential():
            # the long-poll is re-issued to renew the port promise: bound it as the
            # server's single wait would have been
            total = float(cap) if isinstance(cap, (int, float)) else 30.0
        end = time.monotonic() + total if total else None
        while True:
            left = None if end is None else max(0.1, end - time.monotonic())
            wait = min(left, float(cap)) if left is not None and isinstance(cap, (int, float)) \
                else left
            self.pair_flows += 1
            if self._refresh_promise(horizon=PROMISE_REFRESH + RECEIVER_HORIZON):
                wait = PROMISE_REFRESH if wait is None else min(wait, PROMISE_REFRESH)
            try:
                return self.client.initiate(self.rendezvous, self.target_ip, self.opts.protocol,
                                            details=self._details(), timeout=wait)
            except PairingTimeout:
                if end is None or end - time.monotonic() <= 0.1:
                    raise
                if self.promise.next_port is not None:
                    continue    # renewing the port promise, not worth a progress line
                self._say(f"still waiting for the receiver ({end - time.monotonic():.0f}s left)")

    def _sequential(self) -> bool:
        """Our NAT (per our profile) maps per destination with sequential ports for
        a prepared protocol: the peer will aim at a predicted window of ours."""
        nat = punch_profile(self.nat.profile)
        return any(profile_from_details(nat, proto).predictable for proto in self.prepared)

    def _refresh_promise(self, horizon: float) -> bool:
        """Renew our port promise (sequential NATs only, :class:`steer_runner.PortPromise`);
        False when not promising."""
        if not self._sequential():
            return False
        return self.promise.refresh(self.pair_flows, horizon)

    def run(self) -> PunchResult:
        try:
            return self._run()
        except SignalingError as exc:
            # one exception type for library users; the signaling error stays the cause
            raise PunchError(exc.message, hint=exc.hint,
                             reason=_PAIRING_REASONS.get(exc.code, exc.code)) from exc

    def _run(self) -> PunchResult:
        try:
            if self._info is None:
                self._info = self.client.info()
            # the slow KDF (the rendezvous id, scrypt) runs now, beside the probe, not
            # after the match; hashlib.scrypt releases the GIL
            kdf = threading.Thread(target=rendezvous_id, args=(self.key,), name="punch-kdf",
                                   daemon=True)
            kdf.start()
            try:
                self._bind()
                if any(not isinstance(rv, BaseException) for rv in self._bound.values()):
                    self._learn_profile()
                self._prepare(self.protocols)
                self._check_cached_network()
                self._learn_relay_only()
            finally:
                kdf.join()
            self.rendezvous = rendezvous_id(self.key)       # cached by the thread above
            # CPace scalar and PRS: before the match
            self.pake = start_pake(self.key, self.role, entropy=os.urandom)
            if self.role is Role.INITIATOR and self.opts.protocol not in self.prepared and \
                    self.opts.protocol not in self.relay_only:
                raise self._errors[self.opts.protocol]
            self._portmap = portmap_path.offer(self)
            match = self._pair()
            t_match = time.monotonic()
            protocol = match.get("protocol", self.protocols[0])
            problem = transport_problem(self.role, protocol, list(self.prepared),
                                        self.unavailable, peer_details(match),
                                        relay_only=self.relay_only,
                                        relay=self.opts.relay and
                                        isinstance(match.get("turn"), dict) and
                                        peer_uses_relay(peer_details(match)))
            if problem is not None:
                problem.context = {"protocol": protocol, "role": self.role,
                                   "match_id": str(match.get("match_id", ""))}
                raise problem
            for proto, (rv, _m, _l) in list(self.prepared.items()):
                if proto != protocol:
                    rv.close()
            # relay only (UDP blocked here): no mapping, the relay over TCP instead
            rv, mapped, _local = self.prepared.get(protocol, (None, None, None))
            mine = self._details()            # as the peer got them (before dropping the others)
            self.v6.keep_only(protocol)
            self.prepared = {protocol: self.prepared[protocol]} if rv is not None else {}
            result = self._punch(rv, match, protocol, mapped, t_match, mine)
            if self._portmap is not None and result.strategy == "portmap" and \
                    result.portmap is not None:
                self._portmap.keep_for(result.connection)    # renewed until it closes
                self._portmap = None
            return result
        finally:
            self._close_prepared()
            if self._portmap is not None:                   # not used: deleted now
                self._portmap.release()

    def _steer_counter(self, plan: Plan) -> int:
        """After the match: bring our NAT's counter to the promised port (burning
        the gap); the number of our targets to skip. PunchError when it is past."""
        return self.promise.steer(plan.predict_for(self.role))

    def _punch(self, rv, match: dict, protocol: str, mapped: Address,
               t_match: float, mine: dict | None = None) -> PunchResult:
        match_id = str(match.get("match_id", ""))
        details = peer_details(match)
        mine = mine if mine is not None else self._details()
        sides = {self.role: mine, self.role.other: details}
        init_p = profile_from_details(sides[Role.INITIATOR].get("nat"), protocol)
        recv_p = profile_from_details(sides[Role.RECEIVER].get("nat"), protocol)
        peer = match.get("peer") if isinstance(match.get("peer"), dict) else {}
        observed = address_of(peer.get("observed"))    # where the server saw the peer
        vetted = vet_peer_candidates(details, protocol, my_public_ip=mapped[0] if mapped else None,
                                     peer_observed_ip=observed[0] if observed else None)
        same_ip = vetted.srflx is not None and mapped is not None and \
            vetted.srflx[0] == mapped[0] and bool(vetted.local)
        plan = decide(init_p, recv_p, same_public_ip=same_ip, protocol=protocol)
        plan.notes.extend(vetted.notes)
        for note in vetted.notes:
            self._say(note)
        self._say(f"matched ({match_id[:8]}); strategy {plan.strategy}: {plan.explanation}")
        deadline = t_match + self.opts.punch_timeout
        # a side without UDP (plan.blocked): nothing to punch, the relay at once
        fams = None if plan.blocked else self._family_plan(protocol, details, plan)
        relay = relay_path.for_plan(self, match, plan, protocol, deadline)
        if plan.blocked and (relay is None or not peer_uses_relay(details)):
            # a side without UDP but no relay on both sides: the reasons of no relay at all
            if relay is not None:
                relay.close()
            self.v6.close()
            who = "this side" if relay is None else "the peer"
            raise PunchError(f"{plan.explanation}; but {who} does not use the relay "
                             "(--no-relay, or no relay in the match)",
                             reason="stun-failed" if self.role in plan.blocked
                             else "protocol-unavailable")
        try:
            if relay is not None and not plan.feasible and (fams is None or 6 not in fams.start):
                return self._relayed(relay, match_id, mapped, t_match, plan, plan.explanation)
            return self._direct(rv, match_id, details, protocol, mapped, t_match, plan, deadline,
                                vetted, fams, relay_offered=relay is not None,
                                gap=priming_gap(recv_p if self.role is Role.INITIATOR
                                                else init_p))
        except PunchError as exc:
            if relay is None or exc.reason not in _RELAY_CAUSES and exc.reason != "relay-needed":
                raise
            cause = _RELAY_CAUSES.get(exc.reason, "relay-needed")
            why = f"the direct attempt failed ({cause}): {exc.message}"
            return self._relayed(relay, match_id, mapped, t_match, plan, why, exc,
                                 peer_deadline=deadline)
        finally:
            if relay is not None:
                relay.close()

    def _relayed(self, relay, match_id: str, mapped: Address, t_match: float, plan: Plan,
                 why: str, direct: PunchError | None = None,
                 peer_deadline: float = 0.0) -> PunchResult:
        """The same handshake and channel through the TURN relay (punch/relay_path.py).

        ``peer_deadline``: the direct attempt's deadline, when we gave up before it (the
        peer never confirmed us): the peer may only come to the relay by then."""
        self._say(f"falling back to the TURN relay: {why}")
        deadline = max(time.monotonic(), peer_deadline) + self.opts.relay_timeout
        try:
            conn = relay.connect(self.key, deadline, keepalive_interval=self.opts.keepalive_interval,
                                 peer_timeout=self.opts.peer_timeout)
        except PunchError as exc:
            exc.attempts = (direct.attempts if direct else []) + exc.attempts
            exc.context = {"protocol": relay.protocol, "role": self.role, "match_id": match_id,
                           "strategy": "relay", "explanation": why}
            raise
        connect_ms = (time.monotonic() - t_match) * 1000.0
        return PunchResult(conn, relay.protocol, self.role, match_id, conn.local_address, mapped,
                           conn.peer_address, "relay", connect_ms,
                           f"through the TURN relay {relay.server[0]}:{relay.server[1]}",
                           plan.notes, relay=relay.relayed, relay_reason=why)

    @staticmethod
    def _strategy(plan: Plan, families: dict | None, family: int) -> tuple[str, str]:
        """(strategy, explanation) of the result: the IPv4 plan's, or ``ipv6``'s."""
        if families is None or family == 4:
            return plan.strategy, plan.explanation
        v4 = families["4"]
        return "ipv6", (f"over IPv6: both sides' IPv6 mappings punched at once (firewall "
                        f"state as RFC 6092 describes); IPv4 {v4['result']}: "
                        f"{v4.get('reason', '')}".rstrip(": "))

    def _family_plan(self, protocol: str, details: dict, plan: Plan) -> FamilyPlan | None:
        """Dual stack (IPv4 URL): which families to punch (:func:`families.plan_families`)."""
        if not self.v6.active:
            return None
        fams = plan_families(self.v6.reason(protocol), details, v4_feasible=plan.feasible,
                             v4_explanation=plan.explanation, protocol=protocol,
                             delay=self.opts.happy_eyeballs_delay)
        if 6 in fams.start:
            self._say("punching over IPv6" + (f" and IPv4 ({self.opts.happy_eyeballs_delay * 1000:.0f}"
                      " ms later)" if 4 in fams.start else f" only: {fams.reasons[4]}"))
        else:
            if protocol in self.v6.paths:       # else "IPv6 unavailable" was said already
                self._say(f"IPv6 not tried: {fams.reasons[6]}")
            self.v6.close()
        return fams

    def _by_family(self, rv, protocol: str, fams: FamilyPlan | None, punch_v4,
                   deadline: float, match_id: str, prime_ttl: int) -> tuple[object, dict | None]:
        """(connection, the result's ``families``): IPv4 alone, or the race
        (:func:`.family_race.race`; TCP: the connected sockets race, the kept one is
        authenticated after)."""
        if fams is None or 6 not in fams.start:
            try:
                return punch_v4(), (fams.report(4) if fams is not None else None)
            except PunchError as exc:
                if fams is not None:
                    exc.context = {**exc.context,
                                   "families": fams.report(None, {4: exc.message})}
                raise
        from .family_race import TcpPath, race
        rv6 = self.v6.paths[protocol][0]
        if protocol == "udp":
            def punch_v6(cancel):
                return rv6.punch(fams.targets6, role=self.role, deadline=deadline,
                                 prime_ttl=prime_ttl, strategy="ipv6", key=self.key,
                                 match_id=match_id, keepalive_interval=self.opts.keepalive_interval,
                                 peer_timeout=self.opts.peer_timeout, pake=None,
                                 cancel=cancel)    # its own CPace: fresh keys per path
            attempts = {4: punch_v4, 6: punch_v6}
        else:
            attempts = {4: lambda cancel: TcpPath(punch_v4(cancel)),
                        6: lambda cancel: TcpPath(rv6.punch(fams.targets6, role=self.role,
                                                            deadline=deadline, prime_ttl=prime_ttl,
                                                            strategy="ipv6", cancel=cancel))}
        if 4 not in fams.start:
            del attempts[4]
            rv.close()
        first = "authenticated" if protocol == "udp" else "connected"
        try:
            conn, won, failures = race(attempts, fams, self.role, deadline, self._say,
                                       first=first)
        except PunchError as exc:
            exc.context = {"families": fams.report(None, getattr(exc, "family_failures", {}))}
            raise
        return ((conn.sock if isinstance(conn, TcpPath) else conn),
                fams.report(won, failures, first=first))

    def _direct(self, rv, match_id: str, details: dict, protocol: str, mapped: Address,
                t_match: float, plan: Plan, deadline: float, vetted,
                fams: FamilyPlan | None = None, *, relay_offered: bool = False,
                gap: float) -> PunchResult:
        """The direct attempt (IPv4, or the families raced). With a relay to fall back to,
        an IPv4 UDP channel is taken only once the peer confirmed it (else both sides end
        on the relay, never one on each path: :meth:`UdpRendezvous.punch`'s
        ``require_confirmation``). ``gap``: the UDP priming gap toward this peer."""
        prime_ttl = _runner_prime_ttl(plan, self.opts.prime_ttl)
        try:
            targets = build_targets(plan, self.role, details, protocol=protocol,
                                    rng=random.Random(), vetted=vetted)
            if self.promise.next_port is not None and plan.predict_for(self.role):
                skip = self._steer_counter(plan)
                if skip and len(targets.targets) > skip:
                    targets.targets = targets.targets[skip:]
                    targets.prime = [t for t in targets.prime if t in targets.targets]
            if protocol == "udp":
                def punch_v4(cancel=None):
                    return rv.punch(targets.targets, role=self.role, deadline=deadline,
                                    prime_ttl=prime_ttl, strategy=plan.strategy, key=self.key,
                                    match_id=match_id, prime_targets=targets.prime,
                                    spray=targets.spray, extra_sockets=targets.extra_sockets,
                                    hold=targets.hold,
                                    keepalive_interval=self.opts.keepalive_interval,
                                    peer_timeout=self.opts.peer_timeout, pake=self.pake,
                                    cancel=cancel, require_confirmation=relay_offered,
                                    gap=gap)
            else:
                def punch_v4(cancel=None):
                    return rv.punch(targets.targets, role=self.role, deadline=deadline,
                                    prime_ttl=prime_ttl, strategy=plan.strategy, cancel=cancel)
            conn, families = self._by_family(rv, protocol, fams, punch_v4, deadline, match_id,
                                             prime_ttl)
            if protocol == "udp":
                local_addr, peer_addr = conn.local_address, conn.peer_address
            else:
                try:
                    from .tcp_sockets import configure_keepalive
                    configure_keepalive(conn, self.opts.keepalive_interval,
                                        self.opts.peer_timeout)
                    hs = Handshake(self.key, match_id, self.role, started=self.pake)
                    conn = authenticate_stream(conn, self.key, match_id, self.role, deadline,
                                               handshake=hs)
                except BaseException:
                    conn.close()
                    raise
                local_addr, peer_addr = conn.getsockname()[:2], conn.getpeername()[:2]
        except PunchError as exc:
            peer_rate = ((details.get("nat") or {}).get("punch") or {}).get("counter_rate") \
                if isinstance(details.get("nat"), dict) else None
            if plan.predict_for(self.role.other) and exc.reason == "timeout" \
                    and isinstance(peer_rate, (int, float)):
                exc.message += (f" (the peer's sequential NAT handed out ports at "
                                f"{peer_rate:g} flows/s besides the punch: a fast counter "
                                "moves past the predicted window)")
            if not plan.feasible and exc.reason in _RELAY_CAUSES:
                cause = exc.reason
                exc.attempts = exc.attempts + [{"cause": cause, "message": exc.message}]
                exc.reason = "relay-needed"
                exc.message = (f"{protocol.upper()} punch failed ({_RELAY_CAUSES[cause]}): "
                               f"{plan.explanation}")
            exc.context = {**exc.context, "protocol": protocol, "role": self.role,
                           "match_id": match_id, "strategy": plan.strategy,
                           "explanation": plan.explanation}
            raise
        connect_ms = (time.monotonic() - t_match) * 1000.0
        reached = plan.strategy == "portmap" and plan.portmap_side == self.role
        if self.promise.next_port is not None and plan.predict_for(self.role):
            self._say(f"port counter steered to {self.promise.next_port} "
                      f"(observed {self.promise.counter_rate or 0:.1f} flows/s besides ours)")
        if family_of(peer_addr[0]) == 6 and protocol in self.v6.paths:
            mapped = self.v6.paths[protocol][1]   # the IPv6 path's server-reflexive address
        strategy, explanation = self._strategy(plan, families, family_of(peer_addr[0]))
        return PunchResult(conn, protocol, self.role, match_id, local_addr, mapped, peer_addr,
                           strategy, connect_ms, explanation, plan.notes,
                           portmap=self._portmap.address if reached and self._portmap else None,
                           families=families)


__all__ = ["initiate", "receive", "PunchOptions", "PunchResult", "PunchError", "SignalingError",
           "Plan"]
