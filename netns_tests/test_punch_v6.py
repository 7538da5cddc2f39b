"""UDP hole punching over IPv6 in the lab (issue 14, first step): sites whose IPv4 NATs
are symmetric (random ports: no IPv4 punch without a relay) but whose IPv6 gateways are
RFC 6092 firewalls (no NAT, filtering). Given the server's IPv6 URL, both peers probe,
bind and punch over IPv6. Through the server's IPv4 URL (a dual-stack server) the peers
exchange candidates of both families and race them (Happy Eyeballs, RFC 8305): IPv6 with
a head start, the first authenticated path kept by both, the family and why reported."""

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


def _pair(lab: Lab, *flags: str, messages: tuple[str, str] | None = None,
          protocol: str = "udp"):
    """Initiator a1 and receiver b1 through the server's IPv6 URL: (exit codes, outputs, errors)."""
    serve_in_lab(lab, extra=("--ip6", lab.server_ip6, "--alt-ip6", lab.server_alt_ip6))
    url6 = f"http://[{lab.server_ip6}]:{HTTP_PORT}"
    env = dict(os.environ, STUNTURN_KEY=KEY)
    stdin = subprocess.PIPE if messages else None
    cli = [sys.executable, "-m", "stunturn_diag", "punch", url6, "--protocol", protocol, *flags]
    ini = lab.popen("a1", [*cli, "--target-ip", lab.site_public_ip6("b")], env=env, stdin=stdin)
    rec = lab.popen("b1", [*cli, "--wait", "10", "--wait-interval", "0.05"], env=env, stdin=stdin)
    for proc, text in zip((ini, rec), messages or ()):
        proc.stdin.write(text)
        proc.stdin.close()
        proc.stdin = None      # communicate() must not flush the closed pipe
    r_out, r_err = rec.communicate(timeout=60)
    i_out, i_err = ini.communicate(timeout=60)
    return (ini.returncode, rec.returncode), (i_out, r_out), (i_err[-4000:], r_err[-4000:])


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


def _pair4(lab: Lab, *flags: str, messages: tuple[str, str] | None = None,
           protocol: str = "udp", receiver_protocol: str | None = "udp", serve: bool = True):
    """The same pair through the server's IPv4 URL (a dual-stack server): --json results
    (with ``messages``: the exit codes and what each side received instead); ``serve``:
    start the server (False: it runs already)."""
    if serve:
        serve_in_lab(lab, extra=("--ip6", lab.server_ip6, "--alt-ip6", lab.server_alt_ip6))
    url = f"http://{lab.server_ip}:{HTTP_PORT}"
    env = dict(os.environ, STUNTURN_KEY=KEY)
    cli = [sys.executable, "-m", "stunturn_diag", "punch", url,
           "--no-relay", "--punch-timeout", "6", *flags, *(() if messages else ("--json",))]
    stdin = subprocess.PIPE if messages else None
    ini = lab.popen("a1", [*cli, "--protocol", protocol, "--target-ip", lab.site_public_ip("b")],
                    env=env, stdin=stdin)
    rec = lab.popen("b1", [*cli, *(("--protocol", receiver_protocol) if receiver_protocol else ()),
                           "--wait", "10", "--wait-interval", "0.05"], env=env, stdin=stdin)
    for proc, text in zip((ini, rec), messages or ()):
        proc.stdin.write(text)
        proc.stdin.close()
        proc.stdin = None
    r_out, r_err = rec.communicate(timeout=60)
    i_out, i_err = ini.communicate(timeout=60)
    errs = (i_err[-2500:], r_err[-2500:])
    if messages:
        return (ini.returncode, rec.returncode), (i_out, r_out), errs
    return (json.loads(i_out), json.loads(r_out)), errs


