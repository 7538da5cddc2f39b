"""Human report of a :class:`ProbeResult`: RFC names, classic label, evidence, and what it means."""

from __future__ import annotations

from stunturn_diag.behaviour import Filtering, Mapping
from stunturn_diag.sansio.probe.result import ProbeResult

_RFC = {
    "mapping": "Mapping behaviour (RFC 4787 4.1, RFC 5780 4.3)",
    "filtering": "Filtering behaviour (RFC 4787 5, RFC 5780 4.4)",
    "port_preservation": "Port preservation (RFC 4787 4.2.1)",
    "port_allocation": "Port allocation across new mappings (RFC 4787 4.2.1)",
    "hairpin": "Hairpinning (RFC 4787 6, RFC 5780 3.4)",
    "mapping_moves_on_unsolicited": "Mapping moves after an unsolicited inbound packet (Linux conntrack "
                                    "port collision)",
    "binding_lifetime": "Binding lifetime (RFC 4787 4.3, RFC 5780 4.6)",
    "unsolicited_syn": "Unsolicited inbound SYN (RFC 5382 4.3)",
    "simultaneous_open": "TCP simultaneous open (RFC 5382 4.2)",
}
_RFC_TCP = {
    "mapping": "Mapping behaviour (RFC 5382 4.1)",
    "filtering": "Filtering behaviour (RFC 5382 4.3)",
    "port_preservation": "Port preservation (RFC 4787 4.2.1 applied to TCP)",
    "port_allocation": "Port allocation across new mappings (RFC 4787 4.2.1 applied to TCP)",
}


def _val(v) -> str:
    if v is None:
        return "undetermined"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, dict) and set(v) == {"min_s", "max_s"}:  # binding lifetime bracket
        return (f"more than {v['min_s']:g} s" + (f", at most {v['max_s']:g} s" if v["max_s"] is not None
                                                else " (never expired within the test)"))
    if isinstance(v, dict):
        return ", ".join(f"{k}={x}" for k, x in v.items())
    return getattr(v, "value", str(v))


def meaning(r: ProbeResult) -> list[str]:
    """Plain-language consequences for direct connectivity."""
    m, f = r.value("udp", "mapping"), r.value("udp", "filtering")
    lines = []
    if not r.udp_reachable:
        lines.append("UDP to the STUN server does not get through: direct UDP is unlikely; use a relay "
                     "(TURN) or TCP.")
    elif m is Mapping.NO_NAT:
        lines.append("You have a public address: " + (
            "anyone can reach you over UDP." if f is Filtering.ENDPOINT_INDEPENDENT else
            "whether unsolicited UDP gets in is unknown (see filtering)." if f is None else
            "a firewall only lets in peers you have sent to first; hole punching works."))
    elif m is Mapping.ENDPOINT_INDEPENDENT:
        if f is Filtering.ENDPOINT_INDEPENDENT:
            lines.append("UDP: any peer that learns your public address can reach you directly.")
        elif f is None:
            lines.append("UDP: your NAT keeps one public port for all destinations (good for hole "
                         "punching); its filtering is unknown.")
        elif f is Filtering.ADDRESS_DEPENDENT:
            lines.append("UDP: peers can reach you directly after you send to them first: hole punching "
                         "works with any peer, even one behind a symmetric NAT (your NAT admits every "
                         "port of an IP you have sent to).")
        else:
            lines.append("UDP: peers can reach you directly after you send to them first: hole punching "
                         "works with peers whose NAT keeps one public port for all destinations; with a "
                         "peer behind a symmetric NAT it needs that NAT's next port predicted, else a "
                         "relay (TURN).")
        if r.value("udp", "mapping_moves_on_unsolicited"):
            lines.append("Careful: a packet from the peer arriving before yours makes this NAT pick a new "
                         "port - send first, or retry punching from a fresh port.")
    elif m in (Mapping.ADDRESS_DEPENDENT, Mapping.ADDRESS_AND_PORT_DEPENDENT):
        alloc = r.value("udp", "port_allocation")
        lines.append("UDP: your NAT uses a new public port per destination (symmetric). Punching works "
                     "only with peers whose NAT keeps one public port and does not filter by port "
                     "(full or restricted cone)"
                     + (", or by predicting the next port (sequential allocation)" if alloc is not None
                        and getattr(alloc, "value", alloc) == "sequential" else "")
                     + "; against another symmetric NAT you need a relay (TURN).")
    if r.value("udp", "hairpin") is False:
        lines.append("Two hosts behind this same NAT cannot reach each other via the public address "
                     "(no hairpinning): use local addresses.")
    if r.tcp_ran:
        tf, so = r.value("tcp", "filtering"), r.value("tcp", "simultaneous_open")
        if tf is Filtering.ENDPOINT_INDEPENDENT:
            lines.append("TCP: inbound connections to your mapped port get through.")
        elif tf is not None:
            lines.append("TCP: unsolicited inbound connections are blocked"
                         + ("; simultaneous open works, so TCP hole punching is possible." if so else
                            "; TCP hole punching needs simultaneous open" +
                            (", which failed here: use UDP or a relay." if so is False else
                             ", which could not be tested here (see above).")))
    return lines


