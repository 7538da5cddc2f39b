"""`stunturn-diag punch` with DEFAULT flags in the lab: no ``--probe``, no ``--protocol`` on
the receiver, no ``--nat-profile``.

- The receiver learns its UDP and TCP mappings concurrently and checks in with what it got:
  behind a UDP-blocking firewall it still takes a TCP punch, and an initiator that asked
  for UDP learns at once (``protocol-unavailable``) instead of waiting out its long-poll.
- Both sides diagnose their NAT by default (the quick probe), so sequential symmetric NATs
  get the ``predict`` plan without any flag.

Every run gets its own cache folder (``XDG_CACHE_HOME``): labs of parallel runs share
LAN addresses, so one lab's profile must never be offered to another.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from stunturn_diag.lab import CATALOGUE, Lab, LabSpec, SiteSpec
from stunturn_diag.lab.pair_runner import HTTP_PORT, serve_in_lab, start_turn

pytestmark = pytest.mark.netns

KEY = "defaults-lab-key-7"
#: the initiator's long-poll: far longer than anything the tests wait for
LONG_POLL = 60


def _cli(lab, host: str, cache, *args: str) -> subprocess.Popen:
    env = dict(os.environ, STUNTURN_KEY=KEY, XDG_CACHE_HOME=str(cache), PYTHONUNBUFFERED="1")
    return lab.popen(host, [sys.executable, "-m", "stunturn_diag", "punch",
                            f"http://{lab.server_ip}:{HTTP_PORT}", *args], env=env)


def _initiator(lab, cache, *args: str) -> subprocess.Popen:
    return _cli(lab, "a1", cache, "--target-ip", lab.site_public_ip("b"), "--json",
                "--timeout", str(LONG_POLL), *args)


def _receiver(lab, cache, *args: str) -> subprocess.Popen:
    return _cli(lab, "b1", cache, "--wait", "30", "--wait-interval", "0.1", "--json", *args)


def _wait_waiting(proc: subprocess.Popen) -> None:
    """Read the initiator's stderr until it is long-polling (bounded by the poll limit)."""
    for _ in range(200):
        line = proc.stderr.readline()
        if not line or "waiting for the receiver" in line:
            return


def _result(proc: subprocess.Popen, timeout: float) -> tuple[int, dict, str]:
    out, err = proc.communicate(timeout=timeout)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return proc.returncode, (json.loads(lines[-1]) if lines else {}), err


def _connected_pair(lab, tmp_path, *initiator_args: str) -> tuple[dict, str, dict, str]:
    """Initiator (a1) and receiver (b1, default flags); both must have connected."""
    ini = _initiator(lab, tmp_path / "a", *initiator_args)
    rec = _receiver(lab, tmp_path / "b")
    r_rc, r, r_err = _result(rec, 90)
    i_rc, i, i_err = _result(ini, 90)
    assert (i_rc, r_rc) == (0, 0), json.dumps([i, i_err, r, r_err])    # whole, not cut
    return i, i_err, r, r_err


def test_receiver_behind_udp_blocked_takes_a_tcp_punch(tmp_path):
    with Lab(LabSpec.simple("port-restricted", "udp-blocked")) as lab:
        serve_in_lab(lab)
        i, i_err, r, r_err = _connected_pair(lab, tmp_path, "--protocol", "tcp")
    assert i["protocol"] == r["protocol"] == "tcp" and i["match_id"] == r["match_id"]
    assert i["peer"]["ip"] == lab.site_public_ip("b") and r["peer"]["ip"] == lab.site_public_ip("a")
    # the probe found UDP blocked: the receiver did not wait for a UDP STUN answer
    assert "udp not prepared" in r_err and "blocked" in r_err, r_err


def test_udp_initiator_learns_at_once_that_the_receiver_has_no_udp(tmp_path):
    """The receiver checks in with TCP only; both fail with the same clear reason, the
    initiator long before its 60 s long-poll would have ended."""
    with Lab(LabSpec.simple("port-restricted", "udp-blocked")) as lab:
        serve_in_lab(lab)
        ini = _initiator(lab, tmp_path / "a")           # default protocol: udp
        _wait_waiting(ini)
        rec = _receiver(lab, tmp_path / "b")
        r_rc, r, r_err = _result(rec, 60)
        # the receiver is done; the initiator must follow within a few seconds (polled)
        for _ in range(100):
            if ini.poll() is not None:
                break
            time.sleep(0.1)
        exited_soon = ini.poll() is not None
        i_rc, i, i_err = _result(ini, LONG_POLL + 30)
    assert exited_soon, ("the initiator still waited after the receiver's check-in", i, i_err)
    assert (i_rc, r_rc) == (1, 1), (i, r)
    for side in (i, r):
        assert side["ok"] is False and side["reason"] == "protocol-unavailable", side
        assert side["protocol"] == "udp" and "could not prepare" in side["message"], side
        assert "--protocol tcp" in side["message"], side
    assert i["match_id"] == r["match_id"]
    assert "Traceback" not in i_err + r_err


