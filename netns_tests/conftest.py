"""netns tests: real kernel NAT in network namespaces.

They need root (CAP_NET_ADMIN), ``ip`` and ``nft``. Locally without those they
skip with a one-line reason; under CI (``CI`` set) a missing prerequisite is a
failure, never a skip.
"""

from __future__ import annotations

import os
import shutil

import pytest


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "netns tests need root (ip netns, nftables)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"netns tests need the '{tool}' command (apt-get install iproute2 nftables)"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _missing()
    if reason is None:
        return
    in_ci = bool(os.environ.get("CI"))
    for item in items:
        if "netns_tests" not in str(item.fspath):
            continue
        if in_ci:
            item.add_marker(pytest.mark.usefixtures("_ci_requires_netns"))
        else:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def _ci_requires_netns():
    pytest.fail(f"CI must run the netns tests: {_missing()}")


# --- NAT lab fixtures -------------------------------------------------------------------

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

REFLECTOR_PORTS = (7000, 7001)
_created_prefixes: list[str] = []


class LabKit:
    """A built lab plus the reflector on its server host and the nettool clients.

    Reflector UDP sockets by number: 0 = primary:7000, 1 = primary:7001,
    2 = alt:7000, 3 = alt:7001. TCP listens on primary:7000, primary:7001, alt:7000.
    """

    def __init__(self, lab) -> None:
        self.lab = lab
        self.S, self.A = lab.server_ip, lab.server_alt_ip
        eps = [f"{ip}:{port}" for ip in (self.S, self.A) for port in REFLECTOR_PORTS]
        argv = [sys.executable, "-m", "stunturn_diag.lab.reflector", "--lifetime", "300"]
        for ep in eps:
            argv += ["--udp", ep]
        for ep in eps[:3]:
            argv += ["--tcp", ep]
        self.reflector = lab.popen("srv", argv)
        line = self.reflector.stdout.readline()
        assert json.loads(line) == {"ready": True}, line + self.reflector.stderr.read()

    def tool(self, node: str, *args: str, timeout: float = 30) -> dict:
        result = self.lab.exec(node, [sys.executable, "-m", "stunturn_diag.lab.nettool", *args],
                               timeout=timeout)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def udp(self, host: str, *asks: str, local_port: int = 0, tries: int = 3) -> list:
        """Mapped (ip, port) per ask (``"S:7000"``, ``"S:7000/3"`` ...) or None."""
        args = ["udp", "--local-port", str(local_port), "--tries", str(tries)]
        for ask in asks:
            args += ["--ask", ask.replace("S:", f"{self.S}:").replace("A:", f"{self.A}:")]
        out = self.tool(host, *args)
        return [tuple(r["mapped"]) if r else None for r in out["results"]]

    def popen_tool(self, node: str, *args: str) -> subprocess.Popen:
        return self.lab.popen(node, [sys.executable, "-m", "stunturn_diag.lab.nettool", *args])


def _own_namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [n for n in names if any(n.startswith(p + "-") for p in _created_prefixes)]


@pytest.fixture
def make_lab():
    """``make_lab(spec) -> LabKit``: builds labs (reflector running); always torn down,
    and checks afterwards that none of their namespaces is left."""
    from stunturn_diag.lab import Lab

    labs = []

    def build(spec):
        lab = Lab(spec)
        _created_prefixes.append(lab.name)
        labs.append(lab)
        lab.up()
        return LabKit(lab)

    yield build
    for lab in labs:
        lab.down()
    assert _own_namespaces() == []


@pytest.fixture(scope="session", autouse=True)
def _no_lab_namespaces_left():
    """Session finalizer: no namespace of a lab this process built may survive."""
    yield
    if _created_prefixes and _missing() is None:
        assert _own_namespaces() == [], "lab namespaces left behind"
