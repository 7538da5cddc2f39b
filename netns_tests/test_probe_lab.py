"""`stunturn-diag probe` against real kernel NATs: every catalogue type, twice, UDP and TCP.

Each test builds its own lab (unique namespace prefix, always torn down), runs our
server (or coturn) in the lab's server namespace with its two IPs, and runs the probe
CLI on the LAN host. The verdicts must equal ``NatSpec.expected`` on both runs: order
and leftover NAT state (conntrack entries of the first run) must not change them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time

import pytest

from stunturn_diag.lab import CATALOGUE, Lab, LabSpec, SiteSpec
from stunturn_diag.lab.pair_runner import serve_in_lab

pytestmark = pytest.mark.netns

PORT = 8080
HOST = "a1"


def serve(lab: Lab) -> str:
    """Start our server in the lab's server namespace; returns its URL once it listens."""
    info = serve_in_lab(lab, http_port=PORT, wait_timeout=None).info   # ready within 20 s
    assert info["http_url"].endswith(f":{PORT}"), info
    return f"http://{lab.server_ip}:{PORT}"


def probe(lab: Lab, *args: str, host: str = HOST) -> tuple[int, dict]:
    r = lab.exec(host, ["python3", "-m", "stunturn_diag", "probe", *args, "--json"], timeout=90)
    assert r.stdout.strip(), f"no JSON output (exit {r.returncode}): {r.stderr[-2000:]}"
    return r.returncode, json.loads(r.stdout)


def mismatches(expected: dict, got: dict, protocols=("udp", "tcp")) -> dict:
    """Every ground-truth field whose probe value differs: {field: (expected, got)}."""
    bad = {}
    if expected["nat"] != got["nat"]:
        bad["nat"] = (expected["nat"], got["nat"])
    for proto in protocols:
        for key, value in expected[proto].items():
            if got[proto].get(key) != value:
                bad[f"{proto}.{key}"] = (value, got[proto].get(key))
    return bad


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_verdicts_equal_ground_truth_on_repeated_runs(name):
    nat = CATALOGUE[name]
    with Lab(LabSpec(sites={"a": SiteSpec(nat=nat)})) as lab:
        url = serve(lab)
        for run in range(2):
            rc, got = probe(lab, url)
            assert mismatches(lab.expected("a"), got) == {}, f"run {run}: {got['undetermined']}"
            assert got["schema"] == "stunturn-diag/probe" and got["schema_version"] == 1
            if nat.udp_blocked:
                assert rc == 3 and got["status"] == "partial"
            else:
                assert rc == 0 and got["status"] == "diagnosed", got["undetermined"]
                assert got["public_ip"] == lab.site_public_ip("a")
            if nat.nat and not nat.udp_blocked:
                assert got["nat_layers"]["count"] == 1 and got["nat_layers"]["cgnat"] is False
            if nat.nat and nat.mapping.value == "endpoint-independent" and not nat.udp_blocked:
                assert got["tcp"]["simultaneous_open"] is True  # (its TTL comes from a UDP walk)


EIM = [n for n, nat in CATALOGUE.items() if nat.nat and nat.mapping.value == "endpoint-independent"]


@pytest.mark.parametrize("name", EIM)
def test_simultaneous_open_is_decided_behind_every_eim_nat(name):
    """Root, no libpcap needed: the SYN watch is our own BPF-filtered raw socket, so the
    verdict is decided (not null) behind every endpoint-independent NAT of the catalogue,
    also where UDP is blocked (the low TTL then comes from a TCP walk), and no test failed."""
    nat = CATALOGUE[name]
    with Lab(LabSpec(sites={"a": SiteSpec(nat=nat)})) as lab:
        rc, got = probe(lab, serve(lab))
        so = got["tcp"]["evidence"]["simultaneous_open"]
        assert got["tcp"]["simultaneous_open"] is not None, so
        if not nat.loss_percent:  # on the lossy link a lost SYN may make it "no"; it is still decided
            assert got["tcp"]["simultaneous_open"] is True, so
        assert got["failed"] == [] and not so.get("failed"), got["failed"]
        assert rc == (3 if nat.udp_blocked else 0), got["undetermined"]


@pytest.mark.parametrize("inner,outer", [("full-cone", "port-restricted"),
                                         ("port-restricted", "symmetric-random")])
def test_behind_carrier_grade_nat(inner, outer):
    """Verdicts equal the stacked ground truth (fields it models); the CGNAT (100.64/10) is
    seen as a second layer. Routers rate-limit ICMP per destination (Linux: burst 6, then
    1/s) and a non-hairpinning NAT answers the hairpin probes with ICMP, so the layer count
    is only asserted on the first run: it is a lower bound."""
    spec = LabSpec(sites={"a": SiteSpec(nat=CATALOGUE[inner], cgnat=CATALOGUE[outer])})
    with Lab(spec) as lab:
        url = serve(lab)
        expected = lab.expected("a")
        for key in ("udp", "tcp"):
            expected[key] = {k: v for k, v in expected[key].items() if v is not None}
        for run in range(2):
            rc, got = probe(lab, url)
            assert mismatches(expected, got) == {}, f"run {run}"
            assert got["public_ip"] == lab.site_public_ip("a")
            if run == 0:
                assert got["nat_layers"]["count"] == 2 and got["nat_layers"]["cgnat"] is True


