"""UDP hole punching over IPv6 in the lab (issue 14, first step): sites whose IPv4 NATs
are symmetric (random ports: no IPv4 punch without a relay) but whose IPv6 gateways are
RFC 6092 firewalls (no NAT, filtering). Given the server's IPv6 URL, both peers probe,
bind and punch over IPv6. (Happy Eyeballs over both families from one URL: not built yet.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from stunturn_diag.lab import Lab, LabSpec
from stunturn_diag.lab.pair_runner import HTTP_PORT, serve_in_lab

pytestmark = pytest.mark.netns

KEY = "v6-lab-key-2001db8"


def _pair(lab: Lab, *flags: str, messages: tuple[str, str] | None = None):
    """Initiator a1 and receiver b1 through the server's IPv6 URL: (exit codes, outputs, errors)."""
    serve_in_lab(lab, extra=("--ip6", lab.server_ip6, "--alt-ip6", lab.server_alt_ip6))
    url6 = f"http://[{lab.server_ip6}]:{HTTP_PORT}"
    env = dict(os.environ, STUNTURN_KEY=KEY)
    stdin = subprocess.PIPE if messages else None
    cli = [sys.executable, "-m", "stunturn_diag", "punch", url6, "--protocol", "udp", *flags]
    ini = lab.popen("a1", [*cli, "--target-ip", lab.site_public_ip6("b")], env=env, stdin=stdin)
    rec = lab.popen("b1", [*cli, "--wait", "10", "--wait-interval", "0.05"], env=env, stdin=stdin)
    for proc, text in zip((ini, rec), messages or ()):
        proc.stdin.write(text)
        proc.stdin.close()
        proc.stdin = None      # communicate() must not flush the closed pipe
    r_out, r_err = rec.communicate(timeout=60)
    i_out, i_err = ini.communicate(timeout=60)
    return (ini.returncode, rec.returncode), (i_out, r_out), (i_err[-1500:], r_err[-1500:])


def test_symmetric_v4_nats_with_v6_firewalls_connect_over_ipv6():
    with Lab(LabSpec.simple("symmetric-random+v6=apdf", "symmetric-random+v6=apdf")) as lab:
        codes, (i_out, r_out), errs = _pair(lab, messages=("hello from a1 over IPv6\n",
                                                           "hello from b1 over IPv6\n"))
    assert codes == (0, 0), errs
    assert i_out == "hello from b1 over IPv6\n" and r_out == "hello from a1 over IPv6\n"
    assert f"receiver at {lab.site_public_ip6('b')}" in errs[0]


def test_the_json_result_names_ipv6_addresses():
    with Lab(LabSpec.simple("port-restricted+v6=eif", "symmetric-random+v6=apdf")) as lab:
        codes, outs, errs = _pair(lab, "--json")
    i, r = (json.loads(o) for o in outs)
    assert i["ok"] and r["ok"], (i, r, errs)
    assert i["peer"]["ip"] == lab.host_ip6("b1") and r["peer"]["ip"] == lab.host_ip6("a1")
    assert i["mapped"]["ip"] == lab.host_ip6("a1")      # no NAT on IPv6: the address is the host's
