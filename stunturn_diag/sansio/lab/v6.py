"""IPv6 in the lab: a site's v6 behaviour as data, its address plan, its nftables ruleset
and its ground truth (all pure; the runner runs the steps like the IPv4 ones).

On IPv6 a home gateway usually does not translate at all; it runs a stateful firewall
that filters like a NAT would (RFC 6092 recommends address-and-port-dependent
filtering, REC-? "endpoint-independent filtering is an option"). Some networks do
translate: NPTv6 (RFC 6296, a 1:1 prefix translation, ports untouched) or NAT66
(a masquerade to the gateway's one WAN address). A site picks one with the NAT token
flags ``+v6=MODE`` and ``+v6-syn=drop|rst`` (``NatSpec.v6``, ``NatSpec.v6_syn``):

========  =========================================================================
``off``   no IPv6 at the site (the default: existing labs are unchanged)
``open``  routed, no filtering (endpoint-independent, unsolicited SYNs reach the host)
``eif``   stateful firewall, endpoint-independent filtering (RFC 4787 5 terms)
``adf``   stateful firewall, address-dependent filtering
``apdf``  stateful firewall, address-and-port-dependent filtering (RFC 6092 default)
``nptv6`` prefix translation (RFC 6296) between an inner and an outer /64, no filter
``nat66`` masquerade to the gateway's WAN address (EIM, ports kept, APDF by conntrack)
========  =========================================================================

``v6_syn``: what an unadmitted inbound TCP SYN gets from the firewall (``eif``/``adf``/
``apdf``) or the NAT66 box: ``drop`` (silently, RFC 6092 REC-? allows either) or ``rst``.

Addresses (documentation prefix 2001:db8::/32, RFC 3849): the server host has
2001:db8:0:100::10 (primary) and ::20 (alternate); site number i (0-based) has its WAN
link 2001:db8:0:(i+1)::/64 (internet ::1, gateway ::2) and its LAN prefix
2001:db8:(i+1)::/64, routed by the internet to the gateway; behind NPTv6 / NAT66 the
LAN uses the inner prefix 2001:db8:f(i+1)::/64 instead, which nobody routes.

The netfilter NPTv6 used here is ``snat/dnat ip6 prefix to`` (the kernel's NETMAP: the
prefix bits are replaced and the transport checksums recomputed, not RFC 6296's
checksum-neutral rewrite of the interface identifier); what a probe sees is the same:
one outer address per inner address, ports unchanged, nothing filtered.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from stunturn_diag.behaviour import Filtering, Mapping, PortAllocation, UnsolicitedSyn
from stunturn_diag.errors import ConfigError

TABLE6 = "stunturn_lab6"
WAN = "wan0"
LAN = "lan0"

SERVER_IP6 = "2001:db8:0:100::10"
SERVER_ALT_IP6 = "2001:db8:0:100::20"
SERVER_GW6 = "2001:db8:0:100::1"

OFF, OPEN, EIF, ADF, APDF, NPTV6, NAT66 = "off", "open", "eif", "adf", "apdf", "nptv6", "nat66"
MODES = (OFF, OPEN, EIF, ADF, APDF, NPTV6, NAT66)
FIREWALLS = {EIF: Filtering.ENDPOINT_INDEPENDENT, ADF: Filtering.ADDRESS_DEPENDENT,
             APDF: Filtering.ADDRESS_AND_PORT_DEPENDENT}
SYN_MODES = ("drop", "rst")


def check(mode: str, syn: str, where: str) -> None:
    """ConfigError for a v6 mode or SYN answer the lab does not know."""
    if mode not in MODES:
        raise ConfigError(f"{where}: v6 {mode!r} is not one of: {', '.join(MODES)}",
                          hint="e.g. port-restricted+v6=apdf")
    if syn not in SYN_MODES:
        raise ConfigError(f"{where}: v6_syn {syn!r} is not one of: {', '.join(SYN_MODES)}",
                          hint="e.g. port-restricted+v6=apdf+v6-syn=rst")


def expected(mode: str, syn: str) -> dict | None:
    """Ground truth over IPv6 seen from a host of the site (probe JSON vocabulary, the
    shape of ``NatSpec.expected`` plus ``reachable``), None when the site has no IPv6.
    The v4 NAT's other settings (loss, UDP blocked) live in its ``table ip`` and do not
    touch IPv6.
    """
    if mode == OFF:
        return None
    if mode in (OPEN, *FIREWALLS):
        filt = FIREWALLS.get(mode, Filtering.ENDPOINT_INDEPENDENT)
        syn_v = (UnsolicitedSyn.PASS.value if filt is Filtering.ENDPOINT_INDEPENDENT else syn)
        udp = {"reachable": True, "mapping": Mapping.NO_NAT.value, "filtering": filt.value,
               "port_allocation": None, "hairpin": None, "mapping_moves_on_unsolicited": None}
        tcp = {"reachable": True, "mapping": Mapping.NO_NAT.value, "filtering": filt.value,
               "unsolicited_syn": syn_v, "port_allocation": None}
        nat = False
    elif mode == NPTV6:
        eim, ei = Mapping.ENDPOINT_INDEPENDENT.value, Filtering.ENDPOINT_INDEPENDENT.value
        # hairpin: a packet to our own outer address leaves (the gateway routes the outer
        # prefix upstream), the internet router sends it back and the translation runs both
        # ways; nothing is allocated, so nothing can collide and move
        udp = {"reachable": True, "mapping": eim, "filtering": ei,
               "port_allocation": PortAllocation.PRESERVING.value, "hairpin": True,
               "mapping_moves_on_unsolicited": False}
        tcp = {"reachable": True, "mapping": eim, "filtering": ei,
               "unsolicited_syn": UnsolicitedSyn.PASS.value,
               "port_allocation": PortAllocation.PRESERVING.value}
        nat = True
    else:   # NAT66: Linux masquerade, as the v4 port-restricted / port-restricted-drop
        eim, apdf = Mapping.ENDPOINT_INDEPENDENT.value, Filtering.ADDRESS_AND_PORT_DEPENDENT.value
        udp = {"reachable": True, "mapping": eim, "filtering": apdf,
               "port_allocation": PortAllocation.PRESERVING.value, "hairpin": False,
               "mapping_moves_on_unsolicited": syn == "rst"}   # no input firewall: collision
        tcp = {"reachable": True, "mapping": eim, "filtering": apdf, "unsolicited_syn": syn,
               "port_allocation": PortAllocation.PRESERVING.value}
        nat = True
    # every v6 behaviour keeps conntrack state: the server's SYN to the 5-tuple our dying SYN
    # opened is that connection's reply (RFC 5382 section 4.2, REQ-2), whatever new SYNs get
    tcp["simultaneous_open"] = True
    return {"reachable": True, "nat": nat, "udp": udp, "tcp": tcp}


# --- address plan -----------------------------------------------------------------------

@dataclass(frozen=True)
class SiteV6:
    """One dual-stack site's IPv6 addresses."""

    mode: str
    syn: str
    timeout: int           # the firewall's learnt-permit lifetime (the NAT's udp_timeout)
    inet_if_ip: str        # the internet router's end of the WAN link
    wan_ip: str            # the gateway's WAN address
    lan_prefix: str        # the prefix the LAN hosts use ("2001:db8:1::/64" or inner)
    outer_prefix: str      # the prefix the internet routes to the gateway
    lan_gateway: str
    hosts: dict[str, str]  # host node -> LAN address
    public_ip: str         # what the internet sees from the site's first host


