"""Can a lab pair be punched, in theory? (pure)

No second theory: the catalogue's ground truth of each site (``SiteSpec.expected``,
the probe's vocabulary) goes into :func:`stunturn_diag.sansio.punch.decision.decide`, the
very plan both of our peers compute; a pair is punchable when that plan is feasible.
A transport a site cannot use at all (``udp.reachable`` false) makes it infeasible.

With a TURN relay offered (``lab matrix --relay``) every pair whose sites can use the
transport connects; :func:`expected_path` says over which path (issue 12): ``direct``
where the plan is feasible, ``portmap`` where it is feasible because a gateway mapped
the punch port (RFC 6886 / UPnP IGD), ``relay`` (RFC 8656; RFC 6062 for TCP) otherwise.
A site that blocks UDP still reaches the relay over TCP (RFC 8656 section 3.1: a UDP
relayed address over a TCP connection to the server), so its UDP pairs connect through
the relay too (``relay_over_tcp``); a transport blocked with no way to the relay (TCP
too) stays without a path.
"""

from __future__ import annotations

from stunturn_diag.sansio.punch.decision import decide, profile_from_details
from stunturn_diag.sansio.lab.spec import LabSpec

PROTOCOLS = ("udp", "tcp")
#: the path kinds of a connected pair (a peer's JSON result: :func:`path_of`)
PATHS = ("direct", "portmap", "relay")


def pair_sites(spec: LabSpec) -> tuple[str, str]:
    """The sites of peer a and peer b: ``("a", "b")``, or ``("a", "a")`` for two hosts
    behind one NAT (a one-site lab with 2 hosts)."""
    names = list(spec.sites)
    if len(names) >= 2:
        return names[0], names[1]
    if spec.sites[names[0]].hosts >= 2:
        return names[0], names[0]
    raise ValueError("a pair needs two sites, or one site with two hosts")


#: where a site's gateway maps ports, the address the theory pretends the punch mapped
#: (only that there is one matters to the plan)
_MAPPED = {"ip": "192.0.2.1", "port": 1}


def _with_portmap(truth: dict) -> dict:
    """The site's truth as its peer would send it: with ``punch.portmap`` (an address)
    where its gateway offers a usable mapping (``+portmap``/``+pcp``/``+upnp``)."""
    if not (truth.get("port_mapping") or {}).get("usable"):
        return truth
    return truth | {"punch": dict(truth.get("punch") or {}, portmap=_MAPPED)}


def punchable(spec: LabSpec, protocol: str) -> dict:
    """``{"possible": bool, "strategy": str, "explanation": str}`` for ``protocol`` with
    peer a as initiator and peer b as receiver, both NAT profiles known."""
    site_a, site_b = pair_sites(spec)
    truth_a, truth_b = spec.sites[site_a].expected, spec.sites[site_b].expected
    for name, truth in ((site_a, truth_a), (site_b, truth_b)):
        if truth[protocol].get("reachable") is False:
            entry = {"possible": False, "strategy": "blocked",
                     "explanation": f"site {name} cannot use {protocol.upper()} at all"}
            if protocol == "udp" and all(t["tcp"].get("reachable") is not False
                                         for t in (truth_a, truth_b)):
                entry["relay_over_tcp"] = True     # UDP through the relay reached over TCP
            return entry
    plan = decide(profile_from_details(_with_portmap(truth_a), protocol),
                  profile_from_details(_with_portmap(truth_b), protocol),
                  same_public_ip=site_a == site_b, protocol=protocol)
    return {"possible": plan.feasible, "strategy": plan.strategy,
            "explanation": plan.explanation}


def theory(spec: LabSpec) -> dict[str, dict]:
    """:func:`punchable` for UDP and TCP."""
    return {proto: punchable(spec, proto) for proto in PROTOCOLS}


def expected_path(entry: dict) -> str | None:
    """The path a pair takes with a relay offered, from its :func:`punchable` entry;
    None: no path (a site cannot use the transport, nor reach the relay over TCP for it)."""
    if entry["strategy"] == "blocked":
        return "relay" if entry.get("relay_over_tcp") else None
    if entry["possible"]:
        return "portmap" if entry["strategy"] == "portmap" else "direct"
    return "relay"


def path_of(result: object) -> str | None:
    """The path kind of one peer's punch result (its JSON line: ``strategy``,
    ``relayed``), None when it reports none (it failed, or is not our punch)."""
    if not isinstance(result, dict) or not result.get("ok") or "strategy" not in result:
        return None
    if result.get("relayed"):
        return "relay"
    return "portmap" if result["strategy"] == "portmap" else "direct"
