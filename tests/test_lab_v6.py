"""Pure tests of the lab's IPv6 side (lab/v6.py): spec flags, address plan, ip6 ruleset,
ground truth; no I/O."""

from __future__ import annotations

import ipaddress

import pytest

from stunturn_diag.errors import ConfigError
from stunturn_diag.lab import LabSpec, compile_lab
from stunturn_diag.sansio.lab import v6
from stunturn_diag.sansio.lab.spec import nat_from


def _v6_steps(spec):
    plan = compile_lab(spec, "stl-abcdef")
    return [s for s in plan.setup if any(":" in a for a in s.argv)
            or (s.stdin and "ip6" in s.stdin) or "net.ipv6.conf.all.forwarding=1" in s.argv]


def test_flags_fit_the_nat_token_grammar():
    nat = nat_from("port-restricted+v6=apdf+v6-syn=rst")
    assert (nat.v6, nat.v6_syn) == ("apdf", "rst")
    assert nat_from("symmetric-random+v6=open").v6 == "open"
    assert nat_from("port-restricted").v6 == "off"
    with pytest.raises(ConfigError, match="nptv6"):
        nat_from("port-restricted+v6=sideways")
    with pytest.raises(ConfigError, match="v6_syn"):
        nat_from("port-restricted+v6=apdf+v6-syn=icmp")


def test_a_lab_without_v6_is_unchanged():
    spec = LabSpec.simple("port-restricted", "full-cone")
    assert _v6_steps(spec) == []
    assert spec.sites["a"].expected["ipv6"] is None


def test_dual_stack_plan_uses_documentation_prefixes_only():
    spec = LabSpec.simple("port-restricted+v6=apdf", "symmetric-random+v6=nptv6")
    steps = _v6_steps(spec)
    doc = ipaddress.ip_network("2001:db8::/32")
    addrs = [a.split("/")[0] for s in steps for a in s.argv if ":" in a and "::" in a]
    assert addrs and all(ipaddress.ip_address(a) in doc for a in addrs)
    argvs = [" ".join(s.argv) for s in steps]
    # the server host gets its RFC 5780 pair of IPv6 addresses
    assert any(f"addr add {v6.SERVER_IP6}/64 dev eth0 nodad" in a for a in argvs)
    assert any(f"addr add {v6.SERVER_ALT_IP6}/64 dev eth0 nodad" in a for a in argvs)
    # site b translates: its hosts live on the inner prefix, the internet routes the outer
    assert any("stl-abcdef-b1 addr add 2001:db8:f2::10/64" in a for a in argvs)
    assert any("stl-abcdef-inet -6 route add 2001:db8:2::/64 via 2001:db8:0:2::2" in a for a in argvs)
    rules = {s.argv[3]: s.stdin for s in steps if s.stdin}
    assert "table ip6 stunturn_lab6" in rules["stl-abcdef-nat-a"]
    assert "snat ip6 prefix to 2001:db8:2::/64" in rules["stl-abcdef-nat-b"]


@pytest.mark.parametrize("mode,present,absent", [
    ("eif", ["update @eif", "@eif accept", 'iifname "wan0" drop'], ["@adf", "reject"]),
    ("adf", ["update @adf", ". ip6 saddr @adf accept"], ["@eif"]),
    ("apdf", ["ct state established,related accept", 'iifname "wan0" drop'], ["@eif", "@adf"]),
    ("nat66", ['oifname "wan0" masquerade', "ipv6-icmp accept"], ["prefix"]),
])
def test_rulesets_per_mode(mode, present, absent):
    text = v6.ruleset(v6.site_layout(0, mode, "drop", ["a1"]))
    for piece in present:
        assert piece in text
    for piece in absent:
        assert piece not in text


def test_rst_answers_and_open_has_no_table():
    assert "reject with tcp reset" in v6.ruleset(v6.site_layout(0, "apdf", "rst", ["a1"]))
    assert "input" not in v6.ruleset(v6.site_layout(0, "nat66", "rst", ["a1"]))  # the box's RST
    assert v6.ruleset(v6.site_layout(0, "open", "drop", ["a1"])) is None


def test_public_addresses_per_mode():
    assert v6.site_layout(1, "apdf", "drop", ["b1", "b2"]).hosts == {
        "b1": "2001:db8:2::10", "b2": "2001:db8:2::11"}
    assert v6.site_layout(0, "apdf", "drop", ["a1"]).public_ip == "2001:db8:1::10"
    assert v6.site_layout(0, "nptv6", "drop", ["a1"]).public_ip == "2001:db8:1::10"
    assert v6.site_layout(0, "nptv6", "drop", ["a1"]).hosts["a1"] == "2001:db8:f1::10"
    assert v6.site_layout(0, "nat66", "drop", ["a1"]).public_ip == "2001:db8:0:1::2"


def test_ground_truth_vocabulary():
    fw = v6.expected("apdf", "drop")
    assert fw["nat"] is False and fw["udp"]["mapping"] == "no-nat"
    assert fw["udp"]["filtering"] == "address-and-port-dependent"
    assert fw["tcp"]["unsolicited_syn"] == "drop"
    assert v6.expected("eif", "rst")["tcp"]["unsolicited_syn"] == "pass"   # admitted
    assert v6.expected("open", "drop")["udp"]["filtering"] == "endpoint-independent"
    assert v6.expected("nptv6", "drop")["nat"] is True
    assert v6.expected("nat66", "rst")["udp"]["mapping_moves_on_unsolicited"] is True
    assert v6.expected("nat66", "drop")["udp"]["mapping_moves_on_unsolicited"] is False
    assert v6.expected("off", "drop") is None


def test_v6_behind_a_cgnat_is_refused():
    with pytest.raises(ConfigError, match="carrier-grade"):
        LabSpec.from_dict({"sites": {"a": {"nat": "port-restricted+v6=apdf", "cgnat": True}}})


def test_catalogue_covers_every_mode():
    modes = {nat_from(tok).v6 for tok in v6.V6_CATALOGUE.values()}
    assert modes == set(v6.MODES) - {"off"}
