"""`stunturn-diag punch` as an ordinary user (uid 65534, no capabilities) on loopback.

Both sides run unprivileged against a server this test starts (as root): UDP and
TCP (the TCP runner's no-CAP_NET_ADMIN mode) must connect; what an ordinary user
may not do (bind a port below 1024) is one clear line, never a traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from testlib import serve_subprocess

from stunturn_testkit.unprivileged import unprivileged_argv

KEY = "unprivileged-key-1"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root (to drop to uid 65534) and setpriv (util-linux)")


@pytest.fixture(scope="module")
def server():
    with serve_subprocess() as url:
        yield url


def punch(url: str, *args: str) -> subprocess.Popen:
    env = dict(os.environ, STUNTURN_KEY=KEY)
    return subprocess.Popen(unprivileged_argv([sys.executable, "-m", "stunturn_diag", "punch",
                                               url, *args]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_the_wrapper_really_drops_to_an_ordinary_user():
    out = subprocess.run(unprivileged_argv([sys.executable, "-c",
                                            "import os; print(os.getuid(), os.getgid(), "
                                            "open('/proc/self/status').read()"
                                            ".split('CapEff:')[1].split()[0])"]),
                         capture_output=True, text=True, timeout=30)
    uid, gid, cap_eff = out.stdout.split()
    assert (uid, gid) == ("65534", "65534"), out.stderr
    # only CAP_DAC_READ_SEARCH (bit 2, to read a checkout under a 0700 folder) is kept;
    # nothing network-related: CAP_NET_BIND_SERVICE (10), CAP_NET_ADMIN (12), CAP_NET_RAW (13)
    assert int(cap_eff, 16) == 1 << 2, cap_eff


@pytest.mark.parametrize("protocol", ["udp", "tcp"])
def test_unprivileged_peers_connect(server, protocol):
    ini = punch(server, "--target-ip", "127.0.0.1", "--protocol", protocol, "--json")
    rec = punch(server, "--wait", "8", "--wait-interval", "0.05", "--protocol", protocol,
                "--json")
    r_out, r_err = rec.communicate(timeout=60)
    i_out, i_err = ini.communicate(timeout=60)
    assert (ini.returncode, rec.returncode) == (0, 0), (i_err, r_err)
    i, r = json.loads(i_out), json.loads(r_out)
    assert i["ok"] and r["ok"] and i["protocol"] == r["protocol"] == protocol
    assert i["match_id"] == r["match_id"]
    assert "Traceback" not in i_err + r_err


@pytest.mark.parametrize("protocol", ["udp", "tcp"])
def test_a_privileged_port_is_one_clear_line(server, protocol):
    p = punch(server, "--target-ip", "127.0.0.1", "--protocol", protocol,
              "--bind", "127.0.0.1:80", "--timeout", "1")
    out, err = p.communicate(timeout=30)
    assert p.returncode == 1 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "cannot bind" in lines[0] and "Permission denied" in lines[0]
    p = punch(server, "--target-ip", "127.0.0.1", "--protocol", protocol,
              "--bind", "127.0.0.1:80", "--timeout", "1", "--json")
    out, err = p.communicate(timeout=30)
    assert p.returncode == 1 and json.loads(out)["reason"] == "bind-failed", (out, err)
