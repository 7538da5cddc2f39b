"""Interop: coturn's RFC 5780 clients (turnutils_stunclient, turnutils_natdiscovery) against
our STUN responder on loopback, 127.0.0.1 primary and 127.0.0.2 alternate (all of 127/8 is local).

Loopback has no NAT, so a correct responder makes natdiscovery report "No NAT", endpoint-
independent mapping and filtering; a responder that ignored CHANGE-REQUEST or sent from the
wrong address would make the filtering test time out or report a dependent behaviour.
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from stunturn_server.config import ServerConfig
from stunturn_server.stun.service import start_stun_service
from testlib import A1, require_tool, roles, run_tool

pytestmark = pytest.mark.interop


def addresses(output: str, label: str) -> list[tuple[str, int]]:
    """All ``label: ip:port`` values printed by the coturn utilities, in order."""
    return [(ip, int(port)) for ip, port in
            re.findall(rf"{label}:(?: :)? ([0-9.]+):(\d+)", output)]


@pytest.mark.parametrize("extra", [[], ["-f"]], ids=["plain", "rfc5780"])
def test_turnutils_stunclient(service, extra):
    tool = require_tool("turnutils_stunclient")
    eps = roles(service)
    output = run_tool([tool, *extra, "-L", A1, "-p", str(eps["primary"][1]), A1])
    reflexive = addresses(output, "UDP reflexive addr")
    assert reflexive and all(ip == A1 and 0 < port < 65536 for ip, port in reflexive), output
    # first response from where it was sent, the change-request responses from A2:P2
    origins = addresses(output, "Response origin")
    assert origins[0] == eps["primary"], output
    assert eps["alt-both"] in origins, output
    assert set(addresses(output, "Other addr")) == {eps["alt-both"]}, output
    stats = service.stats
    assert stats["responses"] >= 3 and stats["errors_sent"] == 0
    assert stats["dropped_malformed"] == stats["dropped_non_stun"] == 0


@pytest.mark.parametrize("extra", [[], ["-P"]], ids=["plain", "padding"])
def test_turnutils_natdiscovery_sees_no_nat(service, extra):
    tool = require_tool("turnutils_natdiscovery")
    eps = roles(service)
    output = run_tool([tool, "-m", "-f", *extra, "-L", A1, "-p", str(eps["primary"][1]), A1])
    assert "No NAT!" in output, output
    assert "NAT with Endpoint Independent Mapping!" in output, output
    assert "NAT with Endpoint Independent Filtering!" in output, output
    assert "Dependent" not in output and "timeout" not in output.lower(), output
    origins = set(addresses(output, "Response origin"))
    assert {eps["primary"], eps["alt-ip"], eps["alt-both"]} <= origins, output
    assert service.stats["responses"] >= 4


def test_turnutils_natdiscovery_hairpinning(service):
    tool = require_tool("turnutils_natdiscovery")
    eps = roles(service)
    output = run_tool([tool, "-H", "-L", A1, "-p", str(eps["primary"][1]), A1])
    assert addresses(output, "UDP reflexive addr")[0][0] == A1, output
    assert "successful hairpinning" in output, output


def test_turnutils_stunclient_without_alternate_ip():
    """One endpoint only: the client still gets its reflexive address; CHANGE-REQUEST gets 420."""
    tool = require_tool("turnutils_stunclient")
    with start_stun_service(ServerConfig(stun_host=A1, stun_port=0, alt_port=0)) as svc:
        proc = subprocess.run([tool, "-L", A1, "-p", str(svc.endpoints[0].port), A1],
                              capture_output=True, text=True, timeout=120)
        output = proc.stdout + proc.stderr
        reflexive = addresses(output, "UDP reflexive addr")
        assert reflexive and reflexive[0][0] == A1, output
        assert addresses(output, "Other addr") == [], output
        assert svc.stats["responses"] >= 1


def test_turnutils_stunclient_forced_rfc5780_without_alternate_ip_gets_420():
    """``-f`` sends CHANGE-REQUEST although OTHER-ADDRESS was absent: we answer 420 (RFC 5780
    section 6.1). The tool then waits forever for a success response, so it is ended by PID."""
    tool = require_tool("turnutils_stunclient")
    with start_stun_service(ServerConfig(stun_host=A1, stun_port=0, alt_port=0)) as svc:
        proc = subprocess.Popen([tool, "-f", "-L", A1, "-p", str(svc.endpoints[0].port), A1],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 30
            while svc.stats["errors_sent"] < 1 and proc.poll() is None:
                assert time.monotonic() < deadline, "no CHANGE-REQUEST arrived"
                time.sleep(0.02)
        finally:
            proc.kill()
            output = proc.communicate(timeout=30)[0]
        assert svc.stats["errors_sent"] == 1 and svc.stats["responses"] == 1
        assert addresses(output, "UDP reflexive addr")[0][0] == A1, output