def site_layout(index: int, mode: str, syn: str, host_names: list[str],
                timeout: int = 30) -> SiteV6:
    """The IPv6 addresses of site number ``index`` (pure)."""
    n = index + 1
    outer = f"2001:db8:{n:x}::"
    inner = f"2001:db8:f{n:x}::" if mode in (NPTV6, NAT66) else outer
    hosts = {host: f"{inner}{0x10 + j:x}" for j, host in enumerate(host_names)}
    first = next(iter(hosts.values()))
    wan_ip = f"2001:db8:0:{n:x}::2"
    if mode == NAT66:
        public = wan_ip
    elif mode == NPTV6:
        public = str(ipaddress.IPv6Address(int(ipaddress.IPv6Address(outer))
                                           | int(ipaddress.IPv6Address(first)) & (2**64 - 1)))
    else:
        public = first
    return SiteV6(mode=mode, syn=syn, timeout=timeout, inet_if_ip=f"2001:db8:0:{n:x}::1", wan_ip=wan_ip,
                  lan_prefix=f"{inner}/64", outer_prefix=f"{outer}/64",
                  lan_gateway=f"{inner}1", hosts=hosts, public_ip=public)


# --- nftables ---------------------------------------------------------------------------

def ruleset(site: SiteV6) -> str | None:
    """The ``table ip6 stunturn_lab6`` of the site's gateway (pure), None for ``open``.

    Firewalls (``eif``/``adf``/``apdf``, forward hook): conntrack admits replies
    (address-and-port-dependent); for ``eif`` a dynamic set of (proto, host addr, host
    port) learnt from outbound packets, for ``adf`` (proto, host addr, host port, remote
    addr), admits new inbound flows too. ICMPv6 echo requests are admitted (RFC 4890);
    ICMPv6 errors arrive as ``ct state related``.
    """
    l4 = "meta l4proto { tcp, udp }"
    tout = f"flags dynamic,timeout; timeout {site.timeout}s;"
    sets: list[str] = []
    chains: list[tuple[str, str, list[str]]] = []
    if site.mode in FIREWALLS:
        fwd = []
        if site.mode == EIF:
            sets.append(f"set eif {{ type inet_proto . ipv6_addr . inet_service; {tout} }}")
            fwd.append(f'oifname "{WAN}" {l4} update @eif {{ meta l4proto . ip6 saddr . th sport }}')
        elif site.mode == ADF:
            sets.append(f"set adf {{ type inet_proto . ipv6_addr . inet_service . ipv6_addr; {tout} }}")
            fwd.append(f'oifname "{WAN}" {l4} update @adf '
                       "{ meta l4proto . ip6 saddr . th sport . ip6 daddr }")
        fwd += ["ct state established,related accept",
                f'oifname "{WAN}" accept',
                f'iifname "{WAN}" icmpv6 type echo-request accept']
        if site.mode == EIF:
            fwd.append(f'iifname "{WAN}" {l4} meta l4proto . ip6 daddr . th dport @eif accept')
        elif site.mode == ADF:
            fwd.append(f'iifname "{WAN}" {l4} meta l4proto . ip6 daddr . th dport . ip6 saddr '
                       "@adf accept")
        if site.syn == "rst":
            fwd.append(f'iifname "{WAN}" meta l4proto tcp reject with tcp reset')
        fwd.append(f'iifname "{WAN}" drop')
        chains.append(("forward", "type filter hook forward priority filter", fwd))
    elif site.mode == NPTV6:
        chains.append(("prerouting", "type nat hook prerouting priority dstnat",
                       [f'iifname "{WAN}" ip6 daddr {site.outer_prefix} '
                        f"dnat ip6 prefix to {site.lan_prefix}"]))
        chains.append(("postrouting", "type nat hook postrouting priority srcnat",
                       [f'oifname "{WAN}" ip6 saddr {site.lan_prefix} '
                        f"snat ip6 prefix to {site.outer_prefix}"]))
    elif site.mode == NAT66:
        chains.append(("postrouting", "type nat hook postrouting priority srcnat",
                       [f'oifname "{WAN}" masquerade']))
        if site.syn == "drop":   # a firewall on the box itself; neighbour discovery stays
            chains.append(("input", "type filter hook input priority filter", [
                f'iifname "{WAN}" ct state established,related accept',
                f'iifname "{WAN}" meta l4proto ipv6-icmp accept',
                f'iifname "{WAN}" drop']))
    if not chains:
        return None
    out = [f"table ip6 {TABLE6} {{"] + [f"  {s}" for s in sets]
    for name, hook, rules in chains:
        out += [f"  chain {name} {{", f"    {hook}; policy accept;"]
        out += [f"    {r}" for r in rules]
        out.append("  }")
    out.append("}")
    return "\n".join(out) + "\n"


