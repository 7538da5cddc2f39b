"""TCP punching through the whole stack in the lab: signaling server, strategy
decision, :class:`~stunturn_diag.punch.tcp.TcpRendezvous`, authentication.

Both peers call the library API (``api.initiate`` / ``api.receive`` with
``protocol="tcp"``) in their LAN hosts, as ``stunturn-diag punch --protocol tcp``
does, then exchange a line each way over the authenticated socket.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

from stunturn_diag.lab import Lab, LabSpec
from stunturn_diag.lab.pair_runner import HTTP_PORT, run_peers, serve_in_lab

pytestmark = pytest.mark.netns

PEER = r"""
import json, sys, time
from stunturn_diag.errors import StunturnError
from stunturn_diag.punch import api
role, url, key, target, profile, punch_timeout = sys.argv[1:7]
opts = dict(punch_timeout=float(punch_timeout), nat_profile=json.loads(profile))
try:
    if role == "initiator":
        r = api.initiate(url, key, target, protocol="tcp", pair_timeout=15, **opts)
    else:
        r = api.receive(url, key, protocol="tcp", wait=15, wait_interval=0.05, **opts)
except StunturnError as e:
    print(json.dumps({"ok": False, "reason": getattr(e, "reason", None) or e.code,
                      "message": str(e), "attempts": getattr(e, "attempts", [])}))
    sys.exit(1)
out = r.as_dict()
sock = r.connection
sock.settimeout(10)
sock.sendall(f"line from {role}\n".encode())
out["got"] = sock.makefile("rb").readline().decode().strip()
sock.close()
print(json.dumps(out))
"""


def run_api_pair(lab, *, punch_timeout: float) -> tuple[dict, dict]:
    serve_in_lab(lab)
    url = f"http://{lab.server_ip}:{HTTP_PORT}"
    env = dict(os.environ, PYTHONUNBUFFERED="1")

    def peer(host: str, role: str, target: str) -> tuple[str, list[str]]:
        profile = json.dumps(lab.expected(lab.site_of(host)))
        return host, [sys.executable, "-c", PEER, role, url, "lab-key-tcp-0123", target, profile,
                      str(punch_timeout)]

    ini, rec = run_peers(lab, [peer("a1", "initiator", lab.site_public_ip("b")),
                               peer("b1", "receiver", "-")],
                         timeout=punch_timeout + 60, env=env)
    return ini.outcome(), rec.outcome()


@pytest.mark.parametrize("a,b", [("port-restricted", "port-restricted"),
                                 ("restricted-cone-rst", "full-cone"),
                                 ("symmetric-random", "restricted-cone"),
                                 ("symmetric-sequential", "port-restricted")])
def test_tcp_punch_through_the_api(a, b):
    with Lab(LabSpec.simple(a, b)) as lab:
        ini, rec = run_api_pair(lab, punch_timeout=8.0)
        assert ini["ok"] and rec["ok"], (ini, rec)
        assert ini["protocol"] == rec["protocol"] == "tcp"
        assert ini["match_id"] == rec["match_id"] and ini["strategy"] == rec["strategy"]
        assert ini["got"] == "line from receiver" and rec["got"] == "line from initiator"
        assert ini["peer"]["ip"] == lab.site_public_ip("b")
        assert rec["peer"]["ip"] == lab.site_public_ip("a")


def test_tcp_punch_through_the_api_fails_cleanly_when_infeasible():
    with Lab(LabSpec.simple("symmetric-random", "port-restricted")) as lab:
        ini, rec = run_api_pair(lab, punch_timeout=1.5)
    for side in (ini, rec):
        assert side["ok"] is False, side
        assert side["reason"] in ("relay-needed", "refused", "timeout"), side
        assert side["attempts"], side
        # the plan says relay-needed (random mapping vs a port filter); the runner's
        # cause (RSTs or silence) stays visible next to it
        assert side["reason"] == "relay-needed", side
        assert "random port" in side["message"] and "relay" in side["message"], side
        assert side["attempts"][-1]["cause"] in ("refused", "timeout", "unreachable"), side
