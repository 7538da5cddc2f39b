"""Two signaling instances on the lab's server host share one redis-server: the initiator
waits on instance A, the receiver checks in at instance B, and the punch succeeds."""

from __future__ import annotations

import shutil
import sys
import time

import pytest

from stunturn_diag.lab import Lab, LabSpec
from stunturn_diag.lab.pair_runner import HTTP_PORT, run_pair, serve_in_lab

pytestmark = pytest.mark.netns

REDIS_PORT = 6390
PING = ("import socket, sys\n"
        "s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1)\n"
        "s.sendall(b'PING\\r\\n'); print(s.recv(16).decode().strip())")


def _start_redis(lab, workdir) -> None:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (scripts/setup.sh installs it)")
    lab.popen(lab.server, [binary, "--port", str(REDIS_PORT), "--bind", lab.server_ip,
                           "--protected-mode", "no", "--dir", str(workdir), "--save", "",
                           "--appendonly", "no"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the server ends with the lab (Lab.popen)
        probe = lab.exec(lab.server, [sys.executable, "-c", PING, lab.server_ip, str(REDIS_PORT)], timeout=5)
        if probe.stdout.strip() == "+PONG":
            return
        time.sleep(0.05)
    pytest.fail("redis-server did not answer in the lab")


def test_two_instances_sharing_redis_pair_sites_and_the_punch_succeeds(tmp_path):
    with Lab(LabSpec.simple("port-restricted", "restricted-cone")) as lab:
        _pair_through_two_instances(lab, tmp_path)


def _pair_through_two_instances(lab, tmp_path) -> None:
    _start_redis(lab, tmp_path)
    secret = tmp_path / "secret"
    secret.write_text("lab-shared-secret-0123456789abcdef\n")
    shared = ("--redis", f"redis://{lab.server_ip}:{REDIS_PORT}/0", "--secret-file", str(secret))
    serve_in_lab(lab, extra=shared)                                        # A: STUN on 3478/3479
    serve_in_lab(lab, http_port=HTTP_PORT + 1, extra=(*shared, "--stun-port", "3480",
                                                       "--alt-port", "3481"))  # B
    result = run_pair(lab, "a1", "b1", urls=(f"http://{lab.server_ip}:{HTTP_PORT}",
                                             f"http://{lab.server_ip}:{HTTP_PORT + 1}"))
    assert result.ok, (result.initiator, result.receiver)
    assert result.initiator["match_id"] == result.receiver["match_id"]
    assert result.data_both_ways, (result.initiator, result.receiver)
