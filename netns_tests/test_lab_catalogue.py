"""Every catalogue entry's ground truth, verified empirically with plain sockets.

For each NAT type a lab puts one host behind it; the reflector on the server host
(two IPs, two ports) tells the host its mapped address and answers from whichever
address/port it is asked to, like RFC 5780's CHANGE-REQUEST. The observations are
classified into the probe's JSON vocabulary and must equal ``NatSpec.expected``.
"""

from __future__ import annotations

import json
import random

import pytest

from stunturn_diag.lab import CATALOGUE, LabSpec, SiteSpec

pytestmark = pytest.mark.netns

HOST = "a1"


def _allocation(pairs, nat: bool):
    """RFC 4787 section 4.2.1 port allocation from (local port, mapped port) pairs."""
    if not nat:
        return None
    if all(local == mapped for local, mapped in pairs):
        return "preserving"
    mapped = [m for _, m in pairs]
    if all(b - a == 1 for a, b in zip(mapped, mapped[1:])):
        return "sequential"
    return "random"


def _classify_mapping(m1, m2, m3, nat: bool):
    if not nat:
        return "no-nat"
    if m1 == m2 == m3:
        return "endpoint-independent"
    if m1 == m2:
        return "address-dependent"
    return "address-and-port-dependent"


def observe_udp(kit, tries: int, base: int) -> dict:
    host_ip = kit.lab.host_ip(HOST)
    (first,) = kit.udp(HOST, "S:7000", tries=tries)
    if first is None:
        return {"reachable": False, "mapping": None, "filtering": None,
                "port_allocation": None, "hairpin": None,
                "mapping_moves_on_unsolicited": None}
    nat = first[0] != host_ip
    m = kit.udp(HOST, "S:7000", "S:7001", "A:7000", tries=tries)
    mapping = _classify_mapping(*m, nat)
    if kit.udp(HOST, "S:7000", "S:7000/3", tries=tries)[1] is not None:
        filtering = "endpoint-independent"
    elif kit.udp(HOST, "S:7000", "S:7000/1", tries=tries)[1] is not None:
        filtering = "address-dependent"
    else:
        filtering = "address-and-port-dependent"
    pairs = kit.tool(HOST, "alloc", "--server", f"{kit.S}:7000", "--n", "5",
                     "--base", str(base))["ports"]
    hairpin = kit.tool(HOST, "hairpin", "--server", f"{kit.S}:7000")["hairpin"] if nat else None
    moves = None
    if mapping == "endpoint-independent":
        moves = _mapping_moves(kit, base + 10, tries)
    return {"reachable": True, "mapping": mapping, "filtering": filtering,
            "port_allocation": _allocation(pairs, nat), "hairpin": hairpin,
            "mapping_moves_on_unsolicited": moves}


def _mapping_moves(kit, local_port: int, tries: int) -> bool:
    """A new remote endpoint sends to the host's mapping first; then the host sends to
    it from the same socket: does it leave from another port?"""
    (m0,) = kit.udp(HOST, "S:7000", local_port=local_port, tries=tries)
    poke = kit.popen_tool("srv", "poke", "--bind", f"{kit.S}:7100",
                          "--to", f"{m0[0]}:{m0[1]}", "--wait", "8")
    assert json.loads(poke.stdout.readline()) == {"sent": True}
    (m1,) = kit.udp(HOST, "S:7100", local_port=local_port, tries=tries)
    poke.wait(timeout=15)
    assert m1 is not None
    return m1 != m0


def observe_tcp(kit, base: int) -> dict:
    host_ip = kit.lab.host_ip(HOST)
    first = kit.tool(HOST, "tcp", "--server", f"{kit.S}:7000")
    if first["mapped"] is None:
        return {"reachable": False}
    nat = first["mapped"][0] != host_ip
    port = base + 20
    m = [kit.tool(HOST, "tcp", "--server", ep, "--local-port", str(port))["mapped"][1]
         for ep in (f"{kit.S}:7000", f"{kit.S}:7001", f"{kit.A}:7000")]
    mapping = _classify_mapping(*m, nat)
    alt = kit.tool(HOST, "tcp", "--server", f"{kit.S}:7000", "--connect-back-from", kit.A)
    syn = {"connected": "pass", "refused": "rst", "icmp": "icmp",
           "timeout": "drop"}[alt["connect_back"]]
    if syn == "pass":
        assert alt["accepted"] is True
        filtering = "endpoint-independent"
    else:
        same = kit.tool(HOST, "tcp", "--server", f"{kit.S}:7000", "--connect-back-from", kit.S)
        filtering = ("address-dependent" if same["connect_back"] == "connected"
                     else "address-and-port-dependent")
    pairs = []
    for n in range(4):
        out = kit.tool(HOST, "tcp", "--server", f"{kit.S}:7000", "--local-port",
                       str(base + 30 + n))
        pairs.append((out["local_port"], out["mapped"][1]))
    return {"reachable": True, "mapping": mapping, "filtering": filtering,
            "unsolicited_syn": syn, "port_allocation": _allocation(pairs, nat)}


@pytest.mark.parametrize("name", [n for n in CATALOGUE if n != "lossy"])
def test_catalogue_ground_truth(make_lab, name):
    nat = CATALOGUE[name]
    kit = make_lab(LabSpec(sites={"a": SiteSpec(nat=nat)}))
    base = random.randrange(10000, 19000, 100)
    observed = {"nat": None, "udp": observe_udp(kit, 3, base), "tcp": observe_tcp(kit, base)}
    (seen,) = kit.udp(HOST, "S:7000") if not nat.udp_blocked else (None,)
    tcp_seen = kit.tool(HOST, "tcp", "--server", f"{kit.S}:7000")["mapped"]
    observed["nat"] = tcp_seen[0] != kit.lab.host_ip(HOST)
    if seen is not None:
        assert seen[0] == kit.lab.site_public_ip("a")
    assert observed == nat.expected


def test_lossy_link_drops_roughly_its_share(make_lab):
    nat = CATALOGUE["lossy"]
    kit = make_lab(LabSpec(sites={"a": SiteSpec(nat=nat)}))
    out = kit.tool(HOST, "count", "--server", f"{kit.S}:7000", "--count", "300")
    # 10% per direction -> about 81% of round trips survive; a wide band
    assert 0.60 * 300 <= out["received"] <= 0.95 * 300, out
    # and its other behaviour is the full cone's (with retries to ride out the loss)
    mapped = kit.udp(HOST, "S:7000", "S:7000/3", tries=8)
    assert mapped[0] is not None and mapped[1] == mapped[0]


def test_lossless_link_loses_nothing(make_lab):
    kit = make_lab(LabSpec(sites={"a": SiteSpec(nat=CATALOGUE["full-cone"])}))
    out = kit.tool(HOST, "count", "--server", f"{kit.S}:7000", "--count", "300")
    assert out["received"] >= 297, out
