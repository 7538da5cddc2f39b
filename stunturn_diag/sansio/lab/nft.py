"""Pure compiler from a :class:`NatSpec` to an nftables ruleset (text for ``nft -f -``).

Building blocks (all in one table ``ip stunturn_lab`` of the NAT box's namespace):

- mapping: ``masquerade`` (RFC 4787 EIM with port preservation while the port is free),
  ``masquerade random`` (APDM, random port per conntrack entry), ``numgen inc`` through a
  map counter -> port (APDM, sequential ports), or a dynamic map
  ``(proto, inner addr, inner port) -> public port`` learnt after the first sequential
  allocation (EIM without port preservation).
- filtering: conntrack alone gives address-and-port-dependent filtering; a dynamic map
  ``(proto, public port) -> inner addr . port`` learnt from ``ct reply proto-dst`` of
  outbound packets feeds a prerouting DNAT for inbound packets without a conntrack
  entry (endpoint-independent filtering), optionally gated by a dynamic set of
  ``(proto, public port, remote addr)`` permits (address-dependent filtering).
- hairpinning (RFC 4787 section 6): the same map DNATs LAN packets sent to the WAN
  address, and a SNAT to the WAN address makes the source the sender's mapping.
- loss: ``numgen random mod 100 < N drop`` (the kernel here has no sch_netem).

nftables finding: ``snat to ADDR : numgen inc mod N offset BASE`` is accepted but the
counter is used in host byte order as a port in network order (ports come out
byte-swapped), so sequential ports go through an anonymous map counter -> port.
"""

from __future__ import annotations

from stunturn_diag.behaviour import Filtering, Mapping, PortAllocation, UnsolicitedSyn
from stunturn_diag.sansio.lab.nat import NatSpec

TABLE = "stunturn_lab"
WAN = "wan0"
LAN = "lan0"
SEQ_BASE = 20000
#: the sequential pool (20000..28191): at 500 flows/s it wraps every 16 s, not within
#: one test (1024 ports wrapped every 2 s, so a 1.5 s wait crossed a wrap half the time)
SEQ_SIZE = 8192


def _seq_map() -> str:
    return "{ " + ", ".join(f"{i} : {SEQ_BASE + i}" for i in range(SEQ_SIZE)) + " }"


