"""The NAT catalogue: named NatSpecs with documented ground truth (``.expected``).

Every entry is verified empirically by ``netns_tests/test_lab_catalogue.py``.
"""

from __future__ import annotations

from dataclasses import replace

from stunturn_diag.behaviour import Filtering, Mapping, PortAllocation, UnsolicitedSyn
from stunturn_diag.errors import ConfigError
from stunturn_diag.sansio.lab.nat import NatSpec

EIM = Mapping.ENDPOINT_INDEPENDENT
APDM = Mapping.ADDRESS_AND_PORT_DEPENDENT

_PUBLIC = NatSpec("public", "no NAT: a plain router, the host has a public address",
                  mapping=Mapping.NO_NAT, filtering=Filtering.ENDPOINT_INDEPENDENT,
                  tcp_unsolicited=UnsolicitedSyn.RST)
_FULL_CONE = NatSpec("full-cone", "EIM + endpoint-independent filtering (full cone), "
                     "hairpinning, unadmitted inbound dropped",
                     mapping=EIM, filtering=Filtering.ENDPOINT_INDEPENDENT, hairpin=True,
                     input_firewall=True, tcp_unsolicited=UnsolicitedSyn.DROP)
_RESTRICTED = NatSpec("restricted-cone", "EIM + address-dependent filtering (restricted "
                      "cone), hairpinning, unadmitted inbound dropped",
                      mapping=EIM, filtering=Filtering.ADDRESS_DEPENDENT, hairpin=True,
                      input_firewall=True, tcp_unsolicited=UnsolicitedSyn.DROP)
_PORT_RESTRICTED = NatSpec("port-restricted", "plain Linux masquerade: EIM (port kept "
                           "unless taken) + address-and-port-dependent filtering; no "
                           "firewall, so the box answers SYNs with RST and an unsolicited "
                           "packet arriving first moves the mapping (conntrack collision)")
_SYM_RANDOM = NatSpec("symmetric-random", "APDM with a random port per mapping "
                      "(masquerade random), unadmitted inbound dropped",
                      mapping=APDM, port_allocation=PortAllocation.RANDOM,
                      input_firewall=True, tcp_unsolicited=UnsolicitedSyn.DROP)
_SYM_SEQ = NatSpec("symmetric-sequential", "APDM with ports handed out in order "
                   "(20000, 20001, ...), unadmitted inbound dropped",
                   mapping=APDM, port_allocation=PortAllocation.SEQUENTIAL,
                   input_firewall=True, tcp_unsolicited=UnsolicitedSyn.DROP)
_EIM_NO_PRES = NatSpec("eim-no-preservation", "EIM, but the mapped port is never the "
                       "local port (sequential from 20000) + address-and-port-dependent "
                       "filtering, unadmitted inbound dropped",
                       mapping=EIM, port_allocation=PortAllocation.SEQUENTIAL,
                       input_firewall=True, tcp_unsolicited=UnsolicitedSyn.DROP)


def _variant(base: NatSpec, name: str, description: str, **changes) -> NatSpec:
    return replace(base, name=name, description=description, **changes)


CATALOGUE: dict[str, NatSpec] = {n.name: n for n in (
    _PUBLIC, _FULL_CONE, _RESTRICTED, _PORT_RESTRICTED, _SYM_RANDOM, _SYM_SEQ, _EIM_NO_PRES,
    _variant(_FULL_CONE, "full-cone-no-hairpin", "full cone without hairpinning",
             hairpin=False),
    _variant(_RESTRICTED, "restricted-cone-rst", "restricted cone answering unadmitted "
             "SYNs with RST", tcp_unsolicited=UnsolicitedSyn.RST),
    _variant(_PORT_RESTRICTED, "port-restricted-hairpin", "plain masquerade plus "
             "hairpinning", hairpin=True),
    _variant(_PORT_RESTRICTED, "port-restricted-drop", "masquerade behind a firewall that "
             "silently drops unadmitted inbound (no conntrack collision)",
             input_firewall=True, tcp_unsolicited=UnsolicitedSyn.DROP),
    _variant(_PORT_RESTRICTED, "port-restricted-icmp", "masquerade behind a firewall that "
             "answers unadmitted SYNs with ICMP port unreachable and drops other unadmitted "
             "inbound", input_firewall=True, tcp_unsolicited=UnsolicitedSyn.ICMP),
    _variant(_PORT_RESTRICTED, "udp-blocked", "masquerade that drops every UDP packet",
             udp_blocked=True),
    _variant(_FULL_CONE, "lossy", "full cone losing 10% of forwarded packets each way",
             loss_percent=10),
)}


def lookup(name: str) -> NatSpec:
    """The catalogue entry called ``name`` (ConfigError naming the choices if unknown)."""
    try:
        return CATALOGUE[name]
    except KeyError:
        raise ConfigError(f"unknown NAT type {name!r}",
                          hint=f"choose one of: {', '.join(CATALOGUE)}") from None
