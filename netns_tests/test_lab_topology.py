"""The lab builds, isolates and tears down (real namespaces)."""

from __future__ import annotations

import subprocess

import pytest

from stunturn_diag.errors import LabError
from stunturn_diag.lab import Lab, LabSpec, SiteSpec, CATALOGUE
from stunturn_diag.lab.runner import list_namespaces

pytestmark = pytest.mark.netns


def test_lab_builds_and_leaves_no_namespace():
    spec = LabSpec.simple("port-restricted", "full-cone")
    with Lab(spec) as lab:
        ours = [n for n in list_namespaces() if n.startswith(lab.name + "-")]
        assert sorted(ours) == sorted(lab.netns(n) for n in lab.node_names)
        routes = lab.exec("a1", ["ip", "route"], check=True).stdout
        assert "default via 192.168.1.1" in routes
    assert not [n for n in list_namespaces() if n.startswith(lab.name + "-")]


def test_failed_build_tears_down():
    lab = Lab(LabSpec.simple("port-restricted", None))
    lab.plan.setup.append(lab.plan.setup[0])       # "ip netns add" twice: fails
    with pytest.raises(LabError):
        lab.up()
    assert not [n for n in list_namespaces() if n.startswith(lab.name + "-")]


def test_popen_processes_end_with_the_lab():
    with Lab(LabSpec.simple("full-cone", None)) as lab:
        proc = lab.popen("a1", ["sleep", "60"])
    assert proc.poll() is not None


def test_mapped_address_is_site_public_ip(make_lab):
    kit = make_lab(LabSpec.simple("port-restricted", "public"))
    (a,) = kit.udp("a1", "S:7000")
    (b,) = kit.udp("b1", "S:7000")
    assert a[0] == kit.lab.site_public_ip("a") == "203.0.113.2"
    assert b[0] == kit.lab.site_public_ip("b") == kit.lab.host_ip("b1")


def test_cgnat_site_is_seen_from_the_cgnat_wan(make_lab):
    kit = make_lab(LabSpec.simple("full-cone", "port-restricted", cgnat=("a",)))
    assert "cgn-a" in kit.lab.node_names
    (mapped,) = kit.udp("a1", "S:7000")
    assert mapped[0] == kit.lab.site_public_ip("a") == "203.0.113.2"
    wan = kit.lab.exec("nat-a", ["ip", "-4", "-o", "addr", "show", "wan0"], check=True).stdout
    assert "100.64.1.2/24" in wan


def test_same_nat_hosts_share_a_lan(make_lab):
    kit = make_lab(LabSpec.simple("full-cone", same_nat=True))
    assert set(kit.lab.hosts) == {"a1", "a2"}
    assert kit.lab.site_of("a2") == "a"
    out = kit.tool("a1", "udp", "--ask", f"{kit.lab.host_ip('a2')}:9", "--tries", "1")
    assert out["results"] == [None]        # nothing listens there, but the route exists
    ping = kit.lab.exec("a1", ["ip", "route", "get", kit.lab.host_ip("a2")], check=True).stdout
    assert "via" not in ping                # on-link: same LAN


def test_many_labs_in_parallel_do_not_clash():
    spec = LabSpec(sites={"a": SiteSpec(nat=CATALOGUE["full-cone"])})
    labs = [Lab(spec) for _ in range(3)]
    try:
        for lab in labs:
            lab.up()
        assert len({lab.name for lab in labs}) == 3
        for lab in labs:
            assert lab.exec("a1", ["true"]).returncode == 0
    finally:
        for lab in labs:
            lab.down()
    names = list_namespaces()
    assert not [n for n in names for lab in labs if n.startswith(lab.name + "-")]


def test_host_namespace_untouched():
    before = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    host = [["ip", "-o", "addr"], ["ip", "-o", "route"], ["ip", "-o", "-6", "route"],
            ["nft", "list", "ruleset"], ["sysctl", "-n", "net.ipv4.ip_forward"]]
    host_before = [subprocess.run(c, capture_output=True, text=True).stdout for c in host]
    with Lab(LabSpec.simple("port-restricted", "symmetric-random", cgnat=("b",))) as lab:
        during = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        host_during = [subprocess.run(c, capture_output=True, text=True).stdout for c in host]
        assert "stunturn_lab" in lab.exec("nat-a", ["nft", "list", "tables"]).stdout
    assert before.splitlines() == during.splitlines()
    assert host_during == host_before       # addresses, routes, firewall, forwarding
