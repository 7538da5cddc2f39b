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
from pathlib import Path

from ..errors import ConfigError
from .catalogue import lookup
from .nat import NatSpec

MAX_SITES = 8
MAX_HOSTS = 8
_SITE_NAME = re.compile(r"^[a-z][a-z0-9]{0,3}$")


@dataclass(frozen=True)
class SiteSpec:
    """One site: its NAT, the number of LAN hosts, an optional carrier-grade NAT."""

    nat: NatSpec
    hosts: int = 1
    cgnat: NatSpec | None = None

    def to_dict(self) -> dict:
        return {"nat": self.nat.to_dict(), "hosts": self.hosts,
                "cgnat": self.cgnat.to_dict() if self.cgnat else None}

    @classmethod
    def from_dict(cls, data: dict | str) -> "SiteSpec":
        """``"full-cone"`` or ``{"nat": "full-cone" | {...}, "hosts": 2, "cgnat": ...}``."""
        if isinstance(data, str):
            return cls(nat=nat_from(data))
        if not isinstance(data, dict):
            raise ConfigError(f"a site must be a NAT name or a table, got {data!r}")
        unknown = sorted(set(data) - {"nat", "hosts", "cgnat"})
        if unknown:
            raise ConfigError(f"unknown site setting(s): {', '.join(unknown)}",
                              hint="known: nat, hosts, cgnat")
        cgnat = data.get("cgnat")
        return cls(nat=nat_from(data.get("nat", "port-restricted")),
                   hosts=data.get("hosts", 1),
                   cgnat=None if cgnat in (None, False) else nat_from(
                       "port-restricted" if cgnat is True else cgnat))


def nat_from(value: str | dict | NatSpec) -> NatSpec:
    """A NatSpec from a catalogue name, a dict (optionally ``{"base": name, ...}``) or itself."""
    if isinstance(value, NatSpec):
        return value
    if isinstance(value, str):
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
    def from_file(cls, path: str | Path) -> "LabSpec":
        """Read a ``.json`` or ``.toml`` spec file."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read lab spec {path}: {exc.strerror}") from None
        try:
            data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        except (ValueError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"lab spec {path} is not valid "
                              f"{'TOML' if path.suffix == '.toml' else 'JSON'}: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def simple(cls, site_a: str = "port-restricted", site_b: str | None = "full-cone", *,
               cgnat: tuple[str, ...] = (), same_nat: bool = False) -> "LabSpec":
        """The CLI's shape: sites a and b by catalogue name; ``same_nat`` puts two hosts
        behind site a's NAT instead of a site b."""
        sites = {"a": SiteSpec(nat=lookup(site_a), hosts=2 if same_nat else 1)}
        if site_b is not None and not same_nat:
            sites["b"] = SiteSpec(nat=lookup(site_b))
        for name in cgnat:
            if name not in sites:
                raise ConfigError(f"--cgnat {name}: no such site", hint=f"sites: {', '.join(sites)}")
            sites[name] = SiteSpec(nat=sites[name].nat, hosts=sites[name].hosts,
                                   cgnat=lookup("port-restricted"))
        return cls(sites=sites)
