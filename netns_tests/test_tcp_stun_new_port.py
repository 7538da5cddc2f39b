"""The punch's TCP STUN binding leaves a stuck first port for a new one.

On the lab's 10 % lossy NAT about 1 binding in 300 got no SYN-ACK through within the
3 s STUN timeout: after our resent SYN the NAT dropped the server's SYN-ACKs four or
five in a row, far more than its loss, so resends on that one 4-tuple could not help
(:func:`stunturn_diag.sansio.synwait.port_budgets`). Here the stuck tuple is made
exact: an nftables rule in the host's own namespace drops every SYN-ACK to the
rendezvous port before conntrack sees it. The binding must then come from a new local
port, with the real STUN responder behind a real NAT, and that port must be the one the
rendezvous punches from; a port the user fixed is kept, and the binding fails.
"""

from __future__ import annotations

import json
import sys

import pytest

from stunturn_diag.lab import CATALOGUE, Lab, LabSpec, SiteSpec
from stunturn_diag.lab.pair_runner import serve_in_lab

pytestmark = pytest.mark.netns

BIND = r"""
import json, subprocess, sys
from stunturn_diag.errors import PunchError
from stunturn_diag.punch.tcp import TcpRendezvous
server, fixed, timeout = sys.argv[1], sys.argv[2] == "fixed", float(sys.argv[3])
probe = TcpRendezvous("0.0.0.0", 0)
port = probe.local_port
if fixed:                       # the user's --bind port: the same port, given explicitly
    probe.close()
    rv = TcpRendezvous("0.0.0.0", port)
else:
    rv = probe
rule = ("table inet stuck { chain input { type filter hook input priority -300; "
        f"tcp dport {port} tcp flags & (syn | ack) == syn | ack counter drop; }}; }}")
subprocess.run(["nft", "-f", "-"], input=rule, text=True, check=True)
out = {"first": port}
try:
    out["mapped"] = list(rv.learn_mapping((server, 3478), timeout))
    out["stun_local"] = rv._stun.getsockname()[1]
except PunchError as exc:
    out["reason"], out["message"] = exc.reason, exc.message
out["local"] = rv.local_port
out["dropped"] = subprocess.run(["nft", "-j", "list", "table", "inet", "stuck"],
                                capture_output=True, text=True, check=True).stdout
rv.close()
subprocess.run(["nft", "delete", "table", "inet", "stuck"], check=True)
print(json.dumps(out))
"""


def _dropped(listing: str) -> int:
    """Packets the rule's counter saw, from ``nft -j`` output."""
    for item in json.loads(listing)["nftables"]:
        for expr in item.get("rule", {}).get("expr", []):
            if "counter" in expr:
                return expr["counter"]["packets"]
    raise AssertionError(f"no counter in {listing}")


def _bind(lab, mode: str, timeout: float) -> dict:
    res = lab.exec("a1", [sys.executable, "-c", BIND, lab.server_ip, mode, str(timeout)],
                   timeout=30, check=True)
    return json.loads(res.stdout)


@pytest.fixture(scope="module")
def lab():
    with Lab(LabSpec(sites={"a": SiteSpec(nat=CATALOGUE["port-restricted"])})) as lab:
        serve_in_lab(lab)
        yield lab


def test_a_stuck_first_port_gives_way_to_a_new_one(lab):
    out = _bind(lab, "ours", 3.0)
    assert "reason" not in out, out
    assert out["local"] != out["first"], out                 # moved ...
    assert out["stun_local"] == out["local"], out            # ... and punches from there
    assert out["mapped"] == [lab.site_public_ip("a"), out["local"]], out   # (port kept)
    assert _dropped(out["dropped"]) >= 2, out                # the first port's SYN-ACKs


def test_a_port_the_user_fixed_is_kept_and_the_binding_fails(lab):
    out = _bind(lab, "fixed", 1.5)
    assert out["reason"] == "stun-failed" and out["local"] == out["first"], out
    assert "no STUN Binding response over TCP" in out["message"], out
    assert "two local ports" not in out["message"], out
    assert _dropped(out["dropped"]) >= 2, out
