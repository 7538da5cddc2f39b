"""The declarative lab description: :class:`LabSpec` of :class:`SiteSpec` s.

A lab always has an "internet" router and a server host with two public IPs
(RFC 5780 section 4.1 needs an alternate address). Each site is a NAT box (WAN on the
internet, LAN behind it) with ``hosts`` LAN hosts; ``cgnat`` puts a second NAT layer
(100.64.0.0/10, RFC 6598) between the site's NAT and the internet. Two peers behind
the same NAT are simply one site with ``hosts=2``.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field

from stunturn_diag.errors import ConfigError
from stunturn_diag.sansio.lab.nat import NatSpec, stacked_expected
from stunturn_diag.sansio.lab.catalogue import lookup

MAX_SITES = 8
MAX_HOSTS = 8
#: most background flows per second a site may ask for, and how long they run at most
MAX_BACKGROUND_RATE = 500.0
MAX_BACKGROUND_S = 3600.0
_SITE_NAME = re.compile(r"^[a-z][a-z0-9]{0,3}$")


def check_keys(data: dict, known, what: str) -> None:
    """ConfigError naming the keys of ``data`` that are not ``known`` (and the known ones)."""
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown {what} setting(s): {', '.join(unknown)}",
                          hint=f"known: {', '.join(known)}")


@dataclass(frozen=True)
class SiteSpec:
    """One site: its NAT, the number of LAN hosts, an optional carrier-grade NAT."""

    nat: NatSpec
    hosts: int = 1
    cgnat: NatSpec | None = None
    #: background traffic: the site's last LAN host opens this many new UDP flows per
    #: second toward the server host for as long as the lab is up (at most
    #: :data:`MAX_BACKGROUND_S`), as other hosts, DNS and check-ins do behind a real
    #: NAT; a sequential NAT's one port counter moves on at that rate. Needs hosts >= 2.
    background_flows_per_s: float = 0.0

    @property
    def expected(self) -> dict:
        """Ground truth seen from a host of this site: the NAT's ``NatSpec.expected``, or
        behind a CGNAT :func:`~stunturn_diag.sansio.lab.nat.stacked_expected`, plus
        ``port_mapping`` (:func:`~stunturn_diag.sansio.lab.portmap.expected`) and ``ipv6``
        (:func:`~stunturn_diag.sansio.lab.v6.expected`, None when the site has no IPv6)."""
        from stunturn_diag.sansio.lab.portmap import expected as portmap_expected
        from stunturn_diag.sansio.lab.v6 import expected as v6_expected

        truth = (stacked_expected(self.nat, self.cgnat) if self.cgnat is not None
                 else self.nat.expected)
        return truth | {"port_mapping": portmap_expected(self.nat, self.cgnat),
                        "ipv6": v6_expected(self.nat.v6, self.nat.v6_syn)}

    def to_dict(self) -> dict:
        return {"nat": self.nat.to_dict(), "hosts": self.hosts,
                "cgnat": self.cgnat.to_dict() if self.cgnat else None,
                "background_flows_per_s": self.background_flows_per_s}

    @property
    def background_host(self) -> int | None:
        """Index (1-based) of the host that sends background flows, None without them."""
        return self.hosts if self.background_flows_per_s else None

    @classmethod
    def from_dict(cls, data: dict | str) -> "SiteSpec":
        """``"full-cone"`` or ``{"nat": "full-cone" | {...}, "hosts": 2, "cgnat": ...}``."""
        if isinstance(data, str):
            return cls(nat=nat_from(data))
        if not isinstance(data, dict):
            raise ConfigError(f"a site must be a NAT name or a table, got {data!r}")
        check_keys(data, ("nat", "hosts", "cgnat", "background_flows_per_s"), "site")
        cgnat = data.get("cgnat")
        return cls(nat=nat_from(data.get("nat", "port-restricted")),
                   hosts=data.get("hosts", 1),
                   background_flows_per_s=data.get("background_flows_per_s", 0.0),
                   cgnat=None if cgnat in (None, False) else nat_from(
                       "port-restricted" if cgnat is True else cgnat))


#: short names of NatSpec fields in the ``TYPE+flag+key=value`` syntax
FLAG_ALIASES = {"loss": "loss_percent", "firewall": "input_firewall", "syn": "tcp_unsolicited"}


def parse_nat_token(token: str) -> dict:
    """``"port-restricted+hairpin+loss=5"`` -> ``{"base": "port-restricted", "hairpin": True,
    "loss_percent": 5}`` (pure; the dict form :func:`nat_from` takes).

    After the catalogue name, each ``+`` part sets a NatSpec field (``-`` or ``_`` in
    names): ``+flag`` is True, ``+no-flag`` False, ``+key=value`` an integer, true/false
    or text; ``loss``, ``firewall`` and ``syn`` are short for ``loss_percent``,
    ``input_firewall`` and ``tcp_unsolicited``.
    """
    base, *parts = token.strip().split("+")
    out: dict = {"base": base}
    for part in parts:
        key, eq, raw = part.partition("=")
        key = key.strip().replace("-", "_")
        if not key:
            raise ConfigError(f"NAT type {token!r}: empty flag after '+'",
                              hint="write TYPE+flag or TYPE+key=value, e.g. full-cone+no-hairpin")
        value: object
        if eq:
            raw = raw.strip()
            value = (int(raw) if re.fullmatch(r"-?\d+", raw) else
                     {"true": True, "false": False}.get(raw.lower(), raw))
        elif key.startswith("no_"):
            key, value = key[3:], False
        else:
            value = True
        out[FLAG_ALIASES.get(key, key)] = value
    return fold_portmap_flags(out)


def fold_portmap_flags(data: dict) -> dict:
    """``+portmap`` / ``+pcp`` / ``+upnp`` -> ``portmap="all" | "pcp" | "upnp"``
    (:mod:`stunturn_diag.sansio.lab.portmap`); ``+portmap=upnp`` is passed through."""
    from stunturn_diag.sansio.lab.portmap import SUFFIXES

    out = dict(data)
    for flag, mode in SUFFIXES.items():
        if out.get(flag) is True:
            del out[flag]
            out["portmap"] = mode
    return out


def nat_from(value: str | dict | NatSpec) -> NatSpec:
    """A NatSpec from a catalogue name (optionally with ``+flag`` s, see
    :func:`parse_nat_token`), a dict (optionally ``{"base": name, ...}``) or itself."""
    if isinstance(value, NatSpec):
        return value
    if isinstance(value, str):
        if "+" in value:
            data = parse_nat_token(value)
            return nat_from(data | {"name": value.strip()})
        return lookup(value)
    if isinstance(value, dict):
        data = dict(value)
        base = data.pop("base", None)
        if base is None:
            return NatSpec.from_dict(data)
        merged = lookup(base).to_dict() | data
        if "name" not in data:
            merged["name"] = f"{base}*"
        return NatSpec.from_dict(merged)
    raise ConfigError(f"a NAT must be a catalogue name or a table, got {value!r}")


def parse_document(text: str, name: str, what: str) -> dict:
    """The table of a TOML document when ``name`` ends in ``.toml``, else the JSON one
    (ConfigError naming ``what`` and ``name``). Reading the file is the caller's
    (:func:`stunturn_diag.lab.files.read_file`)."""
    toml = name.endswith(".toml")
    try:
        return tomllib.loads(text) if toml else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{what} {name} is not valid "
                          f"{'TOML' if toml else 'JSON'}: {exc}") from None


@dataclass(frozen=True)
class LabSpec:
    """The whole lab: sites by short name (1-4 chars, ``[a-z][a-z0-9]*``), in order."""

    sites: dict[str, SiteSpec] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not self.sites:
            raise ConfigError("a lab needs at least one site")
        if len(self.sites) > MAX_SITES:
            raise ConfigError(f"a lab has at most {MAX_SITES} sites, got {len(self.sites)}")
        for name, site in self.sites.items():
            if not isinstance(name, str) or not _SITE_NAME.match(name):
                raise ConfigError(f"bad site name {name!r}",
                                  hint="1-4 characters: a lowercase letter, then letters/digits")
            if not isinstance(site, SiteSpec):
                raise ConfigError(f"site {name!r} must be a SiteSpec")
            if not isinstance(site.hosts, int) or not 1 <= site.hosts <= MAX_HOSTS:
                raise ConfigError(f"site {name!r}: hosts must be 1..{MAX_HOSTS}")
            if site.cgnat is not None and (site.nat.v6 != "off" or site.cgnat.v6 != "off"):
                raise ConfigError(f"site {name!r}: IPv6 behind a carrier-grade NAT is not "
                                  "built by the lab yet", hint="drop +v6 or the CGNAT")
            rate = site.background_flows_per_s
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) \
                    or not 0 <= rate <= MAX_BACKGROUND_RATE:
                raise ConfigError(f"site {name!r}: background_flows_per_s must be a number "
                                  f"0..{MAX_BACKGROUND_RATE:g}, got {rate!r}")
            if rate and site.hosts < 2:
                raise ConfigError(f"site {name!r}: background flows come from a second LAN "
                                  "host", hint="set hosts = 2 (or more) for this site")
            if site.cgnat is not None and not site.cgnat.nat:
                raise ConfigError(f"site {name!r}: a carrier-grade NAT must translate",
                                  hint="pick a NAT type other than 'public'")

    def to_dict(self) -> dict:
        return {"sites": {name: site.to_dict() for name, site in self.sites.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> "LabSpec":
        """``{"sites": {"a": "full-cone", "b": {"nat": {...}, "hosts": 2}}}``."""
        if not isinstance(data, dict) or not isinstance(data.get("sites"), dict):
            raise ConfigError("a lab spec needs a 'sites' table")
        unknown = sorted(set(data) - {"sites"})
        if unknown:
            raise ConfigError(f"unknown lab setting(s): {', '.join(unknown)}")
        return cls(sites={name: SiteSpec.from_dict(site)
                          for name, site in data["sites"].items()})

    @classmethod
    def simple(cls, site_a: str = "port-restricted", site_b: str | None = "full-cone", *,
               cgnat: tuple[str, ...] = (), same_nat: bool = False) -> "LabSpec":
        """The CLI's shape: sites a and b by catalogue name; ``same_nat`` puts two hosts
        behind site a's NAT instead of a site b."""
        sites = {"a": SiteSpec(nat=nat_from(site_a), hosts=2 if same_nat else 1)}
        if site_b is not None and not same_nat:
            sites["b"] = SiteSpec(nat=nat_from(site_b))
        for name in cgnat:
            if name not in sites:
                raise ConfigError(f"--cgnat {name}: no such site", hint=f"sites: {', '.join(sites)}")
            sites[name] = SiteSpec(nat=sites[name].nat, hosts=sites[name].hosts,
                                   cgnat=lookup("port-restricted"))
        return cls(sites=sites)