def test_binding_lifetime_is_bracketed():
    nat = CATALOGUE["port-restricted"].but(udp_timeout=3)
    with Lab(LabSpec(sites={"a": SiteSpec(nat=nat)})) as lab:
        rc, got = probe(lab, serve(lab), "--lifetime", "8", "--no-tcp")
        life = got["udp"]["binding_lifetime"]
        assert life["min_s"] <= 3 <= life["max_s"], got["udp"]["evidence"]["binding_lifetime"]
        assert rc == 0


def test_server_unreachable_exit_code():
    with Lab(LabSpec(sites={"a": SiteSpec(nat=CATALOGUE["port-restricted"])})) as lab:
        rc, got = probe(lab, f"http://{lab.server_ip}:{PORT}")  # nothing listens
        assert rc == 4 and got["status"] == "unreachable"
        # no route at all to the STUN server: also "could not reach the server", not an error
        lab.exec(HOST, ["ip", "route", "del", "default"], check=True)
        r = lab.exec(HOST, ["python3", "-m", "stunturn_diag", "probe", "--stun", f"{lab.server_ip}:3478",
                            "--json"], timeout=60)
        assert r.returncode == 4 and "Traceback" not in r.stderr, r.stderr
        got = json.loads(r.stdout)
        assert got["status"] == "unreachable" and any("no route" in n for n in got["notes"])


def _coturn(lab: Lab, workdir: str) -> None:
    """coturn as an RFC 5780 STUN server on the server's two IPs (ports 3478/3479)."""
    log = open(os.path.join(workdir, "turnserver.log"), "wb")
    lab.popen("srv", ["turnserver", "-n", "--listening-ip", lab.server_ip, "--listening-ip",
                      lab.server_alt_ip, "--relay-ip", lab.server_ip, "-p", "3478",
                      "--alt-listening-port", "3479", "--no-cli", "--no-tls", "--no-dtls", "--stun-only",
                      "--log-file", "stdout", "--simple-log",
                      "--pidfile", os.path.join(workdir, "turnserver.pid"),
                      "--userdb", os.path.join(workdir, "turndb")], stdout=log, stderr=subprocess.STDOUT)
    check = ("import socket,sys;from stunturn_diag.sansio.stun import encode;from stunturn_diag.stun_requests import fresh_binding_request;"
             "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(0.2);"
             f"s.sendto(encode(fresh_binding_request()),('{lab.server_ip}',3478));s.recv(2048)")
    for _ in range(50):
        if lab.exec("srv", ["python3", "-c", check]).returncode == 0:
            return
        time.sleep(0.1)
    pytest.fail("coturn did not answer: " + open(os.path.join(workdir, "turnserver.log")).read()[-2000:])


@pytest.mark.skipif(shutil.which("turnserver") is None and not os.environ.get("CI"),
                    reason="coturn (turnserver) is not installed")
@pytest.mark.parametrize("name", [n for n in CATALOGUE if n != "udp-blocked"])
def test_coturn_as_server_gives_the_same_udp_verdicts(name):
    with Lab(LabSpec(sites={"a": SiteSpec(nat=CATALOGUE[name])})) as lab, \
            tempfile.TemporaryDirectory() as workdir:
        os.chmod(workdir, 0o777)
        _coturn(lab, workdir)
        for run in range(2):
            rc, got = probe(lab, "--stun", f"{lab.server_ip}:3478")
            assert mismatches(lab.expected("a"), got, ("udp",)) == {}, f"run {run}: {got['undetermined']}"
            assert got["server"]["endpoints"]["source"] == "other-address"
            assert {s["test"] for s in got["skipped"]} >= {"tcp"}
            assert rc == 0


@pytest.mark.parametrize("icmp_type", ["port-unreachable", "admin-prohibited"])
def test_nat_answering_syns_with_icmp_is_told_apart_from_rst(icmp_type):
    """The kernel reports an ICMP port unreachable to connect() exactly like a RST
    (ECONNREFUSED); the server's IP_RECVERR error queue tells them apart. The catalogue's
    ICMP-answering NAT (port-restricted-icmp) when the lab has it; the admin-prohibited
    code is one rule more, put in front of the catalogue's."""
    icmp_nat = CATALOGUE.get("port-restricted-icmp")
    nat = icmp_nat or CATALOGUE["port-restricted-drop"]
    with Lab(LabSpec(sites={"a": SiteSpec(nat=nat)})) as lab:
        if icmp_nat is None or icmp_type != "port-unreachable":
            lab.exec(lab.nat_node("a"), ["nft", "insert", "rule", "ip", "stunturn_lab", "input", "iifname",
                                         "wan0", "meta", "l4proto", "tcp", "ct", "state", "new", "reject",
                                         "with", "icmp", "type", icmp_type], check=True)
        rc, got = probe(lab, serve(lab))
        assert got["tcp"]["unsolicited_syn"] == "icmp"
        assert got["tcp"]["filtering"] == "address-and-port-dependent"
        assert got["udp"]["filtering"] == "address-and-port-dependent" and rc == 0
        if icmp_type == "admin-prohibited":  # the server saw that very ICMP code (13)
            codes = {a.get("icmp", {}).get("code") for a in
                     got["tcp"]["evidence"]["unsolicited_syn"]["attempts"]}
            assert 13 in codes, got["tcp"]["evidence"]["unsolicited_syn"]


