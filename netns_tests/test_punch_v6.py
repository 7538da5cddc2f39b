"""UDP hole punching over IPv6 in the lab (issue 14, first step): two sites whose IPv4
NATs are symmetric (random ports: no IPv4 punch without a relay) but whose IPv6 gateways
are RFC 6092 firewalls (no NAT, address-and-port-dependent filtering). Given the server's
IPv6 URL, both peers probe, bind and punch over IPv6 and carry a message each way.
(Happy Eyeballs over both families from one URL is not built yet.)"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys

import pytest

from stunturn_diag.lab import Lab, LabSpec

pytestmark = pytest.mark.netns

KEY = "v6-lab-key-2001db8"


def test_symmetric_v4_nats_with_v6_firewalls_connect_over_ipv6():
    with Lab(LabSpec.simple("symmetric-random+v6=apdf", "symmetric-random+v6=apdf")) as lab:
        proc = lab.popen("srv", [sys.executable, "-m", "stunturn_diag", "serve", f"{lab.server_ip}:8080",
                                 "--alt-ip", lab.server_alt_ip, "--ip6", lab.server_ip6,
                                 "--alt-ip6", lab.server_alt_ip6, "--json", "--log-level", "WARNING"])
        assert select.select([proc.stdout], [], [], 20)[0], "the server did not start"
        proc.stdout.readline()
        url6 = f"http://[{lab.server_ip6}]:8080"
        env = dict(os.environ, STUNTURN_KEY=KEY)
        ini = lab.popen("a1", [sys.executable, "-m", "stunturn_diag", "punch", url6, "--target-ip",
                               lab.site_public_ip6("b"), "--protocol", "udp"], env=env, stdin=subprocess.PIPE)
        rec = lab.popen("b1", [sys.executable, "-m", "stunturn_diag", "punch", url6, "--wait", "10",
                               "--wait-interval", "0.05", "--protocol", "udp"], env=env, stdin=subprocess.PIPE)
        for p, text in ((ini, "hello from a1 over IPv6\n"), (rec, "hello from b1 over IPv6\n")):
            p.stdin.write(text)
            p.stdin.close()
            p.stdin = None
        r_out, r_err = rec.communicate(timeout=60)
        i_out, i_err = ini.communicate(timeout=60)
    assert (ini.returncode, rec.returncode) == (0, 0), (i_err[-1500:], r_err[-1500:])
    assert i_out == "hello from b1 over IPv6\n" and r_out == "hello from a1 over IPv6\n"
    assert f"receiver at {lab.site_public_ip6('b')}" in i_err


def test_the_json_result_names_ipv6_addresses():
    with Lab(LabSpec.simple("port-restricted+v6=eif", "symmetric-random+v6=apdf")) as lab:
        proc = lab.popen("srv", [sys.executable, "-m", "stunturn_diag", "serve", f"{lab.server_ip}:8080",
                                 "--alt-ip", lab.server_alt_ip, "--ip6", lab.server_ip6,
                                 "--alt-ip6", lab.server_alt_ip6, "--json", "--log-level", "WARNING"])
        assert select.select([proc.stdout], [], [], 20)[0], "the server did not start"
        proc.stdout.readline()
        url6 = f"http://[{lab.server_ip6}]:8080"
        env = dict(os.environ, STUNTURN_KEY=KEY)
        ini = lab.popen("a1", [sys.executable, "-m", "stunturn_diag", "punch", url6, "--target-ip",
                               lab.site_public_ip6("b"), "--protocol", "udp", "--json"], env=env)
        rec = lab.popen("b1", [sys.executable, "-m", "stunturn_diag", "punch", url6, "--wait", "10",
                               "--wait-interval", "0.05", "--protocol", "udp", "--json"], env=env)
        r_out, r_err = rec.communicate(timeout=60)
        i_out, i_err = ini.communicate(timeout=60)
    i, r = json.loads(i_out), json.loads(r_out)
    assert i["ok"] and r["ok"], (i, r)
    assert i["peer"]["ip"] == lab.host_ip6("b1") and r["peer"]["ip"] == lab.host_ip6("a1")
    assert i["mapped"]["ip"] == lab.host_ip6("a1")      # no NAT on IPv6: the address is the host's
