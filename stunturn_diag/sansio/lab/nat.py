"""One NAT's behaviour as data (:class:`NatSpec`) and its ground truth.

A NatSpec describes what a site's NAT box does in RFC 4787 (UDP) / RFC 5382
(TCP) terms; :mod:`stunturn_diag.sansio.lab.nft` turns it into an nftables ruleset and
:attr:`NatSpec.expected` states the behaviour a correct probe must report, in the
probe's ``--json`` vocabulary (:mod:`stunturn_diag.behaviour`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from stunturn_diag.behaviour import Filtering, Mapping, PortAllocation, UnsolicitedSyn
from stunturn_diag.errors import ConfigError


@dataclass(frozen=True)
class NatSpec:
    """A NAT type. Defaults are Linux's plain masquerade (port-restricted cone).

    - ``mapping``: RFC 4787 section 4.1 (``NO_NAT`` = plain router, public host).
    - ``filtering``: RFC 4787 section 5 (inbound from endpoints the host never sent to).
    - ``port_allocation``: RFC 4787 section 4.2.1: ``PRESERVING`` keeps the local port
      when free, ``SEQUENTIAL`` hands out ports 20000, 20001, ... in order, ``RANDOM``
      picks a random port per mapping.
    - ``hairpin``: RFC 4787 section 6 (a host reaches another host's mapping, with its own
      mapped address as source).
    - ``tcp_unsolicited``: RFC 5382 section 7.1, what the NAT does with a SYN its filter
      does not admit: ``DROP`` (silently), ``RST`` or ``ICMP`` (port unreachable).
      DROP and ICMP need ``input_firewall`` (without it the box's own stack sends RST).
    - ``input_firewall``: False = no inbound filter on the NAT box (Linux default): the
      box's own stack answers unadmitted packets (TCP RST, UDP ICMP port unreachable)
      and the unsolicited packet's conntrack entry is kept, so a later outbound packet
      to the same remote endpoint gets a *different* mapped port (port collision).
    - ``udp_blocked``: every forwarded UDP packet is dropped.
    - ``loss_percent``: drop this share of forwarded packets, per direction, at random.
    - ``udp_timeout`` / ``tcp_timeout``: mapping lifetime in seconds (per-netns
      conntrack sysctls ``nf_conntrack_udp_timeout[_stream]`` and
      ``nf_conntrack_tcp_timeout_established``; ``tcp_timeout`` None keeps the kernel's).
    - ``portmap``: the NAT box runs miniupnpd: ``"all"`` (PCP, NAT-PMP, UPnP IGD),
      ``"pcp"`` (PCP and NAT-PMP) or ``"upnp"``; None = no mapping service
      (:mod:`stunturn_diag.sansio.lab.portmap`).
    - ``v6`` / ``v6_syn``: the site's IPv6 behaviour (``off`` = no IPv6, ``open``,
      ``eif``/``adf``/``apdf`` firewalls, ``nptv6``, ``nat66``) and what an unadmitted
      inbound SYN gets there (``drop`` | ``rst``); see :mod:`stunturn_diag.sansio.lab.v6`.
    """

    name: str = "custom"
    description: str = ""
    mapping: Mapping = Mapping.ENDPOINT_INDEPENDENT
    filtering: Filtering = Filtering.ADDRESS_AND_PORT_DEPENDENT
    port_allocation: PortAllocation = PortAllocation.PRESERVING
    hairpin: bool = False
    tcp_unsolicited: UnsolicitedSyn = UnsolicitedSyn.RST
    input_firewall: bool = False
    udp_blocked: bool = False
    loss_percent: int = 0
    udp_timeout: int = 30
    tcp_timeout: int | None = None
    portmap: str | None = None
    v6: str = "off"
    v6_syn: str = "drop"

    def __post_init__(self) -> None:
        for name, kind in (("mapping", Mapping), ("filtering", Filtering),
                           ("port_allocation", PortAllocation),
                           ("tcp_unsolicited", UnsolicitedSyn)):
            value = getattr(self, name)
            if not isinstance(value, kind):
                try:
                    object.__setattr__(self, name, kind(value))
                except ValueError:
                    allowed = ", ".join(m.value for m in kind)
                    raise ConfigError(f"NAT {self.name!r}: {name} {value!r} is not one of: "
                                      f"{allowed}") from None
        self.validate()

    @property
    def nat(self) -> bool:
        """False for a plain router (public host behind it)."""
        return self.mapping is not Mapping.NO_NAT

    def validate(self) -> None:
        """Raise ConfigError on combinations the lab cannot build."""
        where = f"NAT {self.name!r}"
        if self.mapping is Mapping.ADDRESS_DEPENDENT:
            raise ConfigError(f"{where}: address-dependent mapping is not in the lab's repertoire",
                              hint="use endpoint-independent or address-and-port-dependent")
        if not self.nat and (self.filtering is not Filtering.ENDPOINT_INDEPENDENT
                             or self.hairpin):
            raise ConfigError(f"{where}: without NAT (mapping 'no-nat') the router filters "
                              "nothing and has no hairpin",
                              hint="filtering='endpoint-independent', hairpin=false")
        if self.tcp_unsolicited is UnsolicitedSyn.PASS:
            raise ConfigError(f"{where}: tcp_unsolicited must be 'drop', 'rst' or 'icmp'",
                              hint="a SYN passes exactly when the filtering admits it")
        if not self.input_firewall and self.tcp_unsolicited is not UnsolicitedSyn.RST:
            raise ConfigError(f"{where}: without input_firewall the NAT box answers SYNs "
                              "with RST", hint="set tcp_unsolicited='rst' or input_firewall=true")
        if self.mapping is Mapping.ADDRESS_AND_PORT_DEPENDENT and \
                self.port_allocation is PortAllocation.PRESERVING:
            raise ConfigError(f"{where}: an address-and-port-dependent mapping needs "
                              "port_allocation 'random' or 'sequential'")
        if not 0 <= self.loss_percent <= 100:
            raise ConfigError(f"{where}: loss_percent must be 0..100, got {self.loss_percent}")
        if not 1 <= self.udp_timeout <= 86400:
            raise ConfigError(f"{where}: udp_timeout must be 1..86400 seconds")
        if self.tcp_timeout is not None and not 1 <= self.tcp_timeout <= 864000:
            raise ConfigError(f"{where}: tcp_timeout must be 1..864000 seconds")
        from stunturn_diag.sansio.lab.portmap import check as check_portmap
        check_portmap(self)
        from stunturn_diag.sansio.lab.v6 import check as check_v6
        check_v6(self.v6, self.v6_syn, where)

    @property
    def expected(self) -> dict:
        """Ground truth in the probe's JSON vocabulary (None = not applicable).

        ``tcp.unsolicited_syn`` is what happens to a SYN from an endpoint the host never
        contacted, sent to the host's TCP mapping: ``pass`` when the filter admits it
        (endpoint-independent filtering, or no NAT), else ``drop``/``rst``.
        ``udp.mapping_moves_on_unsolicited`` (endpoint-independent mappings only, else
        None): a packet from a new remote endpoint to the host's existing mapping,
        arriving *before* the host's first packet to that endpoint, makes the host's
        packets to that endpoint leave from another port (Linux conntrack keeps the
        unsolicited packet's entry and the masquerade port collides) -- a punching hazard.
        """
        if not self.nat:
            udp = {"reachable": not self.udp_blocked, "mapping": Mapping.NO_NAT.value,
                   "filtering": Filtering.ENDPOINT_INDEPENDENT.value, "port_allocation": None,
                   "hairpin": None, "mapping_moves_on_unsolicited": None}
            tcp = {"reachable": True, "mapping": Mapping.NO_NAT.value,
                   "filtering": Filtering.ENDPOINT_INDEPENDENT.value,
                   "unsolicited_syn": UnsolicitedSyn.PASS.value, "port_allocation": None}
            if self.udp_blocked:
                udp.update(mapping=None, filtering=None)
            return {"nat": False, "udp": udp, "tcp": tcp}
        moves = None
        if self.mapping is Mapping.ENDPOINT_INDEPENDENT:
            moves = (not self.input_firewall
                     and self.port_allocation is PortAllocation.PRESERVING)
        udp = {"reachable": True, "mapping": self.mapping.value,
               "filtering": self.filtering.value,
               "port_allocation": self.port_allocation.value,
               "hairpin": self.hairpin, "mapping_moves_on_unsolicited": moves}
        if self.udp_blocked:
            udp = {key: None for key in udp} | {"reachable": False}
        syn = (UnsolicitedSyn.PASS if self.filtering is Filtering.ENDPOINT_INDEPENDENT
               else self.tcp_unsolicited)
        tcp = {"reachable": True, "mapping": self.mapping.value,
               "filtering": self.filtering.value, "unsolicited_syn": syn.value,
               "port_allocation": self.port_allocation.value}
        return {"nat": True, "udp": udp, "tcp": tcp}

    def to_dict(self) -> dict:
        """JSON-able form (enum values as strings)."""
        out = asdict(self)
        for key, value in out.items():
            if hasattr(value, "value"):
                out[key] = value.value
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "NatSpec":
        """Build from a dict; unknown keys are a ConfigError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown NAT setting(s): {', '.join(unknown)}",
                              hint=f"known: {', '.join(sorted(known))}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"bad NAT settings: {exc}") from None

    def but(self, **changes) -> "NatSpec":
        """A copy with some fields changed (``dataclasses.replace``)."""
        return replace(self, **changes)


_STRICTNESS = [Filtering.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_DEPENDENT,
               Filtering.ADDRESS_AND_PORT_DEPENDENT]


def stacked_expected(inner: NatSpec, outer: NatSpec) -> dict:
    """Ground truth seen from a host behind ``inner`` behind ``outer`` (a CGNAT).

    Mapping is endpoint-independent only if both layers are; filtering is the stricter
    of the two; the port comes from the outer layer unless it preserves ports (then the
    inner layer's allocation shows); an unsolicited SYN meets the outer filter first.
    Hairpinning and "mapping moves on unsolicited" depend on both layers' details and
    are not modelled (None).
    """
    if not inner.nat:
        return outer.expected
    both_eim = (inner.mapping is Mapping.ENDPOINT_INDEPENDENT
                and outer.mapping is Mapping.ENDPOINT_INDEPENDENT)
    mapping = (Mapping.ENDPOINT_INDEPENDENT if both_eim
               else Mapping.ADDRESS_AND_PORT_DEPENDENT).value
    filtering = max(inner.filtering, outer.filtering, key=_STRICTNESS.index).value
    ports = (inner.port_allocation if outer.port_allocation is PortAllocation.PRESERVING
             else outer.port_allocation).value
    if outer.filtering is not Filtering.ENDPOINT_INDEPENDENT:
        syn = outer.tcp_unsolicited.value
    elif inner.filtering is not Filtering.ENDPOINT_INDEPENDENT:
        syn = inner.tcp_unsolicited.value
    else:
        syn = UnsolicitedSyn.PASS.value
    udp = {"reachable": True, "mapping": mapping, "filtering": filtering,
           "port_allocation": ports, "hairpin": None, "mapping_moves_on_unsolicited": None}
    if inner.udp_blocked or outer.udp_blocked:
        udp = {key: None for key in udp} | {"reachable": False}
    tcp = {"reachable": True, "mapping": mapping, "filtering": filtering,
           "unsolicited_syn": syn, "port_allocation": ports}
    return {"nat": True, "udp": udp, "tcp": tcp}
