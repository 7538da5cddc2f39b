"""What ``lab run`` / ``lab matrix`` will do, as data (pure).

A plan is the commands (server, peer a, peer b), the pairs of NAT sites to run them
through, the expectation per pair and the limits. It comes from CLI options, from a
committed TOML/JSON file (the project's NAT test plan), or both (options win)::

    types = ["full-cone", "port-restricted+hairpin", "symmetric-random"]   # or all = true
    ordered = false          # unordered pairs incl. (T, T); true: every (A, B) order
    cgnat = ["b"]            # a carrier-grade NAT in front of site b of every pair
                             # ({b = "symmetric-random"} picks its type)
    same_nat = true          # also run both peers behind one NAT of each type
    loss = 5                 # percent, each way, on every site NAT
    udp_timeout = 10         # mapping lifetime (s) of every site NAT
    protocol = "udp"         # the program's transport: which theory sets expectations
    expect = "theory"        # or "pass" / "fail" for every pair
    relay = true             # coturn on the server host ({turn_server}, {turn_secret},
                             # {turn_realm}); the theory then expects every pair whose
                             # sites can use the protocol to connect, over the path it
                             # names (direct / portmap / relay), checked where the peers
                             # print our punch's JSON result
    timeout = 30
    server = "python3 rendezvous.py {server_ip} 8000"
    server_ready = "tcp:8000"
    a = "python3 peer.py a {server_ip} {peer_public_ip} {key}"
    b = "python3 peer.py b {server_ip} {peer_public_ip} {key}"
    [expectations]           # by pair id
    "port-restricted--port-restricted" = "fail"
    [[pairs]]                # extra pairs in the lab spec's own shape (LabSpec.from_dict)
    id = "both-behind-cgnat"
    sites = { a = { nat = "full-cone", cgnat = true }, b = { nat = "full-cone", cgnat = true } }

Site types use the CLI syntax ``TYPE[+flag][+key=value]`` (``stunturn_diag.sansio.lab.spec.
parse_nat_token``), e.g. ``port-restricted+hairpin``, ``full-cone+loss=5``.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import ConfigError
from stunturn_diag.sansio.lab.catalogue import CATALOGUE
from stunturn_diag.lab.files import read_file
from stunturn_diag.sansio.lab.spec import LabSpec, check_keys, parse_nat_token
from stunturn_diag.sansio.lab import placeholders
from stunturn_diag.sansio.lab.theory import PROTOCOLS, expected_path, theory

EXPECTS = ("theory", "pass", "fail", "skip")
READY_FORMS = "none, line, tcp:PORT or udp:PORT"
DEFAULT_TIMEOUT = 60.0
MAX_TIMEOUT = 3600.0
MAX_JOBS = 16
PAIR_ID = re.compile(r"[A-Za-z0-9@+=._-]{1,120}")

KNOWN_KEYS = {"types", "all", "ordered", "cgnat", "same_nat", "loss", "udp_timeout",
              "delay", "jitter", "protocol", "expect", "expectations", "pairs", "timeout",
              "jobs", "server", "server_ready", "a", "b", "relay"}


@dataclass(frozen=True)
class Commands:
    """The three command templates (:mod:`.placeholders`); ``server`` may be None."""

    a: str
    b: str
    server: str | None = None
    server_ready: str = "none"        # "none" | "line" | "tcp:PORT" | "udp:PORT"

    def __post_init__(self) -> None:
        for role, template in (("a", self.a), ("b", self.b), ("server", self.server)):
            if role != "server" and not (template or "").strip():
                raise ConfigError(f"no command for peer {role}",
                                  hint=f"give --{role} 'CMD' (a shell command line)")
            if template is not None:
                placeholders.check(template, role)
        ready_port(self.server_ready)

    def template(self, role: str) -> str | None:
        return {"server": self.server, "a": self.a, "b": self.b}[role]


def ready_port(form: str) -> tuple[str, int] | None:
    """``"tcp:8080"`` -> ``("tcp", 8080)``; ``"none"``/``"line"`` -> None."""
    if form in ("none", "line"):
        return None
    m = re.fullmatch(r"(tcp|udp):(\d{1,5})", form or "")
    if not m or not 1 <= int(m.group(2)) <= 65535:
        raise ConfigError(f"bad server readiness {form!r}", hint=f"one of: {READY_FORMS}")
    return m.group(1), int(m.group(2))


@dataclass(frozen=True)
class Pair:
    """One lab to run the commands in. ``type_a``/``type_b`` fill ``{type_a}``/``{type_b}``."""

    id: str
    spec: LabSpec
    type_a: str
    type_b: str
    expect: str = "theory"

    def __post_init__(self) -> None:
        # the id names the pair's log folder: no path separators, no leading dot
        if not PAIR_ID.fullmatch(self.id) or self.id.startswith("."):
            raise ConfigError(f"bad pair id {self.id!r}",
                              hint="1-120 letters, digits and @+=._- (not starting with '.'); "
                                   "name the pair with id = ... or simplify its types")

    @property
    def theory(self) -> dict[str, dict]:
        return theory(self.spec)

    def expected_path(self, protocol: str, relay: bool) -> str | None:
        """With ``relay``: the path the theory expects (direct / portmap / relay; None:
        the pair cannot connect); without: None (no path is checked)."""
        return expected_path(self.theory[protocol]) if relay else None

    def expectation(self, protocol: str, relay: bool = False) -> tuple[str, bool]:
        """``(outcome, skipped)``: outcome ``"pass"``/``"fail"``/``"skip"`` (not run);
        ``skipped``: the theory says the pair cannot connect and the program is not
        expected to (reported as a skipped test case). With ``relay`` a pair can
        connect when its sites can use the protocol (:func:`expected_path`)."""
        possible = self.theory[protocol]["possible"] if not relay else \
            self.expected_path(protocol, relay) is not None
        if self.expect == "skip":
            return "skip", True
        if self.expect == "theory":
            return ("pass", False) if possible else ("fail", True)
        return self.expect, self.expect == "fail" and not possible


@dataclass(frozen=True)
class MatrixPlan:
    commands: Commands
    pairs: list[Pair]
    protocol: str = "udp"
    timeout: float = DEFAULT_TIMEOUT
    jobs: int = 1
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    #: coturn on the server host, offered through the {turn_*} placeholders
    relay: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def needs_netem(self) -> bool:
        return bool(self.delay_ms or self.jitter_ms)


def _site(token: str, cgnat: str | None) -> dict:
    site: dict = {"nat": token}
    if cgnat:
        site["cgnat"] = True if cgnat == "port-restricted" else cgnat
    return site


def _nat_overrides(data: dict) -> dict:
    out = {}
    if data.get("loss") is not None:
        out["loss_percent"] = data["loss"]
    if data.get("udp_timeout") is not None:
        out["udp_timeout"] = data["udp_timeout"]
    return out


def _with_overrides(site: dict, overrides: dict) -> dict:
    """A site dict whose NAT carries the matrix-wide impairments (unless it sets them)."""
    if not overrides:
        return site
    nat = site.get("nat", "port-restricted")
    if isinstance(nat, str):
        nat = parse_nat_token(nat) | {"name": nat}
    return site | {"nat": overrides | dict(nat)}        # the site's own flags win


def _cgnat_map(value) -> dict[str, str]:
    """``["b"]`` / ``"b"`` / ``{"b": "symmetric-random"}`` -> site -> CGNAT type."""
    if value in (None, False, (), []):
        return {}
    if isinstance(value, str):
        value = [value]
    if isinstance(value, dict):
        out = {str(k): ("port-restricted" if v is True else str(v)) for k, v in value.items()}
    elif isinstance(value, (list, tuple)):
        out = {str(s): "port-restricted" for s in value}
    else:
        raise ConfigError(f"cgnat must be a site list or a table, got {value!r}")
    bad = sorted(set(out) - {"a", "b"})
    if bad:
        raise ConfigError(f"cgnat: no such site {', '.join(bad)}", hint="sites: a, b")
    return out


def pair_id(type_a: str, type_b: str, *, cgnat: dict[str, str] | None = None,
            same_nat: bool = False) -> str:
    """``"full-cone--port-restricted"``, ``"full-cone@same-nat"``,
    ``"full-cone--full-cone+cgnat-b"`` (also a file and test-case name)."""
    text = f"{type_a}@same-nat" if same_nat else f"{type_a}--{type_b}"
    for site, kind in sorted((cgnat or {}).items()):
        text += f"+cgnat-{site}" + ("" if kind == "port-restricted" else f"={kind}")
    return text


def make_pair(type_a: str, type_b: str | None, *, cgnat=None, same_nat: bool = False,
              nat_overrides: dict | None = None, expect: str = "theory") -> Pair:
    """A pair from two type tokens, as the CLI's ``--site-a``/``--site-b`` give them."""
    cg = _cgnat_map(cgnat)
    overrides = nat_overrides or {}
    if same_nat:
        if "b" in cg:
            raise ConfigError("cgnat b: with same_nat both peers are in site a")
        sites = {"a": _with_overrides(_site(type_a, cg.get("a")), overrides) | {"hosts": 2}}
        type_b = type_a
    else:
        if type_b is None:
            raise ConfigError("a pair needs a type for site b (or same_nat)")
        sites = {"a": _with_overrides(_site(type_a, cg.get("a")), overrides),
                 "b": _with_overrides(_site(type_b, cg.get("b")), overrides)}
    spec = LabSpec.from_dict({"sites": sites})
    return Pair(pair_id(type_a, type_b, cgnat=cg, same_nat=same_nat), spec, type_a, type_b,
                _expect(expect))


