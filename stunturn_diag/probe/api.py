"""``run_probe``: the library entry point of ``stunturn-diag probe`` (also used by punch).

Finds the STUN endpoints (our server's ``/v1/info``, or any RFC 5780 server via
OTHER-ADDRESS), runs the UDP plan, the TCP tests and the TTL walk concurrently, and
classifies the evidence into a :class:`ProbeResult`.

``punch_profile=True`` is what ``punch`` runs before pairing: only the tests behind the
verdicts its decision reads (per protocol: mapping, filtering, port allocation; and
reachability), in the same order (every allocation test strictly one after another, TCP's
before UDP's), with the TCP connect-back's lower floor. The rest (hairpinning, the
unsolicited-packet move test, simultaneous open, the TTL walk) is left out and listed in
``skipped``, never in ``undetermined``.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from stunturn_diag.sansio.netaddr import url_host
from typing import Callable
from urllib.parse import urlsplit

from ..errors import ProbeError, SignalingError, StunturnError
from ..signaling import SignalingClient, TlsOptions, parse_server_url
from stunturn_diag.sansio.probe.assemble import build, unreachable
from stunturn_diag.sansio.probe.endpoints import Endpoints, from_info, stun_hostport
from stunturn_diag.sansio.probe.engine import Engine
from stunturn_diag.sansio.probe.evidence import TcpEvidence
from stunturn_diag.sansio.probe.plan import PUNCH_LEFT_OUT, PUNCH_SKIP_REASON
from stunturn_diag.sansio.probe.result import ProbeResult
from .tcp_runner import Held, alloc_test, run_tcp_rest
from .tcp_sockets import has_raw_socket_capability
from .udp_runner import resolve, route_source_ip, run_udp

#: a TCP connect RTT below this seeds UDP's RTO (RFC 8489 section 6.2.1, prior RTT
#: knowledge); a slower one may hold a retransmitted SYN, so it only sets rto_initial
PRIOR_RTT_MAX = 0.05


def _endpoints_from_server(url: str, client: SignalingClient,
                           info: dict | None = None) -> tuple[Endpoints, dict]:
    from .dual_stack import for_url_family

    info = info if info is not None else client.info()
    ep = from_info(for_url_family(info, url))
    if ep is None:
        raise ProbeError(f"the server at {url} runs no STUN responder",
                         hint="start it with STUN enabled, or use --stun HOST:PORT")
    host = url_host(parse_server_url(url))
    try:
        unspecified = ipaddress.ip_address(ep.primary[0]).is_unspecified
    except ValueError:
        unspecified = True
    if unspecified:  # bound to 0.0.0.0: use the host we reached over HTTP
        ip = resolve(host, ep.primary[1])[0]
        ep = Endpoints((ip, ep.primary[1]), ep.alt_port and (ip, ep.alt_port[1]), ep.alt_ip, ep.alt_both,
                       ep.source)
    return ep, info


def run_probe(server: str | None = None, *, stun: str | None = None, tcp: bool = True,
              lifetime: float | None = None, pcap: str | None = None, ttl_walk: bool = True,
              progress: Callable[[str], None] | None = None,
              port_mapping: bool = True, tls: TlsOptions | None = None,
              punch_profile: bool = False, info: dict | None = None) -> ProbeResult:
    """Diagnose this host's NAT. Give ``server`` (our signaling server URL) or ``stun``
    (``HOST[:PORT]`` of any RFC 5780 STUN server; UDP tests only).

    ``port_mapping``: meanwhile ask the default gateway for PCP, NAT-PMP and UPnP IGD
    (:func:`stunturn_diag.portmap.discover`, ~250 ms when nobody answers) and report
    it as ``result.port_mapping``. ``tls``: how an https:// server is verified (default:
    the system trust store). ``punch_profile``: only what punching needs (see the module
    docstring): no port-mapping question either.
    """
    port_mapping = port_mapping and not punch_profile
    why_not = _no_gateway_on_path(server, stun) if port_mapping else None
    asked = _PortMappingQuestion() if port_mapping and why_not is None else None
    result = _run_probe(server, stun=stun, tcp=tcp, lifetime=lifetime, pcap=pcap,
                        ttl_walk=ttl_walk, progress=progress, tls=tls,
                        punch_profile=punch_profile, info=info)
    if punch_profile:
        result.skipped.append({"test": "port_mapping", "reason": PUNCH_SKIP_REASON})
    if asked is not None:
        result.port_mapping = asked.answer(result.public_ip)
    elif why_not is not None:
        result.skipped.append({"test": "port_mapping", "reason": why_not})
    return result


def _ms_since(t0: float) -> float:
    """Milliseconds since ``t0`` on the monotonic clock (the result's ``elapsed_ms``)."""
    return round((time.monotonic() - t0) * 1000, 3)


def _no_gateway_on_path(server: str | None, stun: str | None) -> str | None:
    """Why asking the gateway makes no sense: a server on loopback is reached without
    one (and a test run on this machine must not talk to its real gateway)."""
    try:
        host = (urlsplit(parse_server_url(server)).hostname if server is not None
                else stun_hostport(stun or "")[0])
    except (ValueError, StunturnError):     # bad input: _run_probe says so
        return None
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    return "the server is on loopback: no gateway on the path" if loopback else None


class _PortMappingQuestion:
    """:func:`~stunturn_diag.portmap.discover` in a thread beside the probe."""

    MIN_WAIT = 0.1

    def __init__(self) -> None:
        from ..portmap import discover

        self._found: dict | None = None
        self._stop = threading.Event()
        self._started = time.monotonic()

        def job() -> None:
            self._found = discover(stop=self._stop)
        self._thread = threading.Thread(target=job, name="probe-portmap", daemon=True)
        self._thread.start()

    def answer(self, mapped_ip: str | None) -> dict:
        from ..portmap import assess

        # the probe is done: stop waiting for a silent gateway, but give it at least
        # MIN_WAIT (a gateway on the LAN answers within milliseconds)
        self._thread.join(max(0.0, self._started + self.MIN_WAIT - time.monotonic()))
        self._stop.set()
        self._thread.join(5.0)
        return assess(self._found, mapped_ip)


def _run_probe(server: str | None, *, stun: str | None, tcp: bool, lifetime: float | None,
               pcap: str | None, ttl_walk: bool,
               progress: Callable[[str], None] | None,
               tls: TlsOptions | None = None, punch_profile: bool = False,
               info: dict | None = None) -> ProbeResult:
    """:func:`run_probe` without the port-mapping question.

    ``lifetime``: also measure the UDP binding lifetime, probing up to that many seconds.
    ``tls``: how an https:// server is verified (default: the system trust store).
    ``pcap``: write the probe's packets there (needs root: a BPF-filtered packet socket).
    ``punch_profile``: only what punching needs (see the module docstring; no TTL walk,
    and neither ``lifetime`` nor ``pcap``). ``info``: ``server``'s ``/v1/info`` answer when
    the caller already has it (saves a request).
    Never raises for a missing answer: an unreachable server gives ``status ==
    "unreachable"``. Raises :class:`ProbeError` / ``ConfigError`` for unusable input.
    """
    if punch_profile and (lifetime or pcap):
        raise ProbeError("the punch profile runs only the tests punching needs: no binding "
                         "lifetime, no packet capture", hint="run the full probe for those")
    if info is not None and server is None:
        raise ProbeError("info is the /v1/info answer of our server: give its URL as well")
    ttl_walk = ttl_walk and not punch_profile
    say = progress or (lambda m: None)
    t0 = time.monotonic()
    notes: list[str] = []
    skipped: list[dict] = []  # documented, expected skips: the status stays "diagnosed"
    failures: list[dict] = []  # tests that should have run but broke: "partial"
    given_info, info = info, {}
    client = None
    if (server is None) == (stun is None):
        raise ProbeError("give either a signaling server URL or --stun HOST:PORT (not both)")
    if server is not None:
        client = SignalingClient(server, timeout=5.0, tls=tls)
        try:
            ep, info = _endpoints_from_server(server, client, given_info)
        except SignalingError as exc:
            return unreachable(str(exc), {"url": server}, _ms_since(t0))
        server_desc = {"url": client.base_url, "kind": "stunturn", "endpoints": ep.as_dict()}
        for why in (info.get("stun") or {}).get("unavailable", []):
            notes.append(f"server: {why}")
    else:
        try:
            host, port = stun_hostport(stun)
        except ValueError as exc:
            raise ProbeError(f"bad --stun address: {exc}", hint="use HOST:PORT, e.g. 192.0.2.1:3478") from None
        ep = Endpoints(resolve(host, port))
        server_desc = {"stun": f"{host}:{port}", "kind": "rfc5780"}
    try:
        local_ip = route_source_ip(ep.primary)
    except ProbeError as exc:  # no route: the server cannot be reached from here
        return unreachable(str(exc), server_desc, _ms_since(t0))

    sniffer = None
    if pcap:
        from .pcap import start_capture
        sniffer, why, broke = start_capture(ep, local_ip)
        if why:
            (failures if broke else skipped).append({"test": "pcap", "reason": why})

    tcp_ran = tcp and server is not None
    if tcp and server is None:
        skipped.append({"test": "tcp", "reason": "--stun servers are used for the UDP tests only; "
                                                 "TCP needs our server's TCP endpoints and probe assist"})
    tcp_run = TcpEvidence() if tcp_ran else None
    tcp_held = Held()
    # simopen needs the walk's TTL
    if tcp_ran and ttl_walk and info.get("probe_assist") and has_raw_socket_capability():
        from .simopen_runner import preload
        preload()  # Scapy's import (~0.2 s of CPU) overlaps the tests that run before simopen
    engine_kw = {}
    if tcp_run is not None:
        # serial TCP allocation first: a sequential NAT's one counter serves TCP and UDP alike
        say("probing TCP port allocation ...")
        tcp_held = alloc_test(tcp_run, ep, local_ip, rtt_hint=client.connect_rtt if client else None)
        if tcp_run.rtt is not None and tcp_run.rtt < PRIOR_RTT_MAX:
            # the TCP connect's RTT to the same server: UDP's RTO starts from it, so a
            # server that UDP never reaches is given up after ~160 ms, not ~550 ms
            engine_kw["prior_rtt"] = tcp_run.rtt
        elif tcp_run.rtt is not None:       # a slow (or retransmitted) connect: no prior
            engine_kw["rto_initial"] = min(0.2, max(0.05, 4 * tcp_run.rtt))

    engine = Engine(**engine_kw)
    walk_done = threading.Event()
    walk_stop = threading.Event()
    walk_box: dict = {}
    background: list[threading.Thread] = []

    def start_concurrent() -> None:
        """Called by the UDP runner once its serial allocation phase is over."""
        def found(ttl: int) -> None:
            walk_box["server_hop"] = ttl
            walk_done.set()

        def walk_job():
            try:
                if ttl_walk:
                    from .layers import walk
                    walk_box["layers"] = walk(ep.primary, local_ip, None, on_server_hop=found, stop=walk_stop,
                                              rtt=engine.srtt or (tcp_run.rtt if tcp_run else None))
            except OSError as exc:
                walk_box["error"] = str(exc)
            finally:
                walk_done.set()
        walker = threading.Thread(target=walk_job, name="probe-ttl", daemon=True)
        if tcp_run is not None:
            def ttl_for_simopen():
                walk_done.wait(5.0)
                hop = walk_box.get("server_hop")
                if hop is None and ttl_walk and "error" not in walk_box:  # UDP does not get through
                    from .layers import tcp_server_hop
                    hop = walk_box["tcp_server_hop"] = tcp_server_hop(ep.primary, local_ip, rtt=tcp_run.rtt)
                return hop - 1 if hop and hop >= 3 else None

            def tcp_job():
                try:
                    has = bool(info.get("probe_assist"))
                    run_tcp_rest(tcp_run, ep, local_ip,
                                 assist=(lambda b: client.post("/v1/probe/tcp-connect", b))
                                 if has else None,
                                 simopen=(lambda b: client.post("/v1/probe/tcp-simopen", b))
                                 if has else None,
                                 ttl_for_simopen=ttl_for_simopen, loss_seen=lambda: engine.loss_seen,
                                 punch_profile=punch_profile, held=tcp_held)
                except Exception as exc:  # a thread must not die silently; becomes evidence
                    walk_box["tcp_error"] = f"{type(exc).__name__}: {exc}"
            background.append(threading.Thread(target=tcp_job, name="probe-tcp", daemon=True))
        background.append(walker)  # last: joined after the others, then told to stop waiting
        for t in background:
            t.start()

    say(f"probing UDP via {ep.primary[0]}:{ep.primary[1]} ...")
    try:
        udp = run_udp(ep, local_ip, lifetime_max=lifetime, engine=engine, on_concurrent=start_concurrent,
                      punch_profile=punch_profile)
    except BaseException:  # e.g. out of descriptors: stop what runs beside the UDP tests
        walk_stop.set()
        tcp_held.close()
        if sniffer is not None:
            from .pcap import stop_capture
            stop_capture(sniffer, pcap)
        raise
    for t in background[:-1]:
        t.join(30.0)
    walk_stop.set()
    for t in background[-1:]:
        t.join(5.0)
    if "error" in walk_box:
        failures.append({"test": "nat_layers", "reason": f"the TTL walk failed: {walk_box['error']}"})
    if "tcp_error" in walk_box:
        failures.append({"test": "tcp", "reason": f"the TCP tests stopped with an error: {walk_box['tcp_error']}"})
    layers = walk_box.get("layers")
    if sniffer is not None:
        from .pcap import stop_capture
        why = stop_capture(sniffer, pcap)
        if why:
            failures.append({"test": "pcap", "reason": why})
    # the plan's endpoints: alternates learned from OTHER-ADDRESS during the UDP tests
    result = build(udp, tcp_run, tcp_ran, lifetime, server_desc, udp.plan.endpoints, _ms_since(t0),
                   layers, left_out=PUNCH_LEFT_OUT if punch_profile else ())
    if punch_profile:
        skipped += [{"test": f"udp.{name}", "reason": PUNCH_SKIP_REASON} for name in PUNCH_LEFT_OUT]
        skipped.append({"test": "nat_layers", "reason": PUNCH_SKIP_REASON})
    result.notes[:0] = notes + udp.plan.notes + udp.errors
    result.skipped[:0] = skipped + (tcp_run.skipped if tcp_run else [])
    result.failures[:0] = failures
    return result
