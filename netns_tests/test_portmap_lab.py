"""Port mapping against the real miniupnpd on a lab NAT box (``+portmap`` sites).

- the probe's ``port_mapping`` block equals the lab's ground truth: on a symmetric NAT
  with ``+portmap`` all three protocols answer with the STUN-mapped address (usable);
  behind a NAT without a mapping service nothing answers;
- a mapping made with each protocol lets unsolicited UDP from the internet reach the
  LAN host through the lab's own nftables NAT (symmetric, address-and-port-dependent
  filtering, input firewall: nothing else would let it in), and the mapping is deleted
  again;
- miniupnpd is ended with the lab.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys

import pytest

from stunturn_diag.lab import Lab, LabSpec
from stunturn_diag.lab.pair_runner import serve_in_lab

pytestmark = pytest.mark.netns

PORT = 8080


def _serve(lab: Lab) -> str:
    info = serve_in_lab(lab, http_port=PORT, wait_timeout=None).info   # ready within 20 s
    assert info["http_url"].endswith(f":{PORT}")
    return f"http://{lab.server_ip}:{PORT}"


def _probe(lab: Lab, url: str) -> dict:
    r = lab.exec("a1", [sys.executable, "-m", "stunturn_diag", "probe", url, "--no-tcp",
                        "--json"], timeout=90)
    assert r.stdout.strip(), f"no JSON output (exit {r.returncode}): {r.stderr[-2000:]}"
    return json.loads(r.stdout)


def _truth(block: dict) -> dict:
    return {k: block[k] for k in ("pcp", "nat_pmp", "upnp", "usable")}


def _miniupnpd_pids(lab: Lab) -> list[int]:
    """PIDs of the processes in nat-a's namespace whose name is miniupnpd."""
    out = subprocess.run(["ip", "netns", "pids", lab.netns(lab.nat_node("a"))],
                         capture_output=True, text=True, timeout=10).stdout
    pids = []
    for pid in map(int, out.split()):
        try:
            with open(f"/proc/{pid}/comm") as fh:
                if fh.read().strip() == "miniupnpd":
                    pids.append(pid)
        except OSError:
            pass
    return pids


def test_probe_reports_port_mapping_on_a_symmetric_nat_and_none_without():
    spec = LabSpec.simple("symmetric-random+portmap", "port-restricted")
    with Lab(spec) as lab:
        assert _miniupnpd_pids(lab), "miniupnpd is not running on nat-a"
        url = _serve(lab)
        got = _probe(lab, url)
        pm = got["port_mapping"]
        assert got["udp"]["mapping"] == "address-and-port-dependent"
        assert _truth(pm) == lab.expected("a")["port_mapping"] == \
            {"pcp": True, "nat_pmp": True, "upnp": True, "usable": True}, pm
        assert pm["external_ip"] == got["public_ip"] == lab.site_public_ip("a")
        assert pm["gateway"] == "192.168.1.1" and pm["notes"] == []
        for name in ("pcp", "nat_pmp", "upnp"):
            assert pm["evidence"][name]["result"] == "SUCCESS", pm["evidence"]
        # the probe deleted its PCP mapping again: miniupnpd's nft chain is empty
        chain = lab.exec(lab.nat_node("a"), ["nft", "list", "chain", "inet", "miniupnpd",
                                             "prerouting_miniupnpd"]).stdout
        assert "dnat" not in chain, chain

        # site b has no mapping service: nothing answers, not usable
        other = lab.exec("b1", [sys.executable, "-m", "stunturn_diag", "probe", url, "--no-tcp",
                                "--json"], timeout=90)
        pm_b = json.loads(other.stdout)["port_mapping"]
        assert _truth(pm_b) == lab.expected("b")["port_mapping"] == \
            {"pcp": False, "nat_pmp": False, "upnp": False, "usable": False}, pm_b
        assert pm_b["external_ip"] is None
        pids = _miniupnpd_pids(lab)
    for pid in pids:        # ended with the lab
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_behind_a_cgnat_the_gateway_answers_but_is_not_usable():
    spec = LabSpec.simple("port-restricted+portmap", "full-cone", cgnat=("a",))
    with Lab(spec) as lab:
        got = _probe(lab, _serve(lab))
        pm = got["port_mapping"]
        assert _truth(pm) == lab.expected("a")["port_mapping"] == \
            {"pcp": True, "nat_pmp": True, "upnp": True, "usable": False}, pm
        assert pm["external_ip"] != got["public_ip"] == lab.site_public_ip("a")
        assert pm["evidence"]["nat_pmp"]["result"] == "NETWORK_FAILURE"


@pytest.mark.parametrize("method", ["pcp", "nat-pmp", "upnp"])
def test_a_mapping_lets_unsolicited_udp_reach_the_host(method):
    spec = LabSpec.simple("symmetric-random+portmap", "full-cone")
    with Lab(spec) as lab:
        port = 40123
        mapper = lab.popen("a1", [sys.executable, "-m", "stunturn_diag.portmap", "map", method,
                                  "udp", str(port), "--lifetime", "120", "--listen", "20"])
        ready, _, _ = select.select([mapper.stdout], [], [], 15)
        assert ready, "the mapping client printed nothing"
        m = json.loads(mapper.stdout.readline())
        assert m["ok"] is True, m
        assert m["external_ip"] == lab.site_public_ip("a") and m["external_port"]
        target = f"{m['external_ip']}:{m['external_port']}"
        # the server host never heard from a1: bounded sends until one arrives, then "stop"
        sender = ("import socket, sys, time, select\n"
                  "ip, port = sys.argv[1].rsplit(':', 1)\n"
                  "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                  "for i in range(20):\n"
                  "    s.sendto(b'hello %d' % i, (ip, int(port)))\n"
                  "    if select.select([sys.stdin], [], [], 0.2)[0]: break\n"
                  "s.sendto(b'stop', (ip, int(port)))\n")
        feeder = lab.popen("srv", [sys.executable, "-c", sender, target], stdin=subprocess.PIPE)
        ready, _, _ = select.select([mapper.stdout], [], [], 10)
        assert ready, "no datagram reached a1 through the mapping"
        first = json.loads(mapper.stdout.readline())
        feeder.stdin.write("got\n")
        feeder.stdin.flush()
        assert first["received"].startswith("hello")
        assert first["from"].startswith(lab.server_ip + ":")
        rest = mapper.communicate(timeout=30)[0]
        lines = [json.loads(x) for x in rest.splitlines() if x.strip()]
        assert lines[-1] == {"deleted": True}, lines
        chain = lab.exec(lab.nat_node("a"), ["nft", "list", "chain", "inet", "miniupnpd",
                                             "prerouting_miniupnpd"]).stdout
        assert f"dport {m['external_port']}" not in chain, chain