def test_dual_stack_symmetric_v4_nats_with_v6_firewalls_connect_over_ipv6_from_the_v4_url():
    """Happy Eyeballs: IPv4 is unpunchable (random ports both sides), so only IPv6 is tried."""
    with Lab(LabSpec.simple("symmetric-random+v6=apdf", "symmetric-random+v6=apdf")) as lab:
        (i, r), errs = _pair4(lab)
    assert i["ok"] and r["ok"], (i, r, errs)
    assert i["family"] == r["family"] == 6 and i["strategy"] == "ipv6"
    assert i["peer"]["ip"] == lab.host_ip6("b1") and r["peer"]["ip"] == lab.host_ip6("a1")
    for side in (i, r):
        assert side["families"]["6"]["result"] == "won"
        assert side["families"]["4"]["result"] == "not-tried"
        assert "IPv4 cannot be punched" in side["families"]["4"]["reason"]


def test_dual_stack_both_families_punchable_race_and_agree_on_one_path():
    with Lab(LabSpec.simple("port-restricted+v6=apdf", "full-cone+v6=eif")) as lab:
        (i, r), errs = _pair4(lab)
    assert i["ok"] and r["ok"], (i, r, errs)
    assert i["family"] == r["family"], (i, r)           # both kept the same path
    fam = str(i["family"])
    other = "4" if fam == "6" else "6"
    for side in (i, r):
        assert side["families"][fam]["result"] == "won"
        assert side["families"][other]["tried"] is True
        assert side["families"][other]["result"] in ("lost", "failed")
    assert "punching over IPv6 and IPv4 (50 ms later)" in errs[0]


def test_without_ipv6_the_v4_punch_says_so_in_one_line():
    """b has no IPv6 at all (no address, no route): both sides punch over IPv4, each
    saying once why IPv6 was not used, and no error."""
    with Lab(LabSpec.simple("port-restricted+v6=apdf", "full-cone")) as lab:
        (i, r), errs = _pair4(lab)
    assert i["ok"] and r["ok"], (i, r, errs)
    assert i["family"] == r["family"] == 4
    assert "the peer has no IPv6 path" in i["families"]["6"]["reason"]
    assert "this side has no IPv6 path" in r["families"]["6"]["reason"]
    for err in errs:
        lines = [ln for ln in err.splitlines() if "IPv6 unavailable" in ln or "IPv6 not tried" in ln]
        assert len(lines) == 1 and "Traceback" not in err, err


def test_no_ipv6_option_keeps_the_punch_on_ipv4():
    with Lab(LabSpec.simple("port-restricted+v6=apdf", "full-cone+v6=eif")) as lab:
        (i, r), errs = _pair4(lab, "--no-ipv6")
    assert i["family"] == r["family"] == 4, (i, r, errs)
    assert i["families"]["6"] == {"tried": False, "result": "not-tried",
                                  "reason": "this side has no IPv6 path: IPv6 disabled (--no-ipv6)"}


def test_dual_stack_race_carries_data_both_ways_on_the_kept_path():
    with Lab(LabSpec.simple("port-restricted+v6=apdf", "full-cone+v6=eif")) as lab:
        codes, (i_out, r_out), errs = _pair4(lab, messages=("from a1\n", "from b1\n"))
    assert codes == (0, 0), errs
    assert i_out == "from b1\n" and r_out == "from a1\n"
    assert "authenticated first" in errs[0] and "authenticated first" in errs[1]


@pytest.mark.parametrize("syn", ["drop", "rst"])
def test_tcp_simultaneous_open_over_ipv6_behind_stateful_firewalls(syn):
    """TCP through the server's IPv6 URL: both sides' firewalls admit only what went out
    first (address-and-port-dependent), unsolicited SYNs dropped or answered with RST;
    the simultaneous open (low-hop-limit priming SYN, then full ones) gets through."""
    site = f"symmetric-random+v6=apdf+v6-syn={syn}"
    with Lab(LabSpec.simple(site, site)) as lab:
        codes, (i_out, r_out), errs = _pair(lab, "--json", "--no-relay", protocol="tcp")
    i, r = json.loads(i_out), json.loads(r_out)
    assert i["ok"] and r["ok"], (i, r, errs)
    assert i["protocol"] == r["protocol"] == "tcp" and i["family"] == r["family"] == 6
    assert i["peer"]["ip"] == lab.host_ip6("b1") and r["peer"]["ip"] == lab.host_ip6("a1")


