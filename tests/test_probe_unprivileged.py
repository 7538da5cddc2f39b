"""`stunturn-diag probe` really run without privileges (setpriv), against a server started here.

Two ways to lack raw sockets:

- a plain user (uid/gid 65534, no groups). The interpreter lives under /root (mode 0700),
  so the process keeps only CAP_DAC_READ_SEARCH as an ambient capability to read it;
  it has no CAP_NET_RAW;
- root inside a box without capabilities (bounding set emptied), as in many containers.

Either way: every UDP test runs with kernel sockets, the TCP tests needing raw sockets
(simultaneous open) and --pcap are listed as skipped with the reason, no traceback, and
the exit status is 0 (every core verdict is decided on loopback).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from stunturn_server.config import ServerConfig
from stunturn_server.runner import start_server

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                reason="needs root (to drop privileges with setpriv)")

PYTHON = sys.executable  # the venv interpreter (its realpath would be the bare base Python)
AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
ROOT_WITHOUT_CAPS = ["setpriv", "--inh-caps=-all", "--bounding-set=-all"]

#: every UDP transaction of the plan (hairpin and unsolicited included), by name prefix
UDP_PROBES = {"map.primary", "map.alt_ip", "map.alt_both", "map.alt_port", "filt.change_both",
              "filt.change_port", "alloc.1", "alloc.2", "alloc.3", "alloc.4", "hair.a", "hair.b",
              "hair.a_to_b", "hair.b_to_a", "unsol.bind", "unsol.confirm", "unsol.after"}


@pytest.fixture(scope="module")
def server():
    handle = start_server(ServerConfig(http_port=0, stun_port=0, alt_port=0, alt_ip="127.0.0.2"))
    yield handle
    handle.stop()


def _run(prefix: list[str], *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE",)}
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # the unprivileged user cannot write __pycache__
    return subprocess.run([*prefix, PYTHON, "-m", "stunturn_diag", "probe", *args], capture_output=True,
                          text=True, timeout=60, env=env, cwd="/")


@pytest.mark.parametrize("prefix", [AS_NOBODY, ROOT_WITHOUT_CAPS], ids=["uid-65534", "root-no-caps"])
def test_every_udp_test_runs_and_raw_socket_tests_are_skipped_with_reasons(server, prefix, tmp_path):
    check = subprocess.run([*prefix, PYTHON, "-c", "import os, socket\n"
                            "try:\n socket.socket(socket.AF_INET, socket.SOCK_RAW, 6)\n"
                            "except PermissionError:\n print('no-raw', os.geteuid())"],
                           capture_output=True, text=True, timeout=30)
    assert check.stdout.split()[0] == "no-raw", check.stdout + check.stderr  # really unprivileged
    r = _run(prefix, server.http_url, "--json", "--pcap", str(tmp_path / "p.pcap"))
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert j["status"] == "diagnosed" and j["undetermined"] == []
    ran = {p["probe"]: p["status"] for p in j["probes"]}
    assert UDP_PROBES <= set(ran), UDP_PROBES - set(ran)
    assert all(ran[name] in ("answered", "no-reply") for name in UDP_PROBES), ran
    assert j["udp"]["mapping"] == "no-nat" and j["udp"]["filtering"] == "endpoint-independent"
    # kernel-socket TCP tests ran too
    assert j["tcp"]["mapping"] == "no-nat" and j["tcp"]["unsolicited_syn"] == "pass"
    skipped = {s["test"]: s["reason"] for s in j["skipped"]}
    assert "root" in skipped["tcp.simultaneous_open"] and "raw" in skipped["tcp.simultaneous_open"]
    assert "root" in skipped["pcap"]
    assert j["tcp"]["simultaneous_open"] is None
    assert not (tmp_path / "p.pcap").exists()


def test_human_report_without_root_says_what_it_skipped(server):
    r = _run(AS_NOBODY, server.http_url)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "skipped tcp.simultaneous_open: needs root" in r.stdout
    assert "Mapping behaviour (RFC 4787 4.1, RFC 5780 4.3): no-nat" in r.stdout
    assert "status: diagnosed" in r.stdout
