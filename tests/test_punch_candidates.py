"""Peer candidates are untrusted: IP literals only, bounded, LAN ones only for a LAN peer (e)."""

from __future__ import annotations

import socket

import pytest

from stunturn_diag.sansio.punch.candidates import MAX_LOCAL, build_targets, vet_peer_candidates
from stunturn_diag.sansio.punch.decision import decide, profile_from_details

OURS = "203.0.113.2"
THEIRS = "198.51.100.7"


def details(srflx_ip=THEIRS, local=(("192.168.2.10", 4000),)):
    return {"srflx": {"ip": srflx_ip, "port": 40000},
            "local": [{"ip": ip, "port": port} for ip, port in local]}


def test_a_remote_peer_keeps_its_srflx_and_loses_its_lan_candidates():
    v = vet_peer_candidates(details(), peer_observed_ip=THEIRS, my_public_ip=OURS)
    assert v.srflx == (THEIRS, 40000) and v.local == []
    assert any("192.168.2.10 dropped" in n for n in v.notes)


def test_a_peer_behind_our_public_ip_keeps_its_lan_candidates():
    lan = (("192.168.1.11", 4000), ("127.0.0.1", 4001), ("169.254.3.4", 4002), (OURS, 4003))
    v = vet_peer_candidates(details(OURS, lan), peer_observed_ip=OURS, my_public_ip=OURS)
    assert v.srflx == (OURS, 40000) and v.local == list(lan) and v.notes == []


@pytest.mark.parametrize("name", ["example.com", "localhost", "router.lan", "10.0.0.1.nip.io"])
def test_hostnames_are_refused_without_a_lookup(monkeypatch, name):
    def no_dns(*_a, **_k):
        raise AssertionError("a DNS lookup was attempted")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(socket, "gethostbyname", no_dns)
    v = vet_peer_candidates(details(name, ((name, 4000),)), peer_observed_ip=None,
                            my_public_ip=OURS)
    assert v.srflx is None and v.local == []
    assert sum("not an IP address" in n for n in v.notes) == 2


def test_an_srflx_elsewhere_than_the_server_saw_the_peer_is_refused():
    """A malicious peer cannot aim our punch at a third party."""
    v = vet_peer_candidates(details("192.0.2.99"), peer_observed_ip=THEIRS, my_public_ip=OURS)
    assert v.srflx is None and "the server saw the peer at 198.51.100.7" in v.notes[0]
    v = vet_peer_candidates(details("10.1.2.3"), peer_observed_ip=THEIRS, my_public_ip=OURS)
    assert v.srflx is None


def test_foreign_private_candidates_of_a_lan_peer_and_odd_addresses_are_refused():
    odd = (("8.8.8.8", 53), ("224.0.0.1", 5000), ("0.0.0.0", 5000), ("192.168.1.5", 22))
    v = vet_peer_candidates(details(OURS, odd), peer_observed_ip=OURS, my_public_ip=OURS)
    assert v.local == [("192.168.1.5", 22)]
    assert len(v.notes) == 3


def test_ipv4_mapped_forms_compare_equal_and_candidates_are_bounded():
    many = tuple((f"192.168.1.{n}", 4000) for n in range(1, 20))
    v = vet_peer_candidates(details(f"::ffff:{OURS}", many), peer_observed_ip=OURS,
                            my_public_ip=OURS)
    assert v.srflx == (OURS, 40000) and len(v.local) == MAX_LOCAL


def test_targets_use_only_the_vetted_addresses():
    peer = details(OURS, (("192.168.1.5", 4000), ("8.8.8.8", 53)))
    v = vet_peer_candidates(peer, peer_observed_ip=OURS, my_public_ip=OURS)
    plan = decide(profile_from_details(None, "udp"), profile_from_details(None, "udp"),
                  same_public_ip=True, protocol="udp")
    targets = build_targets(plan, "initiator", peer, vetted=v).targets
    assert ("8.8.8.8", 53) not in targets and ("192.168.1.5", 4000) in targets
