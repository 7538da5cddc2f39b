"""netns tests: real kernel NAT in network namespaces.

They need root (CAP_NET_ADMIN, CAP_SYS_ADMIN), ``ip``, ``nft`` and ``sysctl``. Locally
without those they skip with a one-line reason; under CI (``CI`` set, e.g. ``CI=true``)
a missing prerequisite is a failure, never a skip. Every lab a test process builds is
recorded; its namespaces must all be gone when the session ends (else an error).
"""

from __future__ import annotations

import functools
import os

import pytest


@functools.lru_cache(maxsize=1)
def _missing() -> str | None:
    """Why the netns tests cannot run here (one line), or None."""
    from stunturn_diag.errors import StunturnError
    from stunturn_diag.lab import check_prerequisites

    if os.geteuid() != 0:
        return "netns tests need root (ip netns, nftables)"
    try:
        check_prerequisites()
    except StunturnError as exc:
        return f"netns tests: {exc}"
    return None


def in_ci() -> bool:
    """``CI`` is set to anything but an empty/false value (CI services set CI=true)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _is_netns(item) -> bool:
    return "netns_tests" in str(item.fspath)


def pytest_collection_modifyitems(config, items):
    reason = _missing()
    if reason is None or in_ci():
        return
    for item in items:
        if _is_netns(item):
            item.add_marker(pytest.mark.skip(reason=reason))


def pytest_runtest_setup(item):
    """Under CI a missing prerequisite fails every netns test before it runs."""
    if _is_netns(item) and in_ci():
        reason = _missing()
        if reason is not None:
            pytest.fail(f"CI must run the netns tests: {reason}", pytrace=False)


# --- NAT lab fixtures -------------------------------------------------------------------

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import stunturn_testkit  # noqa: E402

REFLECTOR_PORTS = (7000, 7001)
_created_prefixes: list[str] = []


class LabKit:
    """A built lab plus the reflector on its server host and the nettool clients
    (:mod:`stunturn_testkit.reflector`, :mod:`stunturn_testkit.nettool`).

    Reflector UDP sockets by number: 0 = primary:7000, 1 = primary:7001,
    2 = alt:7000, 3 = alt:7001. TCP listens on primary:7000, primary:7001, alt:7000.
    """

    def __init__(self, lab) -> None:
        self.lab = lab
        self.S, self.A = lab.server_ip, lab.server_alt_ip
        eps = [f"{ip}:{port}" for ip in (self.S, self.A) for port in REFLECTOR_PORTS]
        argv = [sys.executable, "-m", "stunturn_testkit.reflector", "--lifetime", "300"]
        for ep in eps:
            argv += ["--udp", ep]
        for ep in eps[:3]:
            argv += ["--tcp", ep]
        self.reflector = lab.popen("srv", argv, env=stunturn_testkit.env())
        line = self.reflector.stdout.readline()
        assert json.loads(line) == {"ready": True}, line + self.reflector.stderr.read()

    def tool(self, node: str, *args: str, timeout: float = 30) -> dict:
        result = self.lab.exec(node, [sys.executable, "-m", "stunturn_testkit.nettool", *args],
                               timeout=timeout, env=stunturn_testkit.env())
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
        return self.lab.popen(node, [sys.executable, "-m", "stunturn_testkit.nettool", *args],
                              env=stunturn_testkit.env())


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


def record_lab(name: str) -> None:
    """Include a lab built elsewhere (a subprocess) in the end-of-session check."""
    _created_prefixes.append(name)


@pytest.fixture(scope="session", autouse=True)
def _no_lab_namespaces_left():
    """Records every lab this process builds (``runner.new_prefix``); at the end of the
    session none of their namespaces may survive (an error fails the run, also in CI)."""
    from stunturn_diag.lab import runner

    original = runner.new_prefix

    def recording_prefix() -> str:
        name = original()
        record_lab(name)
        return name

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "new_prefix", recording_prefix)
        yield
    if _created_prefixes and _missing() is None:
        left = _own_namespaces()
        assert left == [], f"lab namespaces left behind: {' '.join(left)}"
