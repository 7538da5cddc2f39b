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
from stunturn_diag.lab.pair_runner import (HTTP_PORT, parse_peer_output, run_pair, run_pair_with_relay,
                                           serve_in_lab, start_turn)

pytestmark = pytest.mark.netns


def _relayed(result: dict) -> None:
    assert result["ok"], result
    assert result["strategy"] == "relay" and result["relayed"] is True, result
    assert result["relay"]["ip"] == "198.51.100.10", result
    assert result["got"] and result["acked"], result


def test_two_random_mappings_connect_through_the_relay():
    pair = run_pair_with_relay("symmetric-random", "symmetric-random")
    for side in (pair.initiator, pair.receiver):
        _relayed(side)
        assert "random port per destination" in side["relay_reason"], side
        # relay-needed is known from the plan: no direct attempt, the relay right away
        assert side["connect_ms"] < 5000, side
    # each side talks to the other's relayed address
    assert pair.initiator["peer"] == pair.receiver["relay"]
    assert pair.receiver["peer"] == pair.initiator["relay"]


def test_random_mapping_against_a_port_restricted_filter_uses_the_relay():
    pair = run_pair_with_relay("symmetric-random", "port-restricted")
    for side in (pair.initiator, pair.receiver):
        _relayed(side)
        assert "filters by address and port" in side["relay_reason"], side


def test_a_failed_direct_attempt_falls_back_after_its_deadline():
    """Both told the plan 'full-cone' (a lie): the direct attempt fails by its deadline,
    then the relay connects without a new pairing round."""
    lie = {"udp": {"mapping": "endpoint-independent", "filtering": "endpoint-independent",
                   "port_allocation": "preserving"}}
    pair = run_pair_with_relay("symmetric-random", "symmetric-random", profile_json=json.dumps(lie),
                            punch_timeout=1.5)
    for side in (pair.initiator, pair.receiver):
        _relayed(side)
        assert side["relay_reason"].startswith("the direct attempt failed"), side
        assert 1500 <= side["connect_ms"], side


def test_a_predict_plan_whose_counter_ran_past_falls_back_to_the_relay():
    """Both claim a sequential symmetric NAT (a lie: random): the predict plan's port
    steering finds the counter past the promised ports, and both take the relay (the
    allocation starts only then: it would have taken a counted port)."""
    lie = {"udp": {"mapping": "address-and-port-dependent",
                   "filtering": "address-and-port-dependent", "port_allocation": "sequential"}}
    pair = run_pair_with_relay("symmetric-random", "symmetric-random",
                               profile_json=json.dumps(lie), punch_timeout=1.5)
    for side in (pair.initiator, pair.receiver):
        _relayed(side)
        assert side["relay_reason"].startswith("the direct attempt failed"), side
    assert any("port counter" in side["relay_reason"]
               for side in (pair.initiator, pair.receiver)), pair


def test_a_punchable_pair_stays_direct_with_a_relay_offered():
    pair = run_pair_with_relay("port-restricted", "full-cone")
    assert pair.ok and pair.data_both_ways, pair
    for side in (pair.initiator, pair.receiver):
        assert side["strategy"] == "simultaneous" and side["relayed"] is False, side
        assert side["relay"] is None and side["relay_reason"] is None, side


#: a lab peer that connects, says so, then keeps the channel busy until the peer is lost
#: (bounded: at most 150 rounds of 0.2 s)
LOSE = r"""
import json, os, sys, time
from stunturn_diag.errors import StunturnError
from stunturn_diag.punch import api
role, url, target = sys.argv[1:4]
key = os.environ["STUNTURN_KEY"]          # not in argv: the key stays out of ps
opts = dict(peer_timeout=2.0, keepalive_interval=0.5, probe=False, cache=False,
            nat_profile={"udp": {"mapping": "address-and-port-dependent",
                                 "filtering": "address-and-port-dependent",
                                 "port_allocation": "random"}})
if role == "initiator":
    r = api.initiate(url, key, target, protocol="udp", pair_timeout=15, **opts)
else:
    r = api.receive(url, key, protocol="udp", wait=15, wait_interval=0.05, **opts)
out = r.as_dict(); ch = r.connection
print("connected", flush=True, file=sys.stderr)
for _ in range(150):
    try:
        ch.send(b"ping")
        ch.recv(timeout=0.2)
    except TimeoutError:
        continue
    except StunturnError as e:
        out.update(lost=True, reason=getattr(e, "reason", None), lost_at=time.monotonic())
        break
ch.close()
print(json.dumps(out))
"""

