"""Lab behaviours beyond the catalogue table: lifetimes, hairpin between two hosts."""

from __future__ import annotations

import json
import random
import time
from dataclasses import replace

import pytest

from stunturn_diag.lab import CATALOGUE, LabSpec, SiteSpec

pytestmark = pytest.mark.netns


def _poll(check, limit: float = 20.0, step: float = 0.25) -> bool:
    """True as soon as ``check()`` holds; False after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(step)
    return check()


def test_mapping_lifetime_follows_udp_timeout(make_lab):
    nat = replace(CATALOGUE["full-cone"], udp_timeout=2)
    kit = make_lab(LabSpec(sites={"a": SiteSpec(nat=nat)}))
    (mapped,) = kit.udp("a1", "S:7000", local_port=41234)
    assert mapped == ("203.0.113.2", 41234)

    def conntrack_has_it() -> bool:
        table = kit.lab.exec("nat-a", ["cat", "/proc/net/nf_conntrack"], check=True).stdout
        return "sport=41234" in table

    def map_has_it() -> bool:
        out = kit.lab.exec("nat-a", ["nft", "list", "map", "ip", "stunturn_lab", "cone"],
                           check=True).stdout
        return "41234" in out

    assert map_has_it()
    # the kernel default (30 s, 120 s once both ways) would outlast this bound
    assert _poll(lambda: not conntrack_has_it() and not map_has_it(), limit=15)
    # the mapping is gone: an inbound packet to it no longer reaches the host
    listener = kit.popen_tool("a1", "poke", "--bind", "0.0.0.0:41234",
                              "--to", "192.168.1.1:9", "--wait", "4")
    assert json.loads(listener.stdout.readline()) == {"sent": True}
    assert kit.udp("srv", "203.0.113.2:41234", tries=3) == [None]
    assert json.loads(listener.stdout.readline()) == {"from": None}


@pytest.mark.parametrize("name", ["full-cone", "port-restricted-hairpin"])
def test_hairpin_between_two_hosts_shows_the_senders_mapping(make_lab, name):
    """RFC 4787 section 6 / REQ-9: a2 reaches a1 via a1's mapping, and a1 sees a2's
    mapped (public) address as the source."""
    kit = make_lab(LabSpec(sites={"a": SiteSpec(nat=CATALOGUE[name], hosts=2)}))
    listener = kit.popen_tool("a1", "poke", "--bind", "0.0.0.0:42000",
                              "--to", f"{kit.S}:7100", "--wait", "8")
    assert json.loads(listener.stdout.readline()) == {"sent": True}
    # a1:42000 -> server created the mapping 203.0.113.2:42000
    (seen,) = kit.udp("a2", "203.0.113.2:42000", local_port=43000)
    assert seen == ("203.0.113.2", 43000)
    assert json.loads(listener.stdout.readline()) == {"from": ["203.0.113.2", 43000]}


def test_no_hairpin_means_no_way_back_in(make_lab):
    kit = make_lab(LabSpec(sites={"a": SiteSpec(nat=CATALOGUE["full-cone-no-hairpin"],
                                                hosts=2)}))
    listener = kit.popen_tool("a1", "poke", "--bind", "0.0.0.0:42000",
                              "--to", f"{kit.S}:7100", "--wait", "4")
    assert json.loads(listener.stdout.readline()) == {"sent": True}
    assert kit.udp("a2", "203.0.113.2:42000", tries=2) == [None]


def test_cgnat_adds_a_second_translation(make_lab):
    spec = LabSpec(sites={"a": SiteSpec(nat=CATALOGUE["full-cone"],
                                        cgnat=CATALOGUE["symmetric-random"])})
    kit = make_lab(spec)
    first = kit.udp("a1", "S:7000", "S:7001", local_port=44000)
    assert first[0][0] == "203.0.113.2"
    assert first[0] != first[1]                # the CGNAT is symmetric
    table = kit.lab.exec("nat-a", ["cat", "/proc/net/nf_conntrack"], check=True).stdout
    assert "dst=100.64.1.2" in table           # inner NAT translated to 100.64/10 space


@pytest.mark.parametrize("inner,outer", [("full-cone", "port-restricted"),
                                         ("port-restricted", "full-cone"),
                                         ("full-cone", "symmetric-random"),
                                         ("eim-no-preservation", "restricted-cone-rst")])
def test_cgnat_stacked_ground_truth(make_lab, inner, outer):
    """``Lab.expected`` of a CGNAT site (stacked_expected) holds wherever it decides."""
    from test_lab_catalogue import observe_tcp, observe_udp

    kit = make_lab(LabSpec(sites={"a": SiteSpec(nat=CATALOGUE[inner],
                                                cgnat=CATALOGUE[outer])}))
    base = random.randrange(10000, 19000, 100)
    observed = {"nat": True, "udp": observe_udp(kit, 3, base), "tcp": observe_tcp(kit, base)}
    expected = kit.lab.expected("a")
    for proto in ("udp", "tcp"):
        for key, want in expected[proto].items():
            if want is not None:
                assert observed[proto][key] == want, (proto, key, observed)


def test_sequential_allocation_steps_by_one(make_lab):
    kit = make_lab(LabSpec(sites={"a": SiteSpec(nat=CATALOGUE["symmetric-sequential"])}))
    ports = [m for _, m in kit.tool("a1", "alloc", "--server", f"{kit.S}:7000",
                                    "--n", "20")["ports"]]
    assert [b - a for a, b in zip(ports, ports[1:])] == [1] * 19
    assert 20000 <= ports[0] < 20000 + 8192


def test_random_allocation_spreads(make_lab):
    kit = make_lab(LabSpec(sites={"a": SiteSpec(nat=CATALOGUE["symmetric-random"])}))
    pairs = kit.tool("a1", "alloc", "--server", f"{kit.S}:7000", "--n", "20")["ports"]
    ports = [m for _, m in pairs]
    assert len(set(ports)) == 20
    assert all(local != mapped for local, mapped in pairs)
    assert max(ports) - min(ports) > 2000          # 20 draws from ~64k ports
    assert sum(1 for a, b in zip(ports, ports[1:]) if abs(b - a) == 1) < 3
