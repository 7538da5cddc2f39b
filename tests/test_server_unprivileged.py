"""`stunturn-diag serve` run as an ordinary user (uid 65534, no capabilities) on loopback.

It must serve HTTP and STUN on ports >= 1024 (the defaults 3478/3479 included) and stop
cleanly; what such a user may not do (bind a port below 1024) is one clear line on
stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest

from stunturn_diag.sansio.stun import binding_request, decode, encode
from stunturn_diag.stun_requests import fresh_binding_request
from stunturn_testkit.unprivileged import unprivileged_argv
from testlib import roles as stun_roles

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root (to drop to uid 65534) and setpriv (util-linux)")


def serve_as_nobody(*args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen(unprivileged_argv([sys.executable, "-m", "stunturn_diag", "serve", *args]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            stdin=subprocess.DEVNULL, cwd="/")


def finish(proc: subprocess.Popen, timeout: float = 30) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def own_loopback_ip() -> str:
    """A loopback address no other test uses, so the default STUN ports are free on it."""
    return f"127.{random.randint(64, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"


def stun_ask(address: tuple[str, int]):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.bind((address[0], 0))
        request = fresh_binding_request()
        sock.sendto(encode(request), address)
        answer = decode(sock.recv(2048))
        assert answer.transaction_id == request.transaction_id
        return answer.mapped_address, sock.getsockname()


@pytest.mark.parametrize("default_ports", [False, True], ids=["port-0", "default-3478-3479"])
def test_serve_runs_as_nobody_and_stops_cleanly(default_ports):
    ip, alt = own_loopback_ip(), "127.0.0.2"
    ports = [] if default_ports else ["--stun-port", "0", "--alt-port", "0"]
    if default_ports:  # the alternate address must be unique too
        alt = own_loopback_ip()
    proc = serve_as_nobody(f"{ip}:0", "--alt-ip", alt, *ports, "--json")
    try:
        line = proc.stdout.readline()
        if not line:
            out, err = finish(proc)
            pytest.fail(f"serve as nobody printed nothing (exit {proc.returncode}):\n{err}")
        info = json.loads(line)
        roles = stun_roles(info["stun_endpoints"])
        if default_ports:
            assert roles["primary"] == (ip, 3478) and roles["alt-both"] == (alt, 3479)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(info["http_url"] + "/healthz", timeout=10) as response:
            assert json.load(response)["ok"] is True
        mapped, local = stun_ask(roles["alt-ip"])
        assert mapped == local
        proc.send_signal(signal.SIGTERM)
        out, err = finish(proc)
    finally:
        if proc.poll() is None:
            finish(proc, 1)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "stopped" in err


@pytest.mark.parametrize("args, what", [
    (["127.0.0.1:80", "--stun-port", "0", "--alt-port", "0"], "HTTP server"),
    (["127.0.0.1:0", "--stun-port", "478"], "STUN responder"),
    (["127.0.0.1:0", "--stun-port", "0", "--alt-ip", "127.0.0.2", "--alt-port", "479"], "STUN responder"),
])
def test_a_port_below_1024_is_one_clear_line(args, what):
    proc = serve_as_nobody(*args)
    out, err = finish(proc)
    assert proc.returncode == 1 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"Error: cannot bind the {what}") and "Permission denied" in lines[0]
    assert "below 1024" in lines[0]