def meaning_both(r: ProbeResult) -> list[str]:
    """:func:`meaning` for each family diagnosed: lines prefixed ``IPv4``/``IPv6`` when
    both were, plus which family suits direct connections better."""
    six = r.ipv6_result
    if six is None or six is r:
        return meaning(r)
    lines = [f"IPv4 {line}" if line.startswith(("UDP", "TCP")) else f"IPv4: {line}" for line in meaning(r)]
    lines += [f"IPv6 {line}" if line.startswith(("UDP", "TCP")) else f"IPv6: {line}" for line in meaning(six)]
    m4, m6 = r.value("udp", "mapping"), six.value("udp", "mapping")
    if m6 in (Mapping.NO_NAT, Mapping.ENDPOINT_INDEPENDENT) and m4 in (
            Mapping.ADDRESS_DEPENDENT, Mapping.ADDRESS_AND_PORT_DEPENDENT):
        lines.append("Direct connections are much easier over IPv6 here (the peer sees the address and "
                     "port you use): prefer IPv6 for hole punching when the peer has IPv6 too.")
    return lines


def _ipv6_section(r: ProbeResult) -> list[str]:
    """The report's IPv6 lines: one line when IPv6 was not diagnosed."""
    v6 = r.ipv6
    if v6 is None or r.ipv6_result is r:
        return []
    if not v6.get("reachable"):
        return ["", f"IPv6: not diagnosed - {v6.get('reason') or 'no answer'}"]
    out = ["", f"IPv6: {v6['verdict']}   public IP: {v6['public_ip']}   local IP: {v6['local_ip']}   "
               f"in {v6['elapsed_ms']:.0f} ms"]
    udp, tcp = v6.get("udp") or {}, v6.get("tcp") or {}
    out.append(f"  UDP: mapping {udp.get('mapping') or 'undetermined'}, filtering "
               f"{udp.get('filtering') or 'undetermined'}"
               + (f", port allocation {udp['port_allocation']}" if udp.get("port_allocation") else ""))
    if tcp.get("reachable") is not None:
        out.append(f"  TCP: mapping {tcp.get('mapping') or 'undetermined'}, filtering "
                   f"{tcp.get('filtering') or 'undetermined'}, unsolicited SYN "
                   f"{tcp.get('unsolicited_syn') or 'undetermined'}")
    out += [f"  undetermined {u['field']}: {u['reason']}" for u in v6.get("undetermined", [])]
    return out


def render(r: ProbeResult) -> str:
    """The report as text."""
    out = []
    if r.status == "unreachable":
        out.append("Could not reach the server: nothing was diagnosed.")
        why = r.notes or sorted({u["reason"] for u in r.undetermined})
        out += [f"  {n}" for n in why]
        out.append(f"status: {r.status}")
        return "\n".join(out)
    nat = "unknown" if r.nat is None else "yes" if r.nat else "no"
    out.append(f"NAT: {nat}   public IP: {r.public_ip}   local IP: {r.local_ip}   "
               f"({r.classic_label})   in {r.elapsed_ms:.0f} ms")
    out.append("")
    if not r.udp_reachable:
        out.append("UDP does not reach the STUN server (no answer); the TCP results follow.")
        out += [f"  {n}" for n in r.notes]
    else:
        out.append("UDP")
        for name, v in r.udp.items():
            out.append(f"  {_RFC.get(name, name)}: {_val(v.value) if v.applicable else 'not applicable'}")
            out.append(f"      {v.reason}")
            if name == "port_allocation" and r.udp_extra.get("predicted_next_port"):
                out.append(f"      next port predicted: {r.udp_extra['predicted_next_port']}")
    if r.tcp_ran and r.tcp:
        out.append("")
        out.append("TCP")
        for name, v in r.tcp.items():
            out.append(f"  {_RFC_TCP.get(name) or _RFC.get(name, name)}: "
                       f"{_val(v.value) if v.applicable else 'not applicable'}")
            out.append(f"      {v.reason}")
    if r.layers and r.layers.get("count"):
        out.append("")
        out.append(f"NAT layers seen: {r.layers['count']}" + (" (carrier-grade NAT)" if r.layers.get("cgnat")
                                                            else "") + f" - {r.layers.get('reason')}")
    pm = r.port_mapping
    if pm is not None:
        offered = [name for key, name in (("pcp", "PCP"), ("nat_pmp", "NAT-PMP"), ("upnp", "UPnP IGD"))
                   if pm.get(key)]
        out.append("")
        out.append("Port mapping on the gateway (PCP RFC 6887, NAT-PMP RFC 6886, UPnP IGD): "
                   + (", ".join(offered) if offered else "none answered")
                   + (f"; external address {pm['external_ip']}" if pm.get("external_ip") else "")
                   + ("; usable (it is the STUN-mapped address)" if pm.get("usable") else
                      "; not usable" if offered else ""))
        out += [f"      {n}" for n in pm.get("notes", [])]
    out += _ipv6_section(r)
    out.append("")
    out.append("What this means")
    out += [f"  - {line}" for line in meaning_both(r)]
    for s in r.skipped:
        out.append(f"skipped {s['test']}: {s['reason']}")
    for f in r.failures:  # a verdict whose test broke is told in its "undetermined" line
        out.append(f"failed {f['test']}: {f['reason']}")
    same: dict[str, list[str]] = {}  # one line per reason
    for u in r.undetermined:
        same.setdefault(u["reason"], []).append(u["field"])
    for reason, fields in same.items():
        out.append(f"undetermined {', '.join(fields)}: {reason}")
    for n in r.notes if r.udp_reachable else []:
        out.append(f"note: {n}")
    out.append(f"status: {r.status}")
    return "\n".join(out)