def _expect(value) -> str:
    if value not in EXPECTS:
        raise ConfigError(f"bad expectation {value!r}", hint=f"one of: {', '.join(EXPECTS)}")
    return value


def expand(types: list[str], *, ordered: bool = False, cgnat=None, same_nat: bool = False,
           nat_overrides: dict | None = None, expect: str = "theory") -> list[Pair]:
    """Every (A, B) pair of ``types``: unordered with repeats (A <= B in list order), or
    every order; with ``same_nat`` also each type's two-peers-behind-one-NAT pair."""
    if not types:
        raise ConfigError("no NAT types to pair", hint="--types T1,T2,... or --all")
    if len(set(types)) != len(types):
        raise ConfigError("a NAT type is listed twice in the matrix types")
    combos = (itertools.product(types, repeat=2) if ordered
              else itertools.combinations_with_replacement(types, 2))
    pairs = [make_pair(a, b, cgnat=cgnat, nat_overrides=nat_overrides, expect=expect)
             for a, b in combos]
    if same_nat:
        pairs += [make_pair(t, None, same_nat=True, cgnat={k: v for k, v in
                                                           _cgnat_map(cgnat).items()
                                                           if k == "a"},
                            nat_overrides=nat_overrides, expect=expect) for t in types]
    return pairs