def ruleset(nat: NatSpec, wan_ip: str, lan_net: str) -> str:
    """The nftables ruleset for one NAT box (pure).

    ``wan_ip``: the box's WAN address; ``lan_net``: its LAN prefix ("192.168.1.0/24").
    """
    sets: list[str] = []
    pre: list[str] = []
    post: list[str] = []
    learn: list[str] = []
    inp: list[str] = []
    fwd: list[str] = []
    tout = f"timeout {nat.udp_timeout}s"
    l4 = "meta l4proto { tcp, udp }"

    if nat.nat:
        cone = nat.filtering is not Filtering.ADDRESS_AND_PORT_DEPENDENT or nat.hairpin
        if cone:
            sets.append("map cone { type inet_proto . inet_service : ipv4_addr . inet_service; "
                        f"flags dynamic,timeout; {tout}; }}")
            learn.append(f'oifname "{WAN}" ct direction original {l4} update @cone '
                         "{ meta l4proto . ct reply proto-dst : "
                         "ct original ip saddr . ct original proto-src }")
            learn.append(f'oifname "{WAN}" ct direction reply ct status dnat {l4} update @cone '
                         "{ meta l4proto . ct original proto-dst : "
                         "ct reply ip saddr . ct reply proto-src }")
        if nat.filtering is Filtering.ENDPOINT_INDEPENDENT:
            pre.append(f'iifname "{WAN}" {l4} dnat ip to meta l4proto . th dport map @cone')
        elif nat.filtering is Filtering.ADDRESS_DEPENDENT:
            sets.append("set permit { type inet_proto . inet_service . ipv4_addr; "
                        f"flags dynamic,timeout; {tout}; }}")
            learn.append(f'oifname "{WAN}" ct direction original {l4} update @permit '
                         "{ meta l4proto . ct reply proto-dst . ip daddr }")
            learn.append(f'oifname "{WAN}" ct direction reply ct status dnat {l4} update @permit '
                         "{ meta l4proto . ct original proto-dst . ip daddr }")
            pre.append(f'iifname "{WAN}" {l4} meta l4proto . th dport . ip saddr @permit '
                       "dnat ip to meta l4proto . th dport map @cone")
        if nat.hairpin:
            pre.append(f'iifname "{LAN}" ip daddr {wan_ip} {l4} '
                       "dnat ip to meta l4proto . th dport map @cone")
            post.append(f'oifname "{LAN}" ip saddr {lan_net} ct status dnat snat ip to {wan_ip}')
        post.extend(_mapping_rules(nat, wan_ip, sets, learn))
        if nat.input_firewall:
            inp.append(f'iifname "{WAN}" ct state established,related accept')
            inp.append(f'iifname "{WAN}" icmp type echo-request accept')
            if nat.tcp_unsolicited is UnsolicitedSyn.RST:
                inp.append(f'iifname "{WAN}" meta l4proto tcp reject with tcp reset')
            elif nat.tcp_unsolicited is UnsolicitedSyn.ICMP:
                inp.append(f'iifname "{WAN}" meta l4proto tcp '
                           "reject with icmp type port-unreachable")
            inp.append(f'iifname "{WAN}" drop')
    if nat.udp_blocked:
        fwd.append(f'iifname "{WAN}" meta l4proto udp drop')
        fwd.append(f'oifname "{WAN}" meta l4proto udp drop')
    if nat.loss_percent:
        fwd.append(f'iifname "{WAN}" numgen random mod 100 < {nat.loss_percent} drop')
        fwd.append(f'oifname "{WAN}" numgen random mod 100 < {nat.loss_percent} drop')

    out = [f"table ip {TABLE} {{"]
    out += [f"  {s}" for s in sets]
    for name, hook, prio, rules in (("prerouting", "type nat hook prerouting", "dstnat", pre),
                                    ("postrouting", "type nat hook postrouting", "srcnat", post),
                                    ("learn", "type filter hook postrouting", "srcnat + 10", learn),
                                    ("input", "type filter hook input", "filter", inp),
                                    ("forward", "type filter hook forward", "filter", fwd)):
        if not rules:
            continue
        out.append(f"  chain {name} {{")
        out.append(f"    {hook} priority {prio}; policy accept;")
        out += [f"    {r}" for r in rules]
        out.append("  }")
    out.append("}")
    return "\n".join(out) + "\n"


def _mapping_rules(nat: NatSpec, wan_ip: str, sets: list[str], learn: list[str]) -> list[str]:
    """Postrouting SNAT rules for the mapping behaviour (RFC 4787 section 4.1)."""
    l4 = "meta l4proto { tcp, udp }"
    masquerade = f'oifname "{WAN}" masquerade'
    if nat.port_allocation is PortAllocation.PRESERVING:
        return [masquerade]
    if nat.port_allocation is PortAllocation.RANDOM:
        allocate = [f'oifname "{WAN}" masquerade random']
    else:   # SEQUENTIAL (TCP/UDP); masquerade takes the other protocols
        allocate = [f'oifname "{WAN}" {l4} snat ip to {wan_ip} : numgen inc mod {SEQ_SIZE} '
                    f"map {_seq_map()}", masquerade]
    if nat.mapping is Mapping.ENDPOINT_INDEPENDENT:
        return [_eim_lookup(nat, wan_ip, sets, learn), *allocate]
    return allocate


def _eim_lookup(nat: NatSpec, wan_ip: str, sets: list[str], learn: list[str]) -> str:
    """EIM without port preservation: a dynamic map (proto, inner addr, inner port) ->
    public port, learnt from the first allocation and looked up before allocating."""
    l4 = "meta l4proto { tcp, udp }"
    sets.append("map eim { type inet_proto . ipv4_addr . inet_service : inet_service; "
                f"flags dynamic,timeout; timeout {nat.udp_timeout}s; }}")
    learn.append(f'oifname "{WAN}" ct direction original {l4} update @eim '
                 "{ meta l4proto . ct original ip saddr . ct original proto-src : "
                 "ct reply proto-dst }")
    return f'oifname "{WAN}" {l4} snat ip to {wan_ip} : meta l4proto . ip saddr . th sport map @eim'