FORGED = r"""
import json, sys, time
from stunturn_diag.turn import TurnFailure, rest_credentials
from stunturn_diag.turn.runner import TurnSession
server = (sys.argv[1], int(sys.argv[2]))
wrong = rest_credentials("not-the-secret", now=time.time(), ttl=600, random_id="x")
out = []
for user, password in (("nobody", "nothing"), (wrong["username"], wrong["password"])):
    with TurnSession(server, user, password) as s:
        got = s.allocate(timeout=3)
        out.append(got.code if isinstance(got, TurnFailure) else repr(got))
print(json.dumps(out))
"""


def test_only_issued_credentials_allocate_and_a_vanished_relay_is_a_lost_peer():
    import time

    with Lab(LabSpec.simple("symmetric-random", "symmetric-random")) as lab:
        turn = start_turn(lab)
        try:
            # without the match's credential (none, or one of another secret): 401
            forged = lab.exec("a1", [sys.executable, "-c", FORGED, *map(str, turn.address)],
                              timeout=30)
            assert json.loads(forged.stdout) == [401, 401], forged.stderr
            serve_in_lab(lab, turn=turn)
            url, target = f"http://{lab.server_ip}:{HTTP_PORT}", lab.site_public_ip("b")
            env = dict(os.environ, STUNTURN_KEY="lab-key-0123")
            procs = [lab.popen(host, [sys.executable, "-c", LOSE, role, url, target], env=env)
                     for host, role in (("a1", "initiator"), ("b1", "receiver"))]
            for proc in procs:     # bounded: a peer writes a handful of lines before this
                for _ in range(50):
                    line = proc.stderr.readline()
                    if not line or line.startswith("connected"):
                        break
                assert line.startswith("connected"), line
            stopped_at = time.monotonic()
            turn.stop()                     # the relay vanishes mid-session (by PID)
            results = [parse_peer_output(*p.communicate(timeout=60)) for p in procs]
        finally:
            turn.stop()
    for side in results:
        assert side["strategy"] == "relay", side
        assert side.get("lost") and side["reason"] == "peer-lost", side
        assert side["lost_at"] > stopped_at, side


#: on a1: drop every handshake PROOF it sends straight to site b (the punch's wire
#: header: MAGIC at payload byte 0, the kind at byte 5; PROOF = 2), counting them;
#: the same messages through the relay are inside ChannelData and pass
DROP_PROOFS = """
table ip asym {{
  chain out {{
    type filter hook output priority 0; policy accept;
    ip daddr {peer} udp length > 16 @th,64,32 0x8f535450 @th,104,8 2 counter drop
  }}
}}
"""


def test_one_side_verified_the_other_never_did_both_take_the_relay():
    """The initiator's PROOFs never reach the receiver on the direct path: the initiator
    verifies the receiver (it completes) but is never confirmed, the receiver never
    completes and falls back at its deadline. Both must end on the relay (not the
    initiator on an unconfirmed direct path and the receiver relayed)."""
    with Lab(LabSpec.simple("port-restricted", "full-cone")) as lab:
        lab.exec("a1", ["nft", "-f", "-"], input=DROP_PROOFS.format(
            peer=lab.site_public_ip("b")), check=True)
        turn = start_turn(lab)
        try:
            pair = run_pair(lab, "a1", "b1", turn=turn, punch_timeout=2.0)
        finally:
            turn.stop()
        dropped = lab.exec("a1", ["nft", "list", "table", "ip", "asym"]).stdout
    assert "packets 0 " not in dropped, dropped          # the rule did drop PROOFs
    for side in (pair.initiator, pair.receiver):
        _relayed(side)
        assert side["relay_reason"].startswith("the direct attempt failed"), side
    assert "never confirmed us" in pair.initiator["relay_reason"], pair.initiator
    assert pair.initiator["peer"] == pair.receiver["relay"]