def _explicit_pair(entry: dict, default_expect: str, overrides: dict) -> Pair:
    if not isinstance(entry, dict):
        raise ConfigError(f"a [[pairs]] entry must be a table, got {entry!r}")
    check_keys(entry, ("id", "sites", "expect"), "pair")
    sites = entry.get("sites")
    if not isinstance(sites, dict):
        raise ConfigError("a [[pairs]] entry needs a 'sites' table (lab spec shape)")
    sites = {name: _with_overrides({"nat": s} if isinstance(s, str) else dict(s), overrides)
             for name, s in sites.items()}
    return pair_of(LabSpec.from_dict({"sites": sites}), entry.get("id"),
                   entry.get("expect", default_expect))


def pair_of(spec: LabSpec, pid: str | None = None, expect: str = "theory") -> Pair:
    """A pair from a whole lab spec (two sites, or one with two hosts)."""
    theory_sites = list(spec.sites)
    if len(theory_sites) > 2 or (len(theory_sites) == 1 and spec.sites[theory_sites[0]].hosts < 2):
        raise ConfigError("a pair is two sites (a, b), or one site with hosts = 2")
    names = [spec.sites[n].nat.name for n in theory_sites]
    type_a, type_b = names[0], names[-1]
    cgnat = {n: spec.sites[n].cgnat.name for n in theory_sites if spec.sites[n].cgnat}
    pid = pid or pair_id(type_a, type_b, cgnat=cgnat, same_nat=len(names) == 1)
    return Pair(str(pid), spec, type_a, type_b, _expect(expect))