def test_a_no_relay_initiator_against_a_udp_blocked_receiver_with_a_relay_offered(tmp_path):
    """The server offers coturn, so the UDP-blocked receiver could take UDP through the
    relay over TCP; the initiator refuses relays (--no-relay): both fail at once with
    protocol-unavailable, the hint naming both ways out (TCP, or allowing the relay)."""
    with Lab(LabSpec.simple("port-restricted", "udp-blocked")) as lab:
        turn = start_turn(lab)
        try:
            serve_in_lab(lab, turn=turn)
            ini = _initiator(lab, tmp_path / "a", "--no-relay")
            _wait_waiting(ini)
            rec = _receiver(lab, tmp_path / "b")
            r_rc, r, r_err = _result(rec, 60)
            i_rc, i, i_err = _result(ini, LONG_POLL + 30)
        finally:
            turn.stop()
    assert (i_rc, r_rc) == (1, 1), (i, i_err, r, r_err)
    for side in (i, r):
        assert side["reason"] == "protocol-unavailable" and side["protocol"] == "udp", side
        assert "--protocol tcp" in side["message"] and "--no-relay" in side["message"], side
    assert i["match_id"] == r["match_id"]
    assert "through the TURN relay reached over TCP" in r_err, r_err
    assert "Traceback" not in i_err + r_err


@pytest.mark.parametrize("a,b", [("symmetric-sequential", "symmetric-sequential"),
                                 ("symmetric-sequential", "port-restricted"),
                                 ("port-restricted-drop", "symmetric-sequential")])
def test_sequential_symmetric_nats_connect_over_udp_with_default_flags(tmp_path, a, b):
    """The default probe gives both plans the profiles; the receiver (both transports
    prepared) counts its TCP binding after the UDP one, so the predicted ports are right."""
    with Lab(LabSpec.simple(a, b)) as lab:
        serve_in_lab(lab)
        i, i_err, r, r_err = _connected_pair(lab, tmp_path)
    assert i["protocol"] == r["protocol"] == "udp"
    assert i["strategy"] == r["strategy"] == "predict", (i, r)
    assert "probing this NAT" in i_err and "probing this NAT" in r_err
    assert "address-and-port-dependent" in (i_err if a == "symmetric-sequential" else r_err)


def test_a_second_run_reuses_the_cached_profile(tmp_path):
    """Same network, same server, within 10 minutes: no probe, the cached profile is
    shared (and still gives the predict plan); the cache file is private and keyless."""
    with Lab(LabSpec.simple("symmetric-sequential", "symmetric-sequential")) as lab:
        serve_in_lab(lab)
        for run in range(2):
            i, i_err, r, r_err = _connected_pair(lab, tmp_path)
            assert i["strategy"] == r["strategy"] == "predict", (run, i, r)
    for err in (i_err, r_err):
        assert "from the cache" in err and "probing this NAT" not in err, err
    for site in ("a", "b"):
        path = tmp_path / site / "stunturn-diag" / "nat-profiles.json"
        assert path.stat().st_mode & 0o777 == 0o600
        text = path.read_text()
        assert KEY not in text and "address-and-port-dependent" in text


def test_sequential_symmetric_nats_connect_over_tcp_from_the_receivers_second_binding(tmp_path):
    """TCP is the receiver's second binding (after UDP's first datagram): its own
    ``flows_after_stun`` in ``nat.punch.alt.tcp`` makes the predicted window right."""
    with Lab(LabSpec.simple("symmetric-sequential", "symmetric-sequential")) as lab:
        serve_in_lab(lab)
        i, i_err, r, r_err = _connected_pair(lab, tmp_path, "--protocol", "tcp")
    assert i["protocol"] == r["protocol"] == "tcp"
    assert i["strategy"] == r["strategy"] == "predict", (i, r)


@pytest.mark.parametrize("protocol", ["udp", "tcp"])
def test_two_sequential_nats_with_background_flows_connect_with_default_flags(tmp_path, protocol):
    """The shared-counter sequential NAT on both sides, each with a second LAN host opening
    100 new flows/s: the default probe still finds sequential per-destination mapping
    (its readings move with the background), both sides promise and steer their
    counters, and the predicted windows meet."""
    spec = LabSpec(sites={s: SiteSpec(nat=CATALOGUE["symmetric-sequential"], hosts=2,
                                      background_flows_per_s=100) for s in ("a", "b")})
    with Lab(spec) as lab:
        serve_in_lab(lab)
        extra = ("--protocol", "tcp") if protocol == "tcp" else ()
        i, i_err, r, r_err = _connected_pair(lab, tmp_path, *extra)
    assert i["protocol"] == r["protocol"] == protocol
    assert i["strategy"] == r["strategy"] == "predict", (i, r)
    for err in (i_err, r_err):
        assert "probing this NAT" in err and "port counter steered" in err, err
