"""Pure tests of the lab spec, catalogue ground truth and compiler (no I/O)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from stunturn_diag.behaviour import Filtering, Mapping, PortAllocation, UnsolicitedSyn
from stunturn_diag.errors import ConfigError
from stunturn_diag.lab import CATALOGUE, LabSpec, NatSpec, SiteSpec, compile_lab
from stunturn_diag.lab.files import load_spec
from stunturn_diag.sansio.lab.nft import ruleset

UDP_KEYS = {"reachable", "mapping", "filtering", "port_allocation", "hairpin",
            "mapping_moves_on_unsolicited"}


def _all_argv(plan):
    return [s.argv for s in plan.setup + plan.teardown]


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_expected_uses_the_probe_vocabulary(name):
    exp = CATALOGUE[name].expected
    assert set(exp) == {"nat", "udp", "tcp"}
    assert set(exp["udp"]) == UDP_KEYS
    json.dumps(exp)                                     # JSON-able
    allowed = {None, True, False} | {e.value for e in (*Mapping, *Filtering, *PortAllocation,
                                                        *UnsolicitedSyn)}
    for proto in ("udp", "tcp"):
        for value in exp[proto].values():
            assert value in allowed


def test_ground_truth_of_the_classics():
    assert CATALOGUE["full-cone"].expected["udp"]["filtering"] == "endpoint-independent"
    assert CATALOGUE["restricted-cone"].expected["udp"]["filtering"] == "address-dependent"
    pr = CATALOGUE["port-restricted"].expected
    assert pr["udp"]["mapping"] == "endpoint-independent"
    assert pr["udp"]["filtering"] == "address-and-port-dependent"
    assert pr["udp"]["mapping_moves_on_unsolicited"] is True
    assert pr["tcp"]["unsolicited_syn"] == "rst"
    assert CATALOGUE["port-restricted-drop"].expected["udp"]["mapping_moves_on_unsolicited"] is False
    assert CATALOGUE["symmetric-random"].expected["udp"]["port_allocation"] == "random"
    assert CATALOGUE["symmetric-sequential"].expected["udp"]["mapping"] == \
        "address-and-port-dependent"
    assert CATALOGUE["eim-no-preservation"].expected["udp"]["port_allocation"] == "sequential"
    assert CATALOGUE["public"].expected["nat"] is False
    assert CATALOGUE["udp-blocked"].expected["udp"]["reachable"] is False
    assert CATALOGUE["full-cone"].expected["tcp"]["unsolicited_syn"] == "pass"
    assert CATALOGUE["port-restricted-icmp"].expected["tcp"]["unsolicited_syn"] == "icmp"
    assert CATALOGUE["port-restricted-icmp"].expected["udp"] == \
        CATALOGUE["port-restricted-drop"].expected["udp"]


def test_bad_nat_specs_are_config_errors():
    with pytest.raises(ConfigError):
        NatSpec(mapping="sideways")
    with pytest.raises(ConfigError):
        NatSpec(mapping=Mapping.ADDRESS_AND_PORT_DEPENDENT)     # preserving + APDM
    with pytest.raises(ConfigError):
        NatSpec(tcp_unsolicited=UnsolicitedSyn.DROP)            # no firewall -> RST
    with pytest.raises(ConfigError):
        NatSpec(tcp_unsolicited=UnsolicitedSyn.ICMP)            # no firewall -> RST
    with pytest.raises(ConfigError):
        NatSpec(input_firewall=True, tcp_unsolicited=UnsolicitedSyn.PASS)
    with pytest.raises(ConfigError):
        replace(CATALOGUE["full-cone"], loss_percent=101)
    with pytest.raises(ConfigError):
        NatSpec.from_dict({"colour": "blue"})


def test_spec_from_dict_and_round_trip(tmp_path):
    spec = LabSpec.from_dict({"sites": {
        "a": "port-restricted",
        "b": {"nat": {"base": "full-cone", "hairpin": False, "udp_timeout": 5}, "hosts": 2,
              "cgnat": True}}})
    assert spec.sites["b"].nat.hairpin is False and spec.sites["b"].nat.udp_timeout == 5
    assert spec.sites["b"].cgnat.name == "port-restricted"
    assert LabSpec.from_dict(spec.to_dict()) == spec
    toml = tmp_path / "lab.toml"
    toml.write_text('[sites.a]\nnat = "symmetric-random"\n[sites.b]\nnat = "public"\n')
    assert load_spec(toml).sites["a"].nat == CATALOGUE["symmetric-random"]
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ConfigError):
        load_spec(bad)
    with pytest.raises(ConfigError):
        LabSpec.from_dict({"sites": {"Site-A!": "public"}})
    with pytest.raises(ConfigError):
        LabSpec.from_dict({"sites": {"a": "no-such-nat"}})
    with pytest.raises(ConfigError):
        LabSpec.simple("full-cone", "full-cone", cgnat=("z",))


def test_compiler_is_confined_to_the_lab_namespaces():
    spec = LabSpec.simple("port-restricted", "symmetric-random", cgnat=("a",))
    plan = compile_lab(spec, "stl-abc123")
    for argv in _all_argv(plan):
        assert argv[0] == "ip"
        if argv[1] == "-n":
            assert argv[2].startswith("stl-abc123-")
        else:
            assert argv[1] == "netns" and argv[3].startswith("stl-abc123-"), argv
        # veth peers go straight into a lab namespace, never the host's
        if "peer" in argv:
            assert argv[argv.index("netns", 3) + 1].startswith("stl-abc123-")


def test_interface_names_fit_ifnamsiz():
    spec = LabSpec(sites={f"s{i}": SiteSpec(nat=CATALOGUE["full-cone"], hosts=8)
                          for i in range(8)})
    plan = compile_lab(spec, "stl-abc123")
    for argv in _all_argv(plan):
        if "link" in argv and "add" in argv:
            name = argv[argv.index("add") + 1]
            assert len(name) <= 15
            if "peer" in argv:
                assert len(argv[argv.index("name") + 1]) <= 15


def test_nodes_and_addresses():
    plan = compile_lab(LabSpec.simple("full-cone", same_nat=True), "stl-000001")
    topo = plan.topology
    assert topo.nodes == ["inet", "srv", "nat-a", "a1", "a2"]
    assert topo.hosts == {"a1": "192.168.1.10", "a2": "192.168.1.11"}
    assert topo.sites["a"].public_ip == "203.0.113.2"
    assert topo.netns("a2") == "stl-000001-a2"


def test_rulesets_per_behaviour():
    pr = ruleset(CATALOGUE["port-restricted"], "203.0.113.2", "192.168.1.0/24")
    assert "masquerade" in pr and "dnat" not in pr and "chain input" not in pr
    fc = ruleset(CATALOGUE["full-cone"], "203.0.113.2", "192.168.1.0/24")
    assert 'iifname "wan0" meta l4proto { tcp, udp } dnat ip to' in fc
    assert "ct reply proto-dst" in fc and "snat ip to 203.0.113.2" in fc   # hairpin
    rc = ruleset(CATALOGUE["restricted-cone"], "203.0.113.2", "192.168.1.0/24")
    assert "@permit" in rc
    seq = ruleset(CATALOGUE["symmetric-sequential"], "203.0.113.2", "192.168.1.0/24")
    assert "numgen inc mod 8192 map { 0 : 20000, 1 : 20001," in seq
    assert "masquerade random" in ruleset(CATALOGUE["symmetric-random"], "203.0.113.2",
                                          "192.168.1.0/24")
    lossy = ruleset(CATALOGUE["lossy"], "203.0.113.2", "192.168.1.0/24")
    assert "numgen random mod 100 < 10 drop" in lossy
    assert "meta l4proto udp drop" in ruleset(CATALOGUE["udp-blocked"], "203.0.113.2",
                                              "192.168.1.0/24")
    rst = ruleset(CATALOGUE["restricted-cone-rst"], "203.0.113.2", "192.168.1.0/24")
    assert "reject with tcp reset" in rst
    icmp = ruleset(CATALOGUE["port-restricted-icmp"], "203.0.113.2", "192.168.1.0/24")
    assert "meta l4proto tcp reject with icmp type port-unreachable" in icmp
    assert "tcp reset" not in icmp and icmp.index("reject") < icmp.index('"wan0" drop')


def test_conntrack_timeouts_are_per_namespace_sysctls():
    nat = replace(CATALOGUE["full-cone"], udp_timeout=3, tcp_timeout=20)
    plan = compile_lab(LabSpec(sites={"a": SiteSpec(nat=nat)}), "stl-000002")
    joined = [" ".join(s.argv) for s in plan.setup]
    assert any("nf_conntrack_udp_timeout=3" in j and "stl-000002-nat-a" in j for j in joined)
    assert any("nf_conntrack_tcp_timeout_established=20" in j for j in joined)
    assert "timeout 3s" in plan.rulesets["nat-a"]


def test_stacked_ground_truth_behind_a_cgnat():
    from stunturn_diag.sansio.lab.nat import stacked_expected

    exp = stacked_expected(CATALOGUE["full-cone"], CATALOGUE["symmetric-random"])
    assert exp["udp"]["mapping"] == "address-and-port-dependent"
    assert exp["udp"]["port_allocation"] == "random"
    assert exp["udp"]["filtering"] == "address-and-port-dependent"
    assert exp["tcp"]["unsolicited_syn"] == "drop"
    assert exp["udp"]["hairpin"] is None
    exp = stacked_expected(CATALOGUE["eim-no-preservation"], CATALOGUE["full-cone"])
    assert exp["udp"]["mapping"] == "endpoint-independent"
    assert exp["udp"]["port_allocation"] == "sequential"     # outer preserves inner's ports
    assert exp["tcp"]["unsolicited_syn"] == "drop"           # outer admits, inner drops
    assert stacked_expected(CATALOGUE["udp-blocked"],
                            CATALOGUE["full-cone"])["udp"]["reachable"] is False
    assert stacked_expected(CATALOGUE["public"], CATALOGUE["full-cone"]) == \
        CATALOGUE["full-cone"].expected


def test_background_flows_are_a_site_setting_with_bounds():
    from stunturn_diag.sansio.lab.spec import LabSpec as Spec
    spec = Spec.from_dict({"sites": {"a": {"nat": "symmetric-sequential", "hosts": 2,
                                           "background_flows_per_s": 20}}})
    site = spec.sites["a"]
    assert site.background_flows_per_s == 20 and site.background_host == 2
    assert Spec.from_dict(spec.to_dict()) == spec                      # round trip
    assert Spec.from_dict({"sites": {"a": "full-cone"}}).sites["a"].background_host is None
    for bad in ({"hosts": 1, "background_flows_per_s": 5},            # needs a second host
                {"hosts": 2, "background_flows_per_s": -1},
                {"hosts": 2, "background_flows_per_s": 10_000},
                {"hosts": 2, "background_flows_per_s": True}):
        with pytest.raises(ConfigError):
            Spec.from_dict({"sites": {"a": {"nat": "symmetric-sequential", **bad}}})
