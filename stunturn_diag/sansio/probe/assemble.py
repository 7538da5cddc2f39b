"""Turn the runners' raw evidence into a :class:`ProbeResult` (pure: no I/O, no clock; the
caller passes the elapsed time in)."""

from __future__ import annotations

from stunturn_diag.sansio.probe import classify as C
from stunturn_diag.sansio.netaddr import Address
from stunturn_diag.sansio.probe.endpoints import Endpoints, addr_dict
from stunturn_diag.sansio.probe.evidence import TcpEvidence, UdpEvidence
from stunturn_diag.sansio.probe.hops import analyse_hops
from stunturn_diag.sansio.probe import names
from stunturn_diag.sansio.probe.plan import ALLOC_SOCKETS, PUNCH_SKIP_REASON, lifetime_schedule
from stunturn_diag.sansio.probe.result import TCP_EXTRA_KEYS, ProbeResult
from stunturn_diag.sansio.probe.tcp_classify import classify_simopen, classify_tcp_filtering, classify_tcp_mapping


def unreachable(why: str, server_desc: dict, elapsed_ms: float) -> ProbeResult:
    r = ProbeResult(server_desc, None, None, None, elapsed_ms, False)
    r.notes.append(why)
    for name in ("mapping", "filtering", "port_allocation", "hairpin"):
        r.udp[name] = C.Verdict(None, why)
    r.tcp_ran = False
    return r


def _extra(mapped: Address | None, local: Address | None, alloc: C.Verdict) -> dict:
    """The addresses and port-allocation figures reported beside the UDP and the TCP verdicts."""
    return {"mapped_address": addr_dict(mapped), "local_address": addr_dict(local),
            "port_allocation_delta": alloc.extra.get("delta"),
            "predicted_next_port": alloc.extra.get("predicted_next_port"),
            "port_allocation_confidence": alloc.extra.get("confidence")}


def _na(why: str) -> C.Verdict:
    return C.Verdict(None, f"not applicable: {why}", applicable=False)


def build(udp: UdpEvidence, tcp: TcpEvidence | None, tcp_ran: bool, lifetime: float | None,
          server_desc: dict, ep: Endpoints, elapsed_ms: float, layers: dict | None, *,
          left_out: tuple[str, ...] = ()) -> ProbeResult:
    """``elapsed_ms``: the whole probe's time, read by the caller. ``left_out``: UDP verdicts
    not tested on purpose (the punch profile): null, "not tested", and never counted as
    undetermined."""
    o = {x.name: x for x in udp.engine.outcomes}
    x1 = C.mapped(o.get(names.Kind.MAP_PRIMARY))
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
        m = C.mapped(o.get(names.alloc(i)))
        if m is not None:
            pairs.append((udp.locals[f"alloc{i}"], m))
    first = o.get(names.Kind.MAP_PRIMARY)
    unreachable = C.Verdict(None, f"UDP to the STUN server gets no answer (Binding requests to "
                                  f"{C._fmt(ep.primary)}, {first.attempts if first else 0} tries)",
                            [names.Kind.MAP_PRIMARY])
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
            "port_preservation": C.Verdict(preserved, f"local port {udp.locals['map'][1]} was mapped to port "
                                                      f"{x1[1]}", [names.Kind.MAP_PRIMARY]),
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
    for name in left_out:
        verdicts[name] = C.Verdict(None, f"not tested: {PUNCH_SKIP_REASON}")
    extra = _extra(x1, udp.locals["map"], alloc)
    if lifetime:
        verdicts["binding_lifetime"] = C.classify_lifetime(o, lifetime_schedule(lifetime))
    if layers is not None:
        layers = analyse_hops(layers.get("hops", []), layers.get("server_hop"), nat, public_ip, udp.local_ip)
    eng = udp.engine
    result = ProbeResult(
        server=server_desc | {"endpoints": ep.as_dict()}, local_ip=udp.local_ip,
        public_ip=public_ip, nat=nat, elapsed_ms=elapsed_ms, udp_reachable=reachable,
        tcp_reachable=bool(tcp and tcp.reachable),
        udp=verdicts, udp_extra=extra, tcp_ran=tcp_ran, layers=layers,
        probes=[x.as_dict() for x in udp.engine.outcomes],
        timings={"udp_ms": round((udp.finished - udp.started) * 1000, 3),
                 "tcp_ms": tcp.elapsed_ms if tcp else None,
                 "tcp_phases_ms": tcp.phase_ms if tcp else None,
                 "tcp_syn_resends": tcp.syn_resends if tcp else None,
                 "srtt_ms": None if eng.srtt is None or eng.prior_only else round(eng.srtt * 1000, 3),
                 "rtt_prior_ms": None if eng.prior_rtt is None else round(eng.prior_rtt * 1000, 3),
                 "rto_ms": round(eng.rto * 1000, 3), "loss_estimate": round(eng.loss_estimate, 3),
                 "attempts_for_no_reply": eng.attempts_needed(), "packets": dict(eng.stats)},
        left_out=tuple(f"udp.{name}" for name in left_out))
    if tcp_ran:
        _add_tcp(result, tcp)
        so = result.tcp.get("simultaneous_open")
        if not reachable and so is not None and so.value is None and "TTL walk" in so.reason:
            so.reason += (" (UDP does not reach the server from here; the walk over TCP found no router "
                          "between our NAT and the server either)")
    return result


def _add_tcp(result: ProbeResult, tcp: TcpEvidence | None) -> None:
    if tcp is None or not tcp.reachable:
        why = "no STUN answer over TCP from the server"
        for name in ("mapping", "port_preservation", "port_allocation", "filtering", "unsolicited_syn",
                     "simultaneous_open"):
            result.tcp[name] = C.Verdict(None, why)
        result.tcp_extra = dict.fromkeys(TCP_EXTRA_KEYS)
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
        "port_preservation": C.Verdict(preserved, f"local port {local[1]} was mapped to port "
                                                  f"{x1[1] if x1 else '?'} (STUN over TCP)", ["tcp.map.primary"]),
        "port_allocation": alloc,
        "filtering": filt,
        "unsolicited_syn": syn,
        "simultaneous_open": _simopen_verdict(tcp.simopen, mapping.value),
    }
    result.tcp_extra = _extra(x1, local, alloc) | {"errors": tcp.errors, "accepted": tcp.accepted}


def _simopen_verdict(info: dict | None, mapping) -> C.Verdict:
    """The simultaneous-open verdict; when it failed behind a NAT that maps every destination
    to a new port, say that this is why (our SYN opened another port than the one the server
    aimed at), so "no" is not read as "this NAT rejects simultaneous open"."""
    v = classify_simopen(info)
    if v.value is False and mapping in (C.Mapping.ADDRESS_DEPENDENT, C.Mapping.ADDRESS_AND_PORT_DEPENDENT):
        v.reason += (f" - expected: the TCP mapping is {mapping.value}, so our SYN toward the server's "
                     "other endpoint got another public port than the one learned from the primary")
    return v