def test_pcap_in_the_lab_holds_both_protocols(tmp_path):
    with Lab(LabSpec(sites={"a": SiteSpec(nat=CATALOGUE["port-restricted"])})) as lab:
        path = tmp_path / "probe.pcap"
        rc, got = probe(lab, serve(lab), "--pcap", str(path))
        assert rc == 0 and not [s for s in got["skipped"] if s["test"] == "pcap"]
        import scapy.layers.inet  # noqa: F401
        from scapy.utils import rdpcap
        packets = rdpcap(str(path))
        assert any(p.haslayer("UDP") and p["UDP"].dport == 3478 for p in packets)
        assert any(p.haslayer("TCP") and p["TCP"].dport == 3478 for p in packets)
        assert any(p.haslayer("ICMP") and p["ICMP"].type == 11 for p in packets)  # TTL walk
        ttl = got["tcp"]["evidence"]["simultaneous_open"]["detail"]["ttl"]
        assert any(p.haslayer("TCP") and str(p["TCP"].flags) == "S" and p["IP"].ttl == ttl
                   for p in packets)  # the low-TTL SYN Scapy crafted for simultaneous open


#: in a lab host: the punch profile, as punch shares it and its decision reads it back
PUNCH_PROFILE = r"""
import json, sys
from stunturn_diag.probe import run_probe
from stunturn_diag.sansio.probe.profile import punch_profile
from stunturn_diag.sansio.punch.decision import profile_from_details
r = run_probe(sys.argv[1], punch_profile=True)
shared = punch_profile(r)
out = {"nat": r.nat, "status": r.status, "skipped": [s["test"] for s in r.skipped],
       "elapsed_ms": r.elapsed_ms}
for proto, reachable in (("udp", r.udp_reachable), ("tcp", r.tcp_reachable)):
    p = profile_from_details(shared, proto)
    out[proto] = {"reachable": reachable, "mapping": p.mapping and p.mapping.value,
                  "filtering": p.filtering and p.filtering.value,
                  "port_allocation": p.allocation and p.allocation.value}
print(json.dumps(out))
"""
DECISION_FIELDS = ("reachable", "mapping", "filtering", "port_allocation")


def _punch_profile_equals_the_truth(lab: Lab, udp_blocked: bool, *, stacked: bool = False) -> None:
    """``stacked``: behind a CGNAT, where None in the ground truth means "not modelled"."""
    url = serve(lab)
    truth = lab.expected("a")
    expected = {"nat": truth["nat"], **{p: {k: truth[p][k] for k in DECISION_FIELDS
                                            if not (stacked and truth[p][k] is None)}
                                        for p in ("udp", "tcp")}}
    for run in range(2):
        r = lab.exec(HOST, ["python3", "-c", PUNCH_PROFILE, url], timeout=60)
        assert r.returncode == 0 and r.stdout.strip(), r.stderr[-2000:]
        got = json.loads(r.stdout)
        assert mismatches(expected, got) == {}, f"run {run}: {got}"
        assert {"udp.hairpin", "tcp.simultaneous_open", "nat_layers"} <= set(got["skipped"])
        assert got["status"] == ("partial" if udp_blocked else "diagnosed")


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_punch_profile_gives_the_decision_the_ground_truth(name):
    """What punch's quick probe shares, read back as the punch decision reads it
    (``profile_from_details``), equals the lab's ground truth on every NAT type, on two runs
    (the second behind the first one's conntrack state); hairpin, the move test,
    simultaneous open and the TTL walk are left out (skipped, not undetermined)."""
    with Lab(LabSpec(sites={"a": SiteSpec(nat=CATALOGUE[name])})) as lab:
        _punch_profile_equals_the_truth(lab, CATALOGUE[name].udp_blocked)


def test_punch_profile_behind_carrier_grade_nat():
    """Behind two NATs (port-restricted inside symmetric-random) the profile describes what
    the peer meets: the stacked ground truth, the fields it models."""
    spec = LabSpec(sites={"a": SiteSpec(nat=CATALOGUE["port-restricted"],
                                        cgnat=CATALOGUE["symmetric-random"])})
    with Lab(spec) as lab:
        _punch_profile_equals_the_truth(lab, False, stacked=True)
