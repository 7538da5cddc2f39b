"""Interop: ``stunturn-diag serve`` (a real subprocess) answers coturn's RFC 5780 clients.

The server is started on loopback with its own free ports (port 0: the ``--json`` line says
which), queried with turnutils_stunclient and turnutils_natdiscovery, then stopped by PID
with SIGTERM and must exit cleanly.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time

import pytest

from testlib import A1, A2, require_tool, roles, run_tool

pytestmark = pytest.mark.interop


def _first_line(proc: subprocess.Popen, timeout: float) -> str:
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or proc.poll() is not None:
            break
        if selector.select(remaining):
            chunk = os.read(proc.stdout.fileno(), 1)
            if not chunk:
                break
            line += chunk
    selector.close()
    return line.decode()


@pytest.fixture
def served(tmp_path):
    stderr = open(tmp_path / "serve.err", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "stunturn_diag", "serve", f"{A1}:0", "--alt-ip", A2,
         "--stun-port", "0", "--alt-port", "0", "--json"],
        stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL)
    try:
        line = _first_line(proc, 60)
        if not line:
            stderr.seek(0)
            pytest.fail(f"stunturn-diag serve printed nothing; stderr:\n{stderr.read()}")
        yield roles(json.loads(line)["stun_endpoints"])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        proc.stdout.close()
        stderr.close()


def test_serve_answers_turnutils_stunclient(served):
    tool = require_tool("turnutils_stunclient")
    assert set(served) == {"primary", "alt-port", "alt-ip", "alt-both"}
    output = run_tool([tool, "-L", A1, "-p", str(served["primary"][1]), A1])
    reflexive = re.findall(r"UDP reflexive addr: ([0-9.]+):(\d+)", output)
    assert reflexive and reflexive[0][0] == A1, output
    assert "Other addr: : %s:%d" % served["alt-both"] in output, output
    assert "Response origin: : %s:%d" % served["alt-both"] in output, output


def test_serve_answers_turnutils_natdiscovery(served):
    tool = require_tool("turnutils_natdiscovery")
    output = run_tool([tool, "-m", "-f", "-L", A1, "-p", str(served["primary"][1]), A1])
    assert "NAT with Endpoint Independent Mapping!" in output, output
    assert "NAT with Endpoint Independent Filtering!" in output, output
