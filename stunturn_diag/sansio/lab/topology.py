"""Pure address plan of a lab: node names, namespace names, links and addresses.

Addresses come from documentation ranges and repeat in every lab (each lab lives in
its own namespaces, so that is safe): the server host has 198.51.100.10 (primary)
and 198.51.100.20 (alternate); site number i (0-based) has WAN 203.0.113.(16i+2),
a NATed LAN 192.168.(i+1).0/24 or, for a public site, 192.0.2.(32i)/27; a CGNAT
layer puts the site NAT's WAN at 100.64.(i+1).2 (RFC 6598 shared space).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stunturn_diag.sansio.lab.spec import LabSpec

INET = "inet"
SERVER = "srv"
SERVER_IP = "198.51.100.10"
SERVER_ALT_IP = "198.51.100.20"
SERVER_GW = "198.51.100.1"
SERVER_PREFIXLEN = 24


@dataclass(frozen=True)
class SiteLayout:
    """Where one site lives."""

    name: str
    index: int
    nat_node: str              # the site's NAT box ("nat-a")
    cgnat_node: str | None     # the carrier-grade NAT ("cgn-a") or None
    public_ip: str             # the address the internet sees (outermost NAT WAN, or host)
    nat_wan_ip: str            # the site NAT's WAN address (100.64.x.2 behind a CGNAT)
    lan_gateway: str           # the site NAT's LAN address
    lan_prefixlen: int
    hosts: dict[str, str]      # host node -> LAN address
    public_lan: bool           # True when the site NAT does not translate


@dataclass(frozen=True)
class Topology:
    """All nodes of a lab; namespaces are ``f"{prefix}-{node}"``."""

    prefix: str
    sites: dict[str, SiteLayout]
    nodes: list[str] = field(default_factory=list)

    def netns(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    @property
    def hosts(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for site in self.sites.values():
            out.update(site.hosts)
        return out

    def site_of(self, host: str) -> str:
        for site in self.sites.values():
            if host in site.hosts:
                return site.name
        raise KeyError(host)


def plan(spec: LabSpec, prefix: str) -> Topology:
    """Lay out ``spec`` under namespace prefix ``prefix`` (pure)."""
    sites: dict[str, SiteLayout] = {}
    nodes = [INET, SERVER]
    for index, (name, site) in enumerate(spec.sites.items()):
        wan_public = f"203.0.113.{16 * index + 2}"
        public_lan = not site.nat.nat
        if public_lan:
            base = 32 * index
            gateway, prefixlen = f"192.0.2.{base + 1}", 27
            hosts = {f"{name}{j + 1}": f"192.0.2.{base + 10 + j}" for j in range(site.hosts)}
        else:
            gateway, prefixlen = f"192.168.{index + 1}.1", 24
            hosts = {f"{name}{j + 1}": f"192.168.{index + 1}.{10 + j}" for j in range(site.hosts)}
        cgnat_node = f"cgn-{name}" if site.cgnat else None
        nat_wan = f"100.64.{index + 1}.2" if site.cgnat else wan_public
        if public_lan and not site.cgnat:
            public_ip = next(iter(hosts.values()))
        else:
            public_ip = wan_public
        sites[name] = SiteLayout(name=name, index=index, nat_node=f"nat-{name}",
                                 cgnat_node=cgnat_node, public_ip=public_ip,
                                 nat_wan_ip=nat_wan, lan_gateway=gateway,
                                 lan_prefixlen=prefixlen, hosts=hosts, public_lan=public_lan)
        if cgnat_node:
            nodes.append(cgnat_node)
        nodes.append(f"nat-{name}")
        nodes.extend(hosts)
    return Topology(prefix=prefix, sites=sites, nodes=nodes)