def _number(data: dict, key: str, lo: float, hi: float, default: float) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise ConfigError(f"{key} must be a number in {lo:g}..{hi:g}, got {value!r}")
    return float(value)


def plan_from(data: dict) -> MatrixPlan:
    """Build a plan from a file's table merged with CLI options (see the module doc)."""
    check_keys(data, sorted(KNOWN_KEYS), "matrix")
    protocol = data.get("protocol", "udp")
    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    expect = _expect(data.get("expect", "theory"))
    overrides = _nat_overrides(data)
    types = data.get("types")
    if isinstance(types, str):
        types = [t.strip() for t in types.split(",") if t.strip()]
    if data.get("all"):
        if types:
            raise ConfigError("give the matrix types or all = true (--all), not both")
        types = list(CATALOGUE)
    pairs: list[Pair] = []
    if types:
        pairs += expand(list(types), ordered=bool(data.get("ordered")), cgnat=data.get("cgnat"),
                        same_nat=bool(data.get("same_nat")), nat_overrides=overrides,
                        expect=expect)
    for entry in data.get("pairs") or []:
        pairs.append(_explicit_pair(entry, expect, overrides))
    if not pairs:
        raise ConfigError("the matrix has no pairs", hint="--types T1,T2,..., --all or [[pairs]]")
    ids = [p.id for p in pairs]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ConfigError(f"pair id(s) used twice: {', '.join(dupes)}")
    expectations = data.get("expectations") or {}
    if not isinstance(expectations, dict):
        raise ConfigError("expectations must be a table: pair id = pass | fail | skip | theory")
    stray = sorted(set(expectations) - set(ids))
    if stray:
        raise ConfigError(f"expectations for pair(s) not in the matrix: {', '.join(stray)}",
                          hint="pair ids: " + ", ".join(ids))
    pairs = [Pair(p.id, p.spec, p.type_a, p.type_b, _expect(expectations[p.id]))
             if p.id in expectations else p for p in pairs]
    commands = Commands(a=data.get("a") or "", b=data.get("b") or "",
                        server=data.get("server") or None,
                        server_ready=str(data.get("server_ready", "none")))
    jobs = int(_number(data, "jobs", 1, MAX_JOBS, 1))
    relay = data.get("relay", False)
    if not isinstance(relay, bool):
        raise ConfigError(f"relay must be true or false, got {relay!r}")
    turn_used = sorted(set().union(*(placeholders.used(commands.template(r))
                                     for r in ("server", "a", "b")))
                       & set(placeholders.TURN_NAMES))
    if turn_used and not relay:
        raise ConfigError(f"{{{turn_used[0]}}} needs a relay", hint="relay = true (--relay)")
    return MatrixPlan(commands=commands, pairs=pairs, protocol=protocol, relay=relay,
                      timeout=_number(data, "timeout", 0.1, MAX_TIMEOUT, DEFAULT_TIMEOUT),
                      jobs=jobs, delay_ms=_number(data, "delay", 0, 60000, 0),
                      jitter_ms=_number(data, "jitter", 0, 60000, 0))


def load(path: str | Path | None, options: dict) -> MatrixPlan:
    """A plan from ``path`` (TOML/JSON, may be None) with ``options`` (not None) on top."""
    data = read_file(path, "matrix plan") if path else {}
    if not isinstance(data, dict):
        raise ConfigError(f"matrix plan {path} must be a table/object")
    return plan_from(data | {k: v for k, v in options.items() if v is not None})