def test_tcp_over_ipv6_carries_data():
    with Lab(LabSpec.simple("port-restricted+v6=apdf", "symmetric-random+v6=adf")) as lab:
        codes, (i_out, r_out), errs = _pair(lab, "--no-relay", protocol="tcp",
                                            messages=("tcp from a1\n", "tcp from b1\n"))
    assert codes == (0, 0), errs
    assert i_out == "tcp from b1\n" and r_out == "tcp from a1\n"


def test_dual_stack_tcp_symmetric_v4_nats_with_v6_firewalls_connect_over_ipv6():
    """TCP through the IPv4 URL; the receiver prepares both protocols (no --protocol)."""
    site = "symmetric-random+v6=apdf+v6-syn=rst"
    with Lab(LabSpec.simple(site, site)) as lab:
        (i, r), errs = _pair4(lab, protocol="tcp", receiver_protocol=None)
    assert i["ok"] and r["ok"], (i, r, errs)
    assert i["protocol"] == "tcp" and i["family"] == r["family"] == 6
    assert i["peer"]["ip"] == lab.host_ip6("b1") and r["peer"]["ip"] == lab.host_ip6("a1")
    for side in (i, r):
        assert side["families"]["6"]["result"] == "won"
        assert "IPv4 cannot be punched" in side["families"]["4"]["reason"]


def test_dual_stack_tcp_race_agrees_and_carries_data():
    with Lab(LabSpec.simple("port-restricted+v6=apdf", "full-cone+v6=eif")) as lab:
        (i, r), errs = _pair4(lab, protocol="tcp", receiver_protocol="tcp")
        assert i["ok"] and r["ok"], (i, r, errs)
        assert i["family"] == r["family"], (i, r)
        assert "punching over IPv6 and IPv4 (50 ms later)" in errs[0]
        codes, (i_out, r_out), errs = _pair4(lab, protocol="tcp", receiver_protocol="tcp",
                                             messages=("tcp a1\n", "tcp b1\n"), serve=False)
    assert codes == (0, 0), errs
    # (seen once in a loaded CI run: both exit 0, the initiator printed nothing; the
    # stderr of both says which path each kept and how its stream ended)
    assert (i_out, r_out) == ("tcp b1\n", "tcp a1\n"), errs


#: a dual-stack punch matrix (issue 14): every pair punchable on at least one family
#: connects on it, both sides on the same one, with the family and the reasons reported
DUAL_STACK_PAIRS = [
    ("symmetric-random+v6=nptv6", "symmetric-random+v6=apdf", 6),   # IPv4 relay-needed
    ("symmetric-random+v6=nat66", "port-restricted+v6=apdf", 6),    # IPv4 relay-needed
    ("full-cone+v6=open", "symmetric-random+v6=adf", None),         # both punchable: a race
    ("port-restricted", "full-cone+v6=apdf", 4),                    # a has no IPv6
]


@pytest.mark.parametrize("a,b,family", DUAL_STACK_PAIRS)
def test_dual_stack_matrix_connects_on_a_family_and_says_why(a, b, family):
    with Lab(LabSpec.simple(a, b)) as lab:
        (i, r), errs = _pair4(lab)
    assert i["ok"] and r["ok"], (i, r, errs)
    assert i["family"] == r["family"], (i, r)
    if family is not None:
        assert i["family"] == family, (i, errs)
    won, other = str(i["family"]), "4" if i["family"] == 6 else "6"
    for side in (i, r):
        assert side["families"][won]["result"] == "won"
        assert side["families"][other]["result"] in ("lost", "failed", "not-tried")
        assert side["families"][other]["reason"]
