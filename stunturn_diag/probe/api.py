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
from .tcp import TcpRun, run_tcp
from .tcp_classify import classify_tcp_filtering, classify_tcp_mapping
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

    # TCP in the background (our server only: RFC 5780 TCP behaviour needs its TCP endpoints)
    tcp_run: TcpRun | None = None
    tcp_thread = None
    tcp_ran = tcp and server is not None
    if tcp and server is None:
        skipped.append({"test": "tcp", "reason": "--stun servers are used for the UDP tests only; "
                                                 "TCP needs our server's probe assist"})
    if tcp_ran:
        assist = None
        if info.get("probe_assist"):
            assist = lambda body: client._request("POST", "/v1/probe/tcp-connect", body)  # noqa: E731
        holder: dict = {}

        def tcp_job():
            try:
                holder["run"] = run_tcp(ep_tcp, local_ip, assist=assist)
            except Exception as exc:  # a thread must not die silently; becomes evidence
                holder["error"] = f"{type(exc).__name__}: {exc}"
        ep_tcp = ep
        tcp_thread = threading.Thread(target=tcp_job, name="probe-tcp", daemon=True)
        tcp_thread.start()

    say(f"probing UDP via {ep.primary[0]}:{ep.primary[1]} ...")
    udp = run_udp(ep, lifetime_max=lifetime)
    ep = udp.plan.endpoints
    layers = None
    if ttl_walk and udp.plan.outcomes.get("map.primary") and udp.plan.outcomes["map.primary"].answered:
        from .layers import walk
        layers = walk(ep.primary, local_ip, C.mapped(udp.plan.outcomes["map.primary"]), udp.engine)
    if tcp_thread is not None:
        tcp_thread.join(30.0)
        tcp_run = holder.get("run")
        if tcp_run is None:
            notes.append(f"TCP tests failed to run: {holder.get('error', 'timed out')}")
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


def _build(udp: UdpRun, tcp: TcpRun | None, tcp_ran: bool, lifetime: float | None, server_desc: dict,
           ep: Endpoints, t0: float, layers: dict | None) -> ProbeResult:
    o = {x.name: x for x in udp.engine.outcomes}
    x1 = C.mapped(o.get("map.primary"))
    reachable = x1 is not None
    mapping = C.classify_mapping(o, udp.locals["map"])
    nat = None if x1 is None else mapping.value is not C.Mapping.NO_NAT
    filtering = C.classify_filtering(o, ep)
    pairs = [(udp.locals["map"], x1)] if x1 else []
    for i in range(1, ALLOC_SOCKETS + 1):
        m = C.mapped(o.get(f"alloc.{i}"))
        if m is not None:
            pairs.append((udp.locals[f"alloc{i}"], m))
    alloc = C.classify_allocation(pairs) if reachable else C.Verdict(None, "UDP unreachable")
    preserved = None if x1 is None else x1[1] == udp.locals["map"][1]
    verdicts = {
        "mapping": mapping,
        "filtering": filtering,
        "port_preservation": C.Verdict(preserved, "the primary mapping kept the local port"
                                       if preserved else "the primary mapping changed the local port",
                                       ["map.primary"]),
        "port_allocation": alloc,
        "hairpin": C.classify_hairpin(o) if reachable else C.Verdict(None, "UDP unreachable"),
        "mapping_moves_on_unsolicited": C.classify_unsolicited(o, mapping.value),
    }
    extra = {"mapped_address": _a(x1), "local_address": _a(udp.locals["map"]),
             "port_allocation_delta": alloc.extra.get("delta"),
             "predicted_next_port": alloc.extra.get("predicted_next_port"),
             "port_allocation_confidence": alloc.extra.get("confidence")}
    if lifetime:
        lt = C.classify_lifetime(o, lifetime_schedule(lifetime))
        verdicts["binding_lifetime"] = lt
    elapsed = round((time.monotonic() - t0) * 1000, 3)
    eng = udp.engine
    result = ProbeResult(
        server=server_desc | {"endpoints": ep.as_dict()}, local_ip=udp.local_ip,
        public_ip=x1[0] if x1 else None, nat=nat, elapsed_ms=elapsed, udp_reachable=reachable,
        udp=verdicts, udp_extra=extra, tcp_ran=tcp_ran, layers=layers,
        probes=[x.as_dict() for x in udp.engine.outcomes],
        timings={"udp_ms": round((udp.finished - udp.started) * 1000, 3),
                 "tcp_ms": tcp.elapsed_ms if tcp else None,
                 "srtt_ms": None if eng.srtt is None else round(eng.srtt * 1000, 3),
                 "rto_ms": round(eng.rto * 1000, 3), "loss_estimate": round(eng.loss_estimate, 3),
                 "attempts_for_no_reply": eng.attempts_needed(), "packets": dict(eng.stats)})
    if tcp_ran:
        _add_tcp(result, tcp)
    return result


def _add_tcp(result: ProbeResult, tcp: TcpRun | None) -> None:
    if tcp is None:
        why = "the TCP tests did not complete"
        for name in ("mapping", "filtering", "unsolicited_syn", "simultaneous_open", "port_preservation"):
            result.tcp[name] = C.Verdict(None, why)
        return
    local = tcp.local_map
    mapping = classify_tcp_mapping(local, tcp.mapped) if local else C.Verdict(None, "not run")
    if tcp.assist is None and tcp.assist_error:
        filt = syn = C.Verdict(None, tcp.assist_error)
    else:
        filt, syn = classify_tcp_filtering(tcp.assist)
    x1 = tcp.mapped.get("primary")
    preserved = None if x1 is None or local is None else x1[1] == local[1]
    result.tcp = {
        "mapping": mapping,
        "port_preservation": C.Verdict(preserved, "STUN over TCP from the mapping test's local port",
                                       ["tcp.map.primary"]),
        "filtering": filt,
        "unsolicited_syn": syn,
        "simultaneous_open": tcp.simopen_verdict if getattr(tcp, "simopen_verdict", None)
        else C.Verdict(None, "not tested"),
    }
    result.tcp_extra = {"mapped_address": _a(x1), "local_address": _a(local),
                        "errors": tcp.errors, "accepted": tcp.accepted}
