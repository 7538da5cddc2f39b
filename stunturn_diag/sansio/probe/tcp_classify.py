"""Pure TCP classifier (RFC 5382): mapping from STUN-over-TCP answers, filtering and the
unsolicited-SYN reaction from the server's probe-assist connects."""

from __future__ import annotations

from stunturn_diag.behaviour import Filtering, Mapping, UnsolicitedSyn
from stunturn_diag.sansio.probe.classify import Verdict, _fmt
from stunturn_diag.sansio.netaddr import Address

#: what each connect outcome means for the SYN, in words
_SAID = {"connected": "reached our listener (connected)", "rst": "was refused with a TCP RST",
         "icmp": "was answered with an ICMP error", "timeout": "got no answer at all (silently dropped)"}
_SYN = {"connected": UnsolicitedSyn.PASS, "rst": UnsolicitedSyn.RST, "icmp": UnsolicitedSyn.ICMP,
        "timeout": UnsolicitedSyn.DROP}


def classify_tcp_mapping(local: Address, seen: dict[str, Address | None]) -> Verdict:
    """RFC 5382 section 4.1 via RFC 5780 section 4.3 over TCP: one local port, connections
    to the server's primary / alternate IP / alternate IP+port (``seen`` by role)."""
    x1 = seen.get("primary")
    if x1 is None:
        return Verdict(None, "no STUN answer over TCP from the primary address", ["tcp.map.primary"])
    probes = [f"tcp.map.{r}" for r, a in seen.items() if a is not None]
    detail = ", ".join(f"{r} -> {_fmt(a)}" for r, a in seen.items() if a is not None)
    if x1 == local:
        return Verdict(Mapping.NO_NAT, f"mapped {_fmt(x1)} equals the local address", probes)
    x2, x3, x4 = seen.get("alt-ip"), seen.get("alt-both"), seen.get("alt-port")
    if x4 is not None and x4 != x1:
        return Verdict(Mapping.ADDRESS_AND_PORT_DEPENDENT, f"a new server port got a new mapping ({detail})",
                       probes)
    if x2 is None and x3 is None:
        return Verdict(None, f"no alternate server address answered over TCP ({detail})", probes)
    if x2 is not None and x3 is not None:
        if x1 == x2 == x3:
            return Verdict(Mapping.ENDPOINT_INDEPENDENT, f"same mapping for every server address ({detail})",
                           probes)
        if x2 == x3:
            return Verdict(Mapping.ADDRESS_DEPENDENT, f"new mapping per server IP ({detail})", probes)
        return Verdict(Mapping.ADDRESS_AND_PORT_DEPENDENT, f"new mapping per server IP and port ({detail})",
                       probes)
    only = x2 if x2 is not None else x3
    if only == x1:
        return Verdict(Mapping.ENDPOINT_INDEPENDENT, f"same mapping toward the alternate ({detail})", probes)
    return Verdict(None, f"mapping changed but one alternate did not answer ({detail})", probes)


def classify_tcp_filtering(results: dict[str, dict] | None) -> tuple[Verdict, Verdict]:
    """From ``/v1/probe/tcp-connect`` results by source role: filtering (RFC 5382 section 4.3)
    and what the NAT does with the filtered SYN (section 4.3: drop, RST or ICMP)."""
    if not results:
        why = "the server offers no probe assist (needed to send SYNs from another address)"
        return Verdict(None, why), Verdict(None, why)
    ip, port = results.get("alt-ip"), results.get("alt-port")
    if ip is None or ip.get("outcome") in (None, "unavailable", "error"):
        why = f"the server could not connect from its alternate IP ({(ip or {}).get('reason') or (ip or {}).get('outcome')})"
        return Verdict(None, why, ["tcp.assist"]), Verdict(None, why, ["tcp.assist"])
    out_ip = ip["outcome"]
    out_port = (port or {}).get("outcome")
    syn = Verdict(_SYN.get(out_ip), f"a SYN from the server's other IP to our mapped port {_SAID.get(out_ip, out_ip)}",
                  ["tcp.assist.alt-ip"], extra={"attempts": ip.get("attempts", [])})
    if out_ip == "connected":
        return Verdict(Filtering.ENDPOINT_INDEPENDENT, "a connection from another IP reached us",
                       ["tcp.assist.alt-ip"]), syn
    if out_port == "connected":
        return Verdict(Filtering.ADDRESS_DEPENDENT, f"a connection from the same IP, another port, reached "
                                                    f"us; one from another IP did not ({out_ip})",
                       ["tcp.assist.alt-ip", "tcp.assist.alt-port"]), syn
    if out_port in ("rst", "icmp", "timeout"):
        return Verdict(Filtering.ADDRESS_AND_PORT_DEPENDENT,
                       f"connections from another IP ({out_ip}) and another port ({out_port}) were "
                       f"filtered", ["tcp.assist.alt-ip", "tcp.assist.alt-port"]), syn
    return Verdict(None, f"the same-IP other-port connect failed to run ({out_port})",
                   ["tcp.assist.alt-port"]), syn


def classify_simopen(info: dict | None) -> Verdict:
    """RFC 5382 section 4.2 (simultaneous open): our SYN left through the NAT (dying one hop later), then the
    server's SYN from that endpoint reached our listener through the NAT."""
    if info is None:
        return Verdict(None, "not tested (see skipped)")
    if "error" in info:  # the test should have run but a part of it broke
        return Verdict(None, f"the test failed: {info['error']}", ["tcp.simopen"], failed=True)
    if "skipped" in info:
        return Verdict(None, info["skipped"], ["tcp.simopen"])
    if info.get("connected"):
        return Verdict(True, f"after our SYN (TTL {info['ttl']}) toward {_fmt((info['server_source']['ip'], info['server_source']['port']))} "
                             "the server's SYN from there crossed our NAT and reached us", ["tcp.simopen"], extra={"detail": info})
    return Verdict(False, f"after our SYN (TTL {info['ttl']}) the server's crossing SYN to "
                          f"{_fmt((info['mapped']['ip'], info['mapped']['port']))} never arrived",
                   ["tcp.simopen"], extra={"detail": info})
