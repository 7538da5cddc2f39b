"""A punched TCP connection notices a vanished peer (keepalive, TCP_USER_TIMEOUT).

Both peers punch through the API with ``keepalive_interval=1, peer_timeout=3``,
say so, then block in ``recv``; the test cuts the path in the lab's core router
(an nftables drop in the ``inet`` namespace) and waits for both to report the
error the kernel raised when the keepalive probes went unanswered.
"""

from __future__ import annotations

import json
import os
import sys
import time

import pytest

from stunturn_diag.lab import Lab, LabSpec
from stunturn_diag.lab.pair_runner import HTTP_PORT, serve_in_lab
from stunturn_diag.punch.tcp_sockets import keepalive_settings

pytestmark = pytest.mark.netns

INTERVAL, PEER_TIMEOUT = 1.0, 3.0

PEER = r"""
import json, socket, struct, sys, time
from stunturn_diag.punch import api
role, url, target, profile = sys.argv[1:5]
opts = dict(punch_timeout=8, nat_profile=json.loads(profile), keepalive_interval=1.0,
            peer_timeout=3.0)
if role == "initiator":
    r = api.initiate(url, "lab-key-keepalive", target, protocol="tcp", pair_timeout=15, **opts)
else:
    r = api.receive(url, "lab-key-keepalive", protocol="tcp", wait=15, wait_interval=0.05,
                    **opts)
s = r.connection                           # the private stream over the punched socket
raw = getattr(s, "sock", s)
opt = lambda level, name: raw.getsockopt(level, name)
print(json.dumps({"connected": True, "keepalive": opt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                  "idle": opt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                  "intvl": opt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                  "cnt": opt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                  "user_timeout": opt(socket.IPPROTO_TCP, 18)}), flush=True)
sys.stdin.readline()                       # the test cut the path
t0 = time.monotonic()
s.settimeout(30)
try:
    data = s.recv(1)
    out = {"error": None, "data": data.decode()}
except OSError as e:
    out = {"error": type(e).__name__, "errno": e.errno}
out["detected_s"] = round(time.monotonic() - t0, 2)
print(json.dumps(out), flush=True)
"""


def test_a_vanished_tcp_peer_is_detected_within_peer_timeout():
    with Lab(LabSpec.simple("port-restricted", "full-cone")) as lab:
        serve_in_lab(lab)
        url = f"http://{lab.server_ip}:{HTTP_PORT}"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        procs = [lab.popen(host, [sys.executable, "-c", PEER, role, url, target,
                                  json.dumps(lab.expected(lab.site_of(host)))],
                           env=env, stdin=__import__("subprocess").PIPE)
                 for host, role, target in (("a1", "initiator", lab.site_public_ip("b")),
                                            ("b1", "receiver", "-"))]
        hello = [json.loads(p.stdout.readline() or "{}") for p in procs]
        want = keepalive_settings(INTERVAL, PEER_TIMEOUT)
        for h in hello:
            assert h.get("connected"), (hello, [p.stderr.read()[-800:] for p in procs])
            assert h["keepalive"] == 1 and h["idle"] == want["idle"], h
            assert h["intvl"] == want["interval"] and h["cnt"] == want["count"], h
            assert h["user_timeout"] == want["user_timeout_ms"], h
        # cut the path in the core router: every forwarded packet is dropped
        lab.exec("inet", ["nft", "-f", "-"], check=True, input=(
            "table ip cut {\n  chain drop_all {\n    type filter hook forward priority 0; "
            "policy drop;\n  }\n}\n"))
        cut_at = time.monotonic()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        results = []
        for p in procs:
            out, _err = p.communicate(timeout=30)
            results.append(json.loads(out.strip().splitlines()[-1]))
        for r in results:
            assert r["error"] == "TimeoutError" and r["errno"] == 110, results  # ETIMEDOUT
            # idle + count probes: the kernel gives up after about peer_timeout
            assert r["detected_s"] <= PEER_TIMEOUT + 2.0, results
        assert time.monotonic() - cut_at < 30
