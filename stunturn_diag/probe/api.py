"""``run_probe``: the library entry point of ``stunturn-diag probe`` (also used by punch).

Finds the STUN endpoints (our server's ``/v1/info``, or any RFC 5780 server via
OTHER-ADDRESS), runs the UDP plan, the TCP tests and the TTL walk concurrently, and
classifies the evidence into a :class:`ProbeResult`.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from typing import Callable

from ..errors import ProbeError, SignalingError
from ..signaling import SignalingClient, parse_server_url
from . import classify as C
from .endpoints import Endpoints, from_info, parse_hostport
from .plan import ALLOC_SOCKETS, lifetime_schedule
from .result import ProbeResult
from .engine import Engine
from .tcp import TcpRun, alloc_test, run_tcp_rest
from .layers import analyse_hops
from .tcp_classify import classify_simopen, classify_tcp_filtering, classify_tcp_mapping
from .udp_runner import UdpRun, resolve, route_source_ip, run_udp


def _a(x):
    return None if x is None else {"ip": x[0], "port": x[1]}


def _endpoints_from_server(url: str, client: SignalingClient) -> tuple[Endpoints, dict]:
    info = client.info()
    ep = from_info(info)
    if ep is None:
        raise ProbeError(f"the server at {url} runs no STUN responder",
                         hint="start it with STUN enabled, or use --stun HOST:PORT")
    host = parse_server_url(url).split("://", 1)[1].rsplit(":", 1)[0].strip("[]")
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
              progress: Callable[[str], None] | None = None) -> ProbeResult:
    """Diagnose this host's NAT. Give ``server`` (our signaling server URL) or ``stun``
    (``HOST[:PORT]`` of any RFC 5780 STUN server; UDP tests only).

    ``lifetime``: also measure the UDP binding lifetime, probing up to that many seconds.
    ``pcap``: write the probe's packets there (needs root for Scapy's sniffer).
    Never raises for a missing answer: an unreachable server gives ``status ==
    "unreachable"``. Raises :class:`ProbeError` / ``ConfigError`` for unusable input.
    """
    say = progress or (lambda m: None)
    t0 = time.monotonic()
    notes: list[str] = []
    skipped: list[dict] = []
    info: dict = {}
    client = None
    if (server is None) == (stun is None):
        raise ProbeError("give either a signaling server URL or --stun HOST:PORT (not both)")
    if server is not None:
        client = SignalingClient(server, timeout=5.0)
        try:
            ep, info = _endpoints_from_server(server, client)
        except SignalingError as exc:
            return _unreachable(str(exc), {"url": server}, t0)
        server_desc = {"url": client.base_url, "kind": "stunturn", "endpoints": ep.as_dict()}
        for why in (info.get("stun") or {}).get("unavailable", []):
            notes.append(f"server: {why}")
    else:
        try:
            host, port = parse_hostport(stun)
        except ValueError as exc:
            raise ProbeError(f"bad --stun address: {exc}", hint="use HOST:PORT, e.g. 192.0.2.1:3478") from None
        ep = Endpoints(resolve(host, port))
        server_desc = {"stun": f"{host}:{port}", "kind": "rfc5780"}
    local_ip = route_source_ip(ep.primary)

    sniffer = None
    if pcap:
        from .pcap import start_capture
        sniffer, why = start_capture(ep, local_ip)
        if why:
            skipped.append({"test": "pcap", "reason": why})

    tcp_ran = tcp and server is not None
    if tcp and server is None:
        skipped.append({"test": "tcp", "reason": "--stun servers are used for the UDP tests only; "
                                                 "TCP needs our server's TCP endpoints and probe assist"})
    tcp_run = TcpRun() if tcp_ran else None
    engine_kw = {}
    if tcp_run is not None:
        # serial TCP allocation first: a sequential NAT's one counter serves TCP and UDP alike
        say("probing TCP port allocation ...")
        alloc_test(tcp_run, ep, local_ip)
        if tcp_run.rtt is not None:
            engine_kw["rto_initial"] = min(0.2, max(0.05, 4 * tcp_run.rtt))

    engine = Engine(**engine_kw)
    walk_done = threading.Event()
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
                    walk_box["layers"] = walk(ep.primary, local_ip, None, on_server_hop=found,
                                              rtt=engine.srtt or (tcp_run.rtt if tcp_run else None))
            except OSError as exc:
                walk_box["error"] = str(exc)
            finally:
                walk_done.set()
        background.append(threading.Thread(target=walk_job, name="probe-ttl", daemon=True))
        if tcp_run is not None:
            def ttl_for_simopen():
                walk_done.wait(5.0)
                hop = walk_box.get("server_hop")
                return hop - 1 if hop and hop >= 3 else None

            def tcp_job():
                try:
                    has = bool(info.get("probe_assist"))
                    run_tcp_rest(tcp_run, ep_now(), local_ip,
                                 assist=(lambda b: client._request("POST", "/v1/probe/tcp-connect", b))
                                 if has else None,
                                 simopen=(lambda b: client._request("POST", "/v1/probe/tcp-simopen", b))
                                 if has else None,
                                 ttl_for_simopen=ttl_for_simopen, loss_seen=lambda: engine.loss_seen)
                except Exception as exc:  # a thread must not die silently; becomes evidence
                    walk_box["tcp_error"] = f"{type(exc).__name__}: {exc}"
            background.append(threading.Thread(target=tcp_job, name="probe-tcp", daemon=True))
        for t in background:
            t.start()

    holder = {"ep": ep}

    def ep_now() -> Endpoints:
        return holder["ep"]

    say(f"probing UDP via {ep.primary[0]}:{ep.primary[1]} ...")
    udp = run_udp(ep, lifetime_max=lifetime, engine=engine, on_concurrent=start_concurrent)
    holder["ep"] = ep = udp.plan.endpoints
    for t in background:
        t.join(30.0)
    if "tcp_error" in walk_box:
        notes.append(f"TCP tests failed: {walk_box['tcp_error']}")
    layers = walk_box.get("layers")
    if sniffer is not None:
        from .pcap import stop_capture
        why = stop_capture(sniffer, pcap)
        if why:
            skipped.append({"test": "pcap", "reason": why})
    result = _build(udp, tcp_run, tcp_ran, lifetime, server_desc, ep, t0, layers)
    result.notes[:0] = notes + udp.plan.notes + udp.errors
    result.skipped[:0] = skipped + (tcp_run.skipped if tcp_run else [])
    return result


def _unreachable(why: str, server_desc: dict, t0: float) -> ProbeResult:
    r = ProbeResult(server_desc, None, None, None, round((time.monotonic() - t0) * 1000, 3), False)
    r.notes.append(why)
    for name in ("mapping", "filtering", "port_allocation", "hairpin"):
        r.udp[name] = C.Verdict(None, why)
    r.tcp_ran = False
    return r


def _na(why: str) -> C.Verdict:
    return C.Verdict(None, f"not applicable: {why}", applicable=False)


def _build(udp: UdpRun, tcp: TcpRun | None, tcp_ran: bool, lifetime: float | None, server_desc: dict,
           ep: Endpoints, t0: float, layers: dict | None) -> ProbeResult:
    o = {x.name: x for x in udp.engine.outcomes}
    x1 = C.mapped(o.get("map.primary"))
    reachable = x1 is not None
    mapping = C.classify_mapping(o, udp.locals["map"])
    tcp_x1 = tcp.mapped.get("primary") if tcp else None
    if x1 is not None:
        nat = mapping.value is not C.Mapping.NO_NAT
        public_ip = x1[0]
    elif tcp_x1 is not None and tcp.local_map is not None:
        nat, public_ip = tcp_x1 != tcp.local_map, tcp_x1[0]
    else:
        nat, public_ip = None, None
    pairs = [(udp.locals["map"], x1)] if x1 else []
    for i in range(1, ALLOC_SOCKETS + 1):
        m = C.mapped(o.get(f"alloc.{i}"))
        if m is not None:
            pairs.append((udp.locals[f"alloc{i}"], m))
    unreachable = C.Verdict(None, "UDP to the STUN server gets no answer")
    if not reachable:
        verdicts = {k: unreachable for k in ("mapping", "filtering", "port_preservation", "port_allocation",
                                             "hairpin", "mapping_moves_on_unsolicited")}
        alloc = unreachable
    else:
        alloc = C.classify_allocation(pairs)
        preserved = x1[1] == udp.locals["map"][1]
        verdicts = {
            "mapping": mapping,
            "filtering": C.classify_filtering(o, ep),
            "port_preservation": C.Verdict(preserved, "the primary mapping kept the local port"
                                           if preserved else "the primary mapping changed the local port",
                                           ["map.primary"]),
            "port_allocation": alloc,
            "hairpin": C.classify_hairpin(o),
            "mapping_moves_on_unsolicited": C.classify_unsolicited(o, mapping.value),
        }
        if nat is False:
            verdicts["port_allocation"] = alloc = _na("no NAT allocates ports")
            verdicts["hairpin"] = _na("no NAT to hairpin through")
            verdicts["mapping_moves_on_unsolicited"] = _na("no NAT mapping")
        elif mapping.value is not None and mapping.value is not C.Mapping.ENDPOINT_INDEPENDENT:
            v = verdicts["mapping_moves_on_unsolicited"]
            verdicts["mapping_moves_on_unsolicited"] = C.Verdict(None, v.reason, v.probes, applicable=False)
    extra = {"mapped_address": _a(x1), "local_address": _a(udp.locals["map"]),
             "port_allocation_delta": alloc.extra.get("delta"),
             "predicted_next_port": alloc.extra.get("predicted_next_port"),
             "port_allocation_confidence": alloc.extra.get("confidence")}
    if lifetime:
        verdicts["binding_lifetime"] = C.classify_lifetime(o, lifetime_schedule(lifetime))
    if layers is not None:
        layers = analyse_hops(layers.get("hops", []), layers.get("server_hop"), nat, public_ip, udp.local_ip)
    elapsed = round((time.monotonic() - t0) * 1000, 3)
    eng = udp.engine
    result = ProbeResult(
        server=server_desc | {"endpoints": ep.as_dict()}, local_ip=udp.local_ip,
        public_ip=public_ip, nat=nat, elapsed_ms=elapsed, udp_reachable=reachable,
        tcp_reachable=bool(tcp and tcp.reachable),
        udp=verdicts, udp_extra=extra, tcp_ran=tcp_ran, layers=layers,
        probes=[x.as_dict() for x in udp.engine.outcomes],
        timings={"udp_ms": round((udp.finished - udp.started) * 1000, 3),
                 "tcp_ms": tcp.elapsed_ms if tcp else None,
                 "tcp_phases_ms": tcp.phase_ms if tcp else None,
                 "srtt_ms": None if eng.srtt is None else round(eng.srtt * 1000, 3),
                 "rto_ms": round(eng.rto * 1000, 3), "loss_estimate": round(eng.loss_estimate, 3),
                 "attempts_for_no_reply": eng.attempts_needed(), "packets": dict(eng.stats)})
    if tcp_ran:
        _add_tcp(result, tcp)
    return result


def _add_tcp(result: ProbeResult, tcp: TcpRun | None) -> None:
    if tcp is None or not tcp.reachable:
        why = "no STUN answer over TCP from the server"
        for name in ("mapping", "port_preservation", "port_allocation", "filtering", "unsolicited_syn",
                     "simultaneous_open"):
            result.tcp[name] = C.Verdict(None, why)
        return
    local = tcp.local_map
    mapping = classify_tcp_mapping(local, tcp.mapped)
    if tcp.assist is None and tcp.assist_error:
        filt = syn = C.Verdict(None, tcp.assist_error)
    else:
        filt, syn = classify_tcp_filtering(tcp.assist)
    x1 = tcp.mapped.get("primary")
    preserved = None if x1 is None or local is None else x1[1] == local[1]
    pairs = [(lo, m) for lo, m in tcp.alloc if m is not None]
    alloc = C.classify_allocation(pairs)
    if mapping.value is C.Mapping.NO_NAT:
        alloc = _na("no NAT allocates ports")
    result.tcp = {
        "mapping": mapping,
        "port_preservation": C.Verdict(preserved, "STUN over TCP from the mapping test's local port",
                                       ["tcp.map.primary"]),
        "port_allocation": alloc,
        "filtering": filt,
        "unsolicited_syn": syn,
        "simultaneous_open": classify_simopen(tcp.simopen),
    }
    result.tcp_extra = {"mapped_address": _a(x1), "local_address": _a(local),
                        "port_allocation_delta": alloc.extra.get("delta"),
                        "predicted_next_port": alloc.extra.get("predicted_next_port"),
                        "errors": tcp.errors, "accepted": tcp.accepted}
