"""Can a lab pair be punched, in theory? (pure)

No second theory: the catalogue's ground truth of each site (``SiteSpec.expected``,
the probe's vocabulary) goes into :func:`stunturn_diag.sansio.punch.decision.decide`, the
very plan both of our peers compute; a pair is punchable when that plan is feasible.
A transport a site cannot use at all (``udp.reachable`` false) makes it infeasible.
"""

from __future__ import annotations

from stunturn_diag.sansio.punch.decision import decide, profile_from_details
from stunturn_diag.sansio.lab.spec import LabSpec

PROTOCOLS = ("udp", "tcp")


def pair_sites(spec: LabSpec) -> tuple[str, str]:
    """The sites of peer a and peer b: ``("a", "b")``, or ``("a", "a")`` for two hosts
    behind one NAT (a one-site lab with 2 hosts)."""
    names = list(spec.sites)
    if len(names) >= 2:
        return names[0], names[1]
    if spec.sites[names[0]].hosts >= 2:
        return names[0], names[0]
    raise ValueError("a pair needs two sites, or one site with two hosts")


def punchable(spec: LabSpec, protocol: str) -> dict:
    """``{"possible": bool, "strategy": str, "explanation": str}`` for ``protocol`` with
    peer a as initiator and peer b as receiver, both NAT profiles known."""
    site_a, site_b = pair_sites(spec)
    truth_a, truth_b = spec.sites[site_a].expected, spec.sites[site_b].expected
    for name, truth in ((site_a, truth_a), (site_b, truth_b)):
        if truth[protocol].get("reachable") is False:
            return {"possible": False, "strategy": "blocked",
                    "explanation": f"site {name} cannot use {protocol.upper()} at all"}
    plan = decide(profile_from_details(truth_a, protocol),
                  profile_from_details(truth_b, protocol),
                  same_public_ip=site_a == site_b, protocol=protocol)
    return {"possible": plan.feasible, "strategy": plan.strategy,
            "explanation": plan.explanation}


def theory(spec: LabSpec) -> dict[str, dict]:
    """:func:`punchable` for UDP and TCP."""
    return {proto: punchable(spec, proto) for proto in PROTOCOLS}
