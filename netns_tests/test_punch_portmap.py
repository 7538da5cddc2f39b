"""Port mapping in punch: a random per-destination mapping behind a gateway with PCP
(the lab's real miniupnpd, ``+portmap``) is reachable at its mapped punch port.

``symmetric-random+portmap`` against ``port-restricted`` cannot be punched (relay-needed
without the mapping); with it both sides plan ``portmap``, the port-restricted side sends
to the mapped address, the mapped side answers, data flows both ways. The mapping lives
while the channel is open and is gone from miniupnpd once it closed.
"""

from __future__ import annotations

import pytest

from stunturn_diag.lab import Lab, LabSpec
from stunturn_diag.lab.pair_runner import run_pair

pytestmark = pytest.mark.netns


def _nft_mappings(lab) -> str:
    """miniupnpd's DNAT rules on the mapped site's NAT box (its nft table)."""
    return lab.exec(lab.nat_node("a"), ["nft", "list", "table", "inet", "miniupnpd"],
                    timeout=20).stdout


@pytest.mark.parametrize("initiator_site", ["a", "b"])
def test_random_mapping_with_a_gateway_mapping_connects_via_portmap(initiator_site):
    spec = LabSpec.simple("symmetric-random+portmap", "port-restricted")
    with Lab(spec) as lab:
        assert lab.expected("a")["port_mapping"]["usable"] is True
        ini, rec = ("a1", "b1") if initiator_site == "a" else ("b1", "a1")
        pair = run_pair(lab, ini, rec)
        left = _nft_mappings(lab)
    assert pair.ok and pair.data_both_ways, pair
    mapped_side = pair.initiator if initiator_site == "a" else pair.receiver
    other = pair.receiver if initiator_site == "a" else pair.initiator
    for side in (mapped_side, other):
        assert side["strategy"] == "portmap" and side["relayed"] is False, side
        assert "gateway mapped its punch port" in side["explanation"], side
    assert mapped_side["portmap"]["ip"] == lab.site_public_ip("a"), mapped_side
    # the other side talks to the mapped address, the mapped side answers from it
    assert other["peer"] == mapped_side["portmap"], (other, mapped_side)
    assert other["portmap"] is None
    # deleted once the channel closed
    assert f"dport {mapped_side['portmap']['port']} " not in left, left