# --- build steps ------------------------------------------------------------------------

def plan_sites(spec, topo) -> dict[str, SiteV6]:
    """The dual-stack sites of a lab (``NatSpec.v6`` not ``off``) and their addresses."""
    out = {}
    for name, site in spec.sites.items():
        if site.nat.v6 != OFF:
            layout = topo.sites[name]
            out[name] = site_layout(layout.index, site.nat.v6, site.nat.v6_syn,
                                    list(layout.hosts), site.nat.udp_timeout)
    return out


def setup_argvs(topo, sites_v6: dict[str, SiteV6]) -> list[tuple[list[str], str | None]]:
    """(argv, stdin) of every IPv6 step, run after the IPv4 links exist (pure). ``topo``
    is the lab's :class:`~stunturn_diag.sansio.lab.topology.Topology`; the link names are the
    IPv4 compiler's (srv0 / s-NAME on the internet router, wan0 / lan0 / eth0).
    Addresses are added ``nodad`` (no duplicate address detection wait)."""
    from stunturn_diag.sansio.lab.topology import INET, SERVER

    steps: list[tuple[list[str], str | None]] = []
    if not sites_v6:
        return steps

    def ip(node: str, *args: str) -> None:
        steps.append((["ip", "-n", topo.netns(node), *args], None))

    def forwarding(node: str) -> None:
        steps.append((["ip", "netns", "exec", topo.netns(node), "sysctl", "-q", "-w",
                       "net.ipv6.conf.all.forwarding=1"], None))

    forwarding(INET)
    ip(INET, "addr", "add", f"{SERVER_GW6}/64", "dev", "srv0", "nodad")
    for addr in (SERVER_IP6, SERVER_ALT_IP6):
        ip(SERVER, "addr", "add", f"{addr}/64", "dev", "eth0", "nodad")
    ip(SERVER, "-6", "route", "add", "default", "via", SERVER_GW6)
    for name, v6 in sites_v6.items():
        nat = topo.sites[name].nat_node
        forwarding(nat)
        ip(INET, "addr", "add", f"{v6.inet_if_ip}/64", "dev", f"s-{name}", "nodad")
        ip(INET, "-6", "route", "add", v6.outer_prefix, "via", v6.wan_ip)
        ip(nat, "addr", "add", f"{v6.wan_ip}/64", "dev", WAN, "nodad")
        ip(nat, "-6", "route", "add", "default", "via", v6.inet_if_ip)
        ip(nat, "addr", "add", f"{v6.lan_gateway}/64", "dev", LAN, "nodad")
        for host, addr in v6.hosts.items():
            ip(host, "addr", "add", f"{addr}/64", "dev", "eth0", "nodad")
            ip(host, "-6", "route", "add", "default", "via", v6.lan_gateway)
        text = ruleset(v6)
        if text is not None:
            steps.append((["ip", "netns", "exec", topo.netns(nat), "nft", "-f", "-"], text))
    return steps


#: one lab NAT type per IPv6 behaviour (the v4 side is plain masquerade), in the NAT
#: token syntax; netns_tests/test_probe_v6.py probes each and compares with ``expected``
V6_CATALOGUE = {
    "v6-open": "port-restricted+v6=open",
    "v6-eif": "port-restricted+v6=eif",
    "v6-adf": "port-restricted+v6=adf",
    "v6-apdf": "port-restricted+v6=apdf",
    "v6-apdf-rst": "port-restricted+v6=apdf+v6-syn=rst",
    "v6-nptv6": "port-restricted+v6=nptv6",
    "v6-nat66": "port-restricted+v6=nat66",
    "v6-nat66-rst": "port-restricted+v6=nat66+v6-syn=rst",
}
