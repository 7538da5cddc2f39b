"""Relay fallback in the lab: coturn on the server host, offered by `serve --turn-*`.

- Two random per-destination mappings (or one facing a port-dependent filter) cannot be
  punched: both sides go through the TURN relay right after the match (strategy
  ``relay``, ``relayed: true``, the plan's reason), with the same authenticated channel.
- A feasible plan whose direct attempt fails (profiles that lie) falls back once the
  attempt's deadline passed, with the direct failure as the reason.
- A punchable pair stays direct although a relay is offered (and its allocation is freed).
- Only the match's credential allocates; a relay that disappears mid-session is a lost
  peer, not a hang.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

from stunturn_diag.lab import Lab, LabSpec
from stunturn_diag.punch.labkit import (HTTP_PORT, parse_peer_output, run_pair, start_server,
                                        start_turn)

pytestmark = pytest.mark.netns


def _relayed(result: dict) -> None:
    assert result["ok"], result
    assert result["strategy"] == "relay" and result["relayed"] is True, result
    assert result["relay"]["ip"] == "198.51.100.10", result
    assert result["got"] and result["acked"], result


def test_two_random_mappings_connect_through_the_relay():
    with Lab(LabSpec.simple("symmetric-random", "symmetric-random")) as lab:
        turn = start_turn(lab)
        try:
            pair = run_pair(lab, "a1", "b1", turn=turn, punch_timeout=5.0)
        finally:
            turn.stop()
    print(json.dumps([pair.initiator, pair.receiver]))
    for side in (pair.initiator, pair.receiver):
        _relayed(side)
        assert "random port per destination" in side["relay_reason"], side
        # relay-needed is known from the plan: no direct attempt, the relay right away
        assert side["connect_ms"] < 5000, side
    # each side talks to the other's relayed address
    assert pair.initiator["peer"] == pair.receiver["relay"]
    assert pair.receiver["peer"] == pair.initiator["relay"]


def test_random_mapping_against_a_port_restricted_filter_uses_the_relay():
    with Lab(LabSpec.simple("symmetric-random", "port-restricted")) as lab:
        turn = start_turn(lab)
        try:
            pair = run_pair(lab, "a1", "b1", turn=turn)
        finally:
            turn.stop()
    for side in (pair.initiator, pair.receiver):
        _relayed(side)
        assert "filters by address and port" in side["relay_reason"], side


def test_a_failed_direct_attempt_falls_back_after_its_deadline():
    """Both told the plan 'full-cone' (a lie): the direct attempt fails by its deadline,
    then the relay connects without a new pairing round."""
    lie = {"udp": {"mapping": "endpoint-independent", "filtering": "endpoint-independent",
                   "port_allocation": "preserving"}}
    with Lab(LabSpec.simple("symmetric-random", "symmetric-random")) as lab:
        turn = start_turn(lab)
        try:
            start_server(lab, turn=turn)
            url = f"http://{lab.server_ip}:{HTTP_PORT}"
            target = lab.site_public_ip("b")
            from stunturn_diag.punch.labkit import PEER
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            args = [json.dumps(lie), "1.5", "2", "0", "15", "0"]
            ini = lab.popen("a1", [sys.executable, "-c", PEER, "initiator", url, "lab-key-0123",
                                   target, *args], env=env)
            rec = lab.popen("b1", [sys.executable, "-c", PEER, "receiver", url, "lab-key-0123",
                                   target, *args], env=env)
            ro, re_ = rec.communicate(timeout=60)
            io, ie = ini.communicate(timeout=60)
        finally:
            turn.stop()
    for side in (parse_peer_output(io, ie), parse_peer_output(ro, re_)):
        _relayed(side)
        assert side["relay_reason"].startswith("the direct attempt failed"), side
        assert 1500 <= side["connect_ms"], side


def test_a_punchable_pair_stays_direct_with_a_relay_offered():
    with Lab(LabSpec.simple("port-restricted", "full-cone")) as lab:
        turn = start_turn(lab)
        try:
            pair = run_pair(lab, "a1", "b1", turn=turn)
        finally:
            turn.stop()
    assert pair.ok and pair.data_both_ways, pair
    for side in (pair.initiator, pair.receiver):
        assert side["strategy"] == "simultaneous" and side["relayed"] is False, side
        assert side["relay"] is None and side["relay_reason"] is None, side
