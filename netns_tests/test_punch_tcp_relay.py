"""TCP relay fallback in the lab: real coturn (RFC 6062 TCP allocations) on the server
host, offered by `serve --turn-* --turn-transports udp,tcp`, real kernel NAT.

- A TCP pair that theory says cannot be punched (a random per-destination mapping
  facing a port-dependent filter) connects through the relay right after the match,
  `--protocol tcp`: strategy ``relay``, ``relayed: true``, the plan's reason, data both
  ways through the encrypted channel (the labpeer's line each way over SecureStream).
- A feasible TCP plan whose direct attempt fails (profiles that lie) falls back once
  the attempt's deadline passed.
- A relay that disappears mid-session ends the relayed stream within a bounded time
  (never a hang).
- The CLI as the README runs it (`punch --protocol tcp --listen` / `--forward`) carries
  a 300 kB stream both ways through the relay and both ends exit 0.
"""

from __future__ import annotations

import json
import os
import sys
import time

import pytest

from stunturn_diag.lab import Lab, LabSpec
from stunturn_diag.lab.pair_runner import (HTTP_PORT, parse_peer_output, run_pair_with_relay,
                                           serve_in_lab, start_turn)

pytestmark = pytest.mark.netns


def _relayed(result: dict) -> None:
    assert result["ok"], result
    assert result["protocol"] == "tcp", result
    assert result["strategy"] == "relay" and result["relayed"] is True, result
    assert result["relay"]["ip"] == "198.51.100.10", result
    assert result["got"] and result["acked"], result       # one line each way, encrypted


def test_a_tcp_pair_that_cannot_be_punched_connects_through_the_relay():
    pair = run_pair_with_relay("symmetric-random", "port-restricted", protocol="tcp")
    for side in (pair.initiator, pair.receiver):
        _relayed(side)
        assert side["relay_reason"].startswith("relay-needed"), side
        assert side["connect_ms"] < 5000, side          # no direct attempt first
    assert pair.initiator["peer"] == pair.receiver["relay"]
    assert pair.receiver["peer"] == pair.initiator["relay"]
    assert pair.initiator["line"] == "data:receiver" and pair.receiver["line"] == "data:initiator"


def test_a_failed_direct_tcp_attempt_falls_back_after_its_deadline():
    """Both claim an endpoint-independent NAT (a lie): the direct TCP attempt fails by
    its deadline, then the relay joins them without a new pairing round."""
    lie = {"tcp": {"mapping": "endpoint-independent", "filtering": "endpoint-independent",
                   "port_allocation": "preserving"}}
    pair = run_pair_with_relay("symmetric-random", "symmetric-random", protocol="tcp",
                               profile_json=json.dumps(lie), punch_timeout=1.5)
    for side in (pair.initiator, pair.receiver):
        _relayed(side)
        assert side["relay_reason"].startswith("the direct attempt failed"), side
        assert 1500 <= side["connect_ms"], side


#: a lab peer that connects over TCP, says so, then reads until the stream ends
#: (bounded: the socket times out after 20 s)
LOSE = r"""
import json, os, socket, sys, time
from stunturn_diag.punch import api
role, url, target = sys.argv[1:4]
key = os.environ["STUNTURN_KEY"]
opts = dict(peer_timeout=3.0, keepalive_interval=0.5, probe=False, cache=False,
            nat_profile={"tcp": {"mapping": "address-and-port-dependent",
                                 "filtering": "address-and-port-dependent",
                                 "port_allocation": "random"}})
if role == "initiator":
    r = api.initiate(url, key, target, protocol="tcp", pair_timeout=15, **opts)
else:
    r = api.receive(url, key, protocol="tcp", wait=15, wait_interval=0.05, **opts)
out = r.as_dict(); ch = r.connection
print("connected", flush=True, file=sys.stderr)
ch.settimeout(20)
try:
    while ch.recv(65536):
        pass
    out.update(ended="eof", truncated=ch.truncated)
except socket.timeout:
    out.update(ended="hang")
except OSError as e:
    out.update(ended="error", error=str(e))
out["ended_at"] = time.monotonic()
ch.close()
print(json.dumps(out))
"""


def test_a_vanished_tcp_relay_ends_the_stream_not_hangs_it():
    with Lab(LabSpec.simple("symmetric-random", "symmetric-random")) as lab:
        turn = start_turn(lab)
        try:
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
        assert side["strategy"] == "relay" and side["protocol"] == "tcp", side
        assert side["ended"] in ("eof", "error"), side
        if side["ended"] == "eof":
            assert side["truncated"] is True, side      # no authenticated FIN: not a clean end
        assert stopped_at < side["ended_at"] < stopped_at + 10, side


def test_the_cli_forwards_a_tcp_stream_through_the_relay():
    from test_punch_relay_cli import _client, _start_pair

    with Lab(LabSpec.simple("symmetric-random", "port-restricted")) as lab:
        turn = start_turn(lab)
        try:
            ini, rec = _start_pair(lab, "tcp", turn=turn)
            got = _client(lab, "tcp")
            i_out, i_err = ini.communicate(timeout=30)
            r_out, r_err = rec.communicate(timeout=30)
        finally:
            turn.stop()
    # a 300 kB stream each way, then the client's half-close: all of it came back (the
    # relay has no TCP half-close; the FIN record carries it, the connection lingers)
    assert got["length"] > 300_000 and got["got"] == got["sent"], (got, i_err, r_err)
    assert (ini.returncode, rec.returncode) == (0, 0), (i_err, r_err)
    assert "over tcp (relay" in r_err and "relayed because relay-needed" in r_err, r_err
    assert "Traceback" not in i_err + r_err
