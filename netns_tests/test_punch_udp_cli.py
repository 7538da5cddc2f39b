"""`stunturn-diag punch` end to end in the lab: same NAT, masquerade on both sides, relay.

These run the real CLI in the lab hosts (the matrix uses the library API).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from stunturn_diag.lab import Lab, LabSpec
from stunturn_diag.lab.pair_runner import HTTP_PORT, serve_in_lab

pytestmark = pytest.mark.netns

KEY = "cli-lab-key-42"


def _cli(lab, host: str, *args: str, stdin=None):
    env = dict(os.environ, STUNTURN_KEY=KEY)
    return lab.popen(host, [sys.executable, "-m", "stunturn_diag", "punch",
                            f"http://{lab.server_ip}:{HTTP_PORT}", *args], env=env,
                     stdin=stdin)


@pytest.mark.parametrize("nat", ["port-restricted", "symmetric-random"])
def test_peers_behind_the_same_nat_connect_over_the_lan(nat):
    # symmetric-random has no hairpinning: only the LAN candidates can work
    with Lab(LabSpec.simple(nat, same_nat=True)) as lab:
        serve_in_lab(lab)
        ini = _cli(lab, "a1", "--target-ip", lab.site_public_ip("a"), "--json")
        rec = _cli(lab, "a2", "--wait", "10", "--wait-interval", "0.05", "--json")
        r_out, r_err = rec.communicate(timeout=40)
        i_out, i_err = ini.communicate(timeout=40)
    assert rec.returncode == 0 and ini.returncode == 0, (i_err, r_err)
    i, r = json.loads(i_out), json.loads(r_out)
    assert i["strategy"] == r["strategy"] == "lan"
    assert i["peer"] == {"ip": lab.host_ip("a2"), "port": r["local"]["port"]}
    assert r["peer"]["ip"] == lab.host_ip("a1")


def test_masquerade_on_both_sides_relays_stdin_both_ways():
    """Plain Linux masquerade twice: the conntrack port-collision case, over the CLI relay."""

    with Lab(LabSpec.simple("port-restricted", "port-restricted")) as lab:
        serve_in_lab(lab)
        ini = _cli(lab, "a1", "--target-ip", lab.site_public_ip("b"), stdin=subprocess.PIPE)
        rec = _cli(lab, "b1", "--wait", "10", "--wait-interval", "0.05", stdin=subprocess.PIPE)
        for proc, text in ((ini, "hello from a1\n"), (rec, "hello from b1\n")):
            proc.stdin.write(text)
            proc.stdin.close()
            proc.stdin = None      # communicate() must not flush the closed pipe
        r_out, r_err = rec.communicate(timeout=40)
        i_out, i_err = ini.communicate(timeout=40)
    assert (ini.returncode, rec.returncode) == (0, 0), (i_err, r_err)
    assert i_out == "hello from b1\n" and r_out == "hello from a1\n"
    assert "authenticated" in i_err and "authenticated" in r_err


def test_failure_json_names_the_cause_and_exits_nonzero(tmp_path):
    with Lab(LabSpec.simple("symmetric-random", "symmetric-random")) as lab:
        serve_in_lab(lab)
        profiles = {}
        for site in ("a", "b"):       # shared NAT profiles, as after a probe on each side
            profiles[site] = tmp_path / f"{site}.json"
            profiles[site].write_text(json.dumps(lab.expected(site)))
        ini = _cli(lab, "a1", "--target-ip", lab.site_public_ip("b"), "--json",
                   "--punch-timeout", "1", "--nat-profile", str(profiles["a"]))
        rec = _cli(lab, "b1", "--wait", "10", "--wait-interval", "0.05", "--json",
                   "--punch-timeout", "1", "--nat-profile", str(profiles["b"]))
        r_out, _ = rec.communicate(timeout=40)
        i_out, _ = ini.communicate(timeout=40)
    assert (ini.returncode, rec.returncode) == (1, 1)
    for out in (json.loads(i_out), json.loads(r_out)):
        assert out["ok"] is False and out["reason"] == "relay-needed"
        assert "random port" in out["message"]
        assert out["strategy"] == "relay-needed" and out["attempts"]


def test_quick_probe_gives_both_sides_the_profiles_to_predict_ports():
    """Sequential symmetric NATs: only known profiles make the `predict` plan possible."""
    with Lab(LabSpec.simple("symmetric-sequential", "symmetric-sequential")) as lab:
        serve_in_lab(lab)
        ini = _cli(lab, "a1", "--target-ip", lab.site_public_ip("b"), "--json", "--probe",
                   "--timeout", "60")
        # no --protocol: the receiver also prepares TCP (one more flow through its NAT)
        rec = _cli(lab, "b1", "--wait", "60", "--wait-interval", "0.1", "--json", "--probe")
        r_out, r_err = rec.communicate(timeout=120)
        i_out, i_err = ini.communicate(timeout=120)
    assert (ini.returncode, rec.returncode) == (0, 0), (i_out, i_err, r_out, r_err)
    i, r = json.loads(i_out), json.loads(r_out)
    assert i["strategy"] == r["strategy"] == "predict"
    assert "probing this NAT" in i_err and "address-and-port-dependent" in i_err
