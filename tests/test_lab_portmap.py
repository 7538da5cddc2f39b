"""The pure part of the lab's mapping service (miniupnpd config, nft skeleton, flags,
ground truth) and the STUN helper's answer."""

from __future__ import annotations

import json

import pytest

from stunturn_diag.errors import ConfigError
from stunturn_diag.lab import CATALOGUE, LabSpec
from stunturn_diag.sansio.lab import portmap
from stunturn_diag.lab.portmap_runner import stun_answer
from stunturn_diag.sansio.stun import AttrType, MessageClass, binding_request, decode, encode


def test_suffixes_select_the_services():
    spec = LabSpec.simple("symmetric-random+portmap", "full-cone+upnp")
    a, b = spec.sites["a"].nat, spec.sites["b"].nat
    assert (a.portmap, a.name, b.portmap) == ("all", "symmetric-random+portmap", "upnp")
    assert LabSpec.simple("full-cone+portmap=upnp+hairpin", None).sites["a"].nat.portmap == "upnp"
    assert LabSpec.simple("port-restricted+pcp", None).sites["a"].nat.portmap == "pcp"
    assert a.mapping == CATALOGUE["symmetric-random"].mapping
    assert portmap.protocols("pcp") == {"pcp": True, "nat_pmp": True, "upnp": False}
    assert LabSpec.from_dict({"sites": {"a": {"nat": {"base": "full-cone", "portmap": "pcp"}}}}) \
        .sites["a"].nat.portmap == "pcp"
    assert json.loads(json.dumps(spec.to_dict()))["sites"]["a"]["nat"]["portmap"] == "all"
    assert CATALOGUE["full-cone"].portmap is None


@pytest.mark.parametrize("name,why", [("full-cone+portmap=igd", "not one of"),
                                      ("public+portmap", "needs a NAT")])
def test_bad_flags_are_config_errors(name, why):
    with pytest.raises(ConfigError, match=why):
        LabSpec.simple(name, None)
    with pytest.raises(ConfigError, match="not one of"):
        CATALOGUE["full-cone"].but(portmap="igd")


def test_ground_truth():
    nat = CATALOGUE["port-restricted"].but(portmap="upnp")
    assert portmap.expected(nat) == {"pcp": False, "nat_pmp": False, "upnp": True, "usable": True}
    assert portmap.expected(nat, CATALOGUE["port-restricted"])["usable"] is False
    assert portmap.expected(CATALOGUE["port-restricted"]) == dict.fromkeys(
        ("pcp", "nat_pmp", "upnp", "usable"), False)


def test_miniupnpd_config_and_ruleset():
    text = portmap.config("pcp", lan_if="lan0", wan_if="wan0", lan_net="192.168.1.0/24",
                          stun_host="198.51.100.10")
    lines = text.splitlines()
    for want in ("ext_ifname=wan0", "listening_ip=lan0", "enable_natpmp=yes", "enable_upnp=no",
                 "ext_perform_stun=yes", "ext_stun_host=198.51.100.10", "ext_stun_port=3490",
                 "secure_mode=yes", "upnp_table_name=miniupnpd",
                 "allow 1024-65535 192.168.1.0/24 1024-65535"):
        assert want in lines
    assert lines[-1].startswith("deny ")
    no_stun = portmap.config("all", lan_if="lan0", wan_if="wan0", lan_net="192.168.1.0/24",
                             stun_host=None)
    assert "ext_perform_stun" not in no_stun and "enable_upnp=yes" in no_stun
    rules = portmap.ruleset("wan0", "203.0.113.2")
    assert rules.startswith("table inet miniupnpd {")
    assert "policy accept; jump miniupnpd" in rules and "policy drop" not in rules
    assert 'oifname "wan0" ip saddr 203.0.113.2 snat ip to 203.0.113.2' in rules
    for chain in ("miniupnpd", "prerouting_miniupnpd", "postrouting_miniupnpd"):
        assert f"chain {chain} {{ }}" in rules


def test_ready_lines():
    log = ("STUN: ext interface wan0 with IP address 203.0.113.2 is now behind unrestricted ...\n"
           "Listening for NAT-PMP/PCP traffic on port 5351\n")
    assert portmap.ready("pcp", log) and not portmap.ready("all", log)
    assert portmap.ready("all", log + "HTTP listening on port 5000\n")
    assert not portmap.ready("pcp", log.splitlines()[1])
    assert portmap.ready("pcp", log.splitlines()[1], stun=False)


def test_stun_helper_answers_from_where_it_was_asked():
    req = binding_request(bytes(range(12)), change_ip=True, change_port=True)
    out = decode(stun_answer(encode(req), ("203.0.113.2", 40000)))
    assert out.msg_class == MessageClass.SUCCESS and out.transaction_id == bytes(range(12))
    assert out.mapped_address == ("203.0.113.2", 40000)
    assert out.get(AttrType.MAPPED_ADDRESS) == ("203.0.113.2", 40000)
    assert stun_answer(b"junk", ("203.0.113.2", 1)) is None
