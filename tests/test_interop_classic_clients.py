"""Interop: classic RFC 3489 clients against our STUN responder on loopback.

Debian's ``stun`` (stun-client 0.97, RFC 3489) and pystun3 (RFC 3489 requests without the
magic cookie) must get classic MAPPED-ADDRESS / SOURCE-ADDRESS / CHANGED-ADDRESS answers and,
with 127.0.0.1 primary and 127.0.0.2 alternate on a NAT-free loopback, conclude "open".
"""

from __future__ import annotations

import re
import subprocess

import pytest

from stunturn_server.config import ServerConfig
from stunturn_server.stun.service import start_stun_service
from testlib import A1, A2, missing, require_tool, roles

pytestmark = pytest.mark.interop


def pystun3():
    try:
        import stun
    except ImportError:
        missing("pystun3 is not installed (pip install pystun3)")
    return stun


def test_debian_stun_client_reports_open(service):
    tool = require_tool("stun")
    eps = roles(service)
    proc = subprocess.run([tool, f"{A1}:{eps['primary'][1]}", "-v"], capture_output=True,
                          text=True, timeout=120)
    output = proc.stdout + proc.stderr
    assert re.search(r"^Primary: Open\b", output, re.M), output
    mapped = re.findall(r"MappedAddress = ([0-9.]+):(\d+)", output)
    assert mapped and all(ip == A1 for ip, _ in mapped), output
    changed = set(re.findall(r"ChangedAddress = ([0-9.]+:\d+)", output))
    assert f"{A2}:{eps['alt-both'][1]}" in changed, output
    # test II asks for a change of IP and port, test III of port, test I(2) goes to A2:P1
    for test in ("I", "II", "III", "I(2)"):
        assert re.search(rf"^test {re.escape(test)} = 1$", output, re.M), (test, output)
    sources = set(re.findall(r"SourceAddress = ([0-9.]+:\d+)", output))
    for role in ("primary", "alt-port", "alt-ip"):
        assert "%s:%d" % eps[role] in sources, (role, output)
    stats = service.stats
    assert stats["classic_requests"] >= 3 and stats["errors_sent"] == 0


def test_pystun3_reports_open_internet(service):
    stun = pystun3()
    eps = roles(service)
    nat_type, ip, port = stun.get_ip_info(A1, 0, A1, eps["primary"][1])
    assert nat_type == stun.OpenInternet
    assert ip == A1 and 0 < port < 65536
    assert service.stats["classic_requests"] == 2  # test I, then test II (change IP and port)


def test_pystun3_without_alternate_ip_sees_change_unanswered():
    """No alternate address: the change request is not answered (RFC 3489 has no error for it),
    so pystun3 ends (instead of resending forever on an error) with its "firewall" verdict."""
    stun = pystun3()
    with start_stun_service(ServerConfig(stun_host=A1, stun_port=0, alt_port=0)) as svc:
        nat_type, _, _ = stun.get_ip_info(A1, 0, A1, svc.endpoints[0].port)
        assert nat_type == stun.SymmetricUDPFirewall
        stats = svc.stats
        assert stats["responses"] == 1 and stats["dropped_change_unavailable"] >= 1
        assert stats["errors_sent"] == 0
