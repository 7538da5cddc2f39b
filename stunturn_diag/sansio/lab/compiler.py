"""Pure compiler: a :class:`LabSpec` plus a namespace prefix -> the commands that build it.

Output is data only (:class:`LabPlan`): ``ip`` / ``sysctl`` argv lists and nftables
ruleset texts, run in order by :mod:`stunturn_diag.lab.runner`. Every command acts
on a namespace of the lab (``ip netns add``, ``ip -n NS ...``, ``ip netns exec NS ...``);
veth pairs are created inside one lab namespace with the peer placed directly in
another, so nothing ever touches the host's own namespace, routes or firewall.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from stunturn_diag.sansio.lab import nft, v6
from stunturn_diag.sansio.lab.spec import LabSpec
from stunturn_diag.sansio.lab.topology import (INET, SERVER, SERVER_ALT_IP, SERVER_GW, SERVER_IP, SERVER_PREFIXLEN,
                       Topology, plan)


@dataclass(frozen=True)
class Step:
    """One command; ``stdin`` is fed to it (nft rulesets)."""

    argv: list[str]
    stdin: str | None = None
    optional: bool = False     # failure is fine (e.g. a sysctl of a module not loaded)


@dataclass
class LabPlan:
    """Everything needed to build and tear down one lab."""

    topology: Topology
    setup: list[Step] = field(default_factory=list)
    teardown: list[Step] = field(default_factory=list)
    rulesets: dict[str, str] = field(default_factory=dict)   # node -> nft text


class _Builder:
    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.steps: list[Step] = []

    def ns(self, node: str) -> str:
        return self.topo.netns(node)

    def ip(self, node: str, *args: str) -> None:
        self.steps.append(Step(["ip", "-n", self.ns(node), *args]))

    def sysctl(self, node: str, key: str, value: str | int, optional: bool = False) -> None:
        self.steps.append(Step(["ip", "netns", "exec", self.ns(node),
                                "sysctl", "-q", "-w", f"{key}={value}"], optional=optional))

    def veth(self, a: str, if_a: str, b: str, if_b: str) -> None:
        self.ip(a, "link", "add", if_a, "type", "veth", "peer", "name", if_b,
                "netns", self.ns(b))

    def addr(self, node: str, dev: str, cidr: str) -> None:
        self.ip(node, "addr", "add", cidr, "dev", dev)

    def up(self, node: str, dev: str) -> None:
        self.ip(node, "link", "set", dev, "up")

    def route(self, node: str, dest: str, via: str) -> None:
        self.ip(node, "route", "add", dest, "via", via)


def _router_sysctls(b: _Builder, node: str) -> None:
    b.sysctl(node, "net.ipv4.ip_forward", 1)
    b.sysctl(node, "net.ipv4.conf.all.rp_filter", 0)
    b.sysctl(node, "net.ipv4.conf.default.rp_filter", 0)


def compile_lab(spec: LabSpec, prefix: str) -> LabPlan:
    """Compile ``spec`` into build and teardown steps for namespaces ``{prefix}-{node}``."""
    topo = plan(spec, prefix)
    b = _Builder(topo)
    rulesets: dict[str, str] = {}
    for node in topo.nodes:
        b.steps.append(Step(["ip", "netns", "add", b.ns(node)]))
        b.up(node, "lo")
    # internet router <-> server host (two public addresses, RFC 5780)
    _router_sysctls(b, INET)
    b.veth(INET, "srv0", SERVER, "eth0")
    b.addr(INET, "srv0", f"{SERVER_GW}/{SERVER_PREFIXLEN}")
    b.up(INET, "srv0")
    b.addr(SERVER, "eth0", f"{SERVER_IP}/{SERVER_PREFIXLEN}")
    b.addr(SERVER, "eth0", f"{SERVER_ALT_IP}/{SERVER_PREFIXLEN}")
    b.up(SERVER, "eth0")
    b.ip(SERVER, "route", "add", "default", "via", SERVER_GW)

    for name, layout in topo.sites.items():
        site = spec.sites[name]
        i = layout.index
        wan_gw = f"203.0.113.{16 * i + 1}"
        wan_public = f"203.0.113.{16 * i + 2}"
        lan_net = str(ipaddress.ip_network(f"{layout.lan_gateway}/{layout.lan_prefixlen}",
                                           strict=False))
        inet_if = f"s-{name}"
        edge = layout.cgnat_node or layout.nat_node     # the node on the internet
        b.veth(INET, inet_if, edge, "wan0")
        b.addr(INET, inet_if, f"{wan_gw}/28")
        b.up(INET, inet_if)
        b.addr(edge, "wan0", f"{wan_public}/28")
        b.up(edge, "wan0")
        b.ip(edge, "route", "add", "default", "via", wan_gw)
        if layout.public_lan and not layout.cgnat_node:
            b.route(INET, lan_net, wan_public)
        if layout.cgnat_node:
            cgn = layout.cgnat_node
            _router_sysctls(b, cgn)
            cgn_lan_ip = f"100.64.{i + 1}.1"
            b.veth(cgn, "lan0", layout.nat_node, "wan0")
            b.addr(cgn, "lan0", f"{cgn_lan_ip}/24")
            b.up(cgn, "lan0")
            b.addr(layout.nat_node, "wan0", f"{layout.nat_wan_ip}/24")
            b.up(layout.nat_node, "wan0")
            b.ip(layout.nat_node, "route", "add", "default", "via", cgn_lan_ip)
            if layout.public_lan:
                b.route(cgn, lan_net, layout.nat_wan_ip)
            rulesets[cgn] = nft.ruleset(site.cgnat, wan_public, f"100.64.{i + 1}.0/24")
        nat = layout.nat_node
        _router_sysctls(b, nat)
        b.ip(nat, "link", "add", "lan0", "type", "bridge")
        # with br_netfilter loaded, bridged frames would cross the IP hooks and a
        # hairpin DNAT back to the same bridge port would be dropped
        b.sysctl(nat, "net.bridge.bridge-nf-call-iptables", 0, optional=True)
        b.addr(nat, "lan0", f"{layout.lan_gateway}/{layout.lan_prefixlen}")
        b.up(nat, "lan0")
        for j, (host, host_ip) in enumerate(layout.hosts.items()):
            port = f"h{j + 1}"
            b.veth(nat, port, host, "eth0")
            b.ip(nat, "link", "set", port, "master", "lan0")
            b.up(nat, port)
            b.addr(host, "eth0", f"{host_ip}/{layout.lan_prefixlen}")
            b.up(host, "eth0")
            b.ip(host, "route", "add", "default", "via", layout.lan_gateway)
        rulesets[nat] = nft.ruleset(site.nat, layout.nat_wan_ip, lan_net)

    # IPv6 of the dual-stack sites (lab/v6.py: addresses, routes, its own ip6 table)
    b.steps += [Step(argv, stdin=stdin) for argv, stdin in
                v6.setup_argvs(topo, v6.plan_sites(spec, topo))]
    # firewall rules, then conntrack lifetimes (the per-netns sysctls exist once
    # conntrack is in use in that namespace)
    for node, text in rulesets.items():
        b.steps.append(Step(["ip", "netns", "exec", b.ns(node), "nft", "-f", "-"], stdin=text))
    for name, layout in topo.sites.items():
        site = spec.sites[name]
        for node, natspec in ((layout.nat_node, site.nat), (layout.cgnat_node, site.cgnat)):
            if node is None or natspec is None or not natspec.nat:
                continue
            b.sysctl(node, "net.netfilter.nf_conntrack_udp_timeout", natspec.udp_timeout)
            b.sysctl(node, "net.netfilter.nf_conntrack_udp_timeout_stream", natspec.udp_timeout)
            if natspec.tcp_timeout is not None:
                b.sysctl(node, "net.netfilter.nf_conntrack_tcp_timeout_established",
                         natspec.tcp_timeout)
    teardown = [Step(["ip", "netns", "delete", topo.netns(node)])
                for node in reversed(topo.nodes)]
    return LabPlan(topology=topo, setup=b.steps, teardown=teardown, rulesets=rulesets)
