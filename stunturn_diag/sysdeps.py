"""The external programs stunturn-diag and its tests run, and the Debian package of each:
the one list that ``scripts/setup.sh`` installs from and ``tests/test_system_deps.py``
checks (every program the code runs is listed, and each listed one is on PATH).

No shared library is loaded (``ctypes`` only builds the BPF program buffer for
SO_ATTACH_FILTER): in particular libpcap is NOT needed; packets are filtered by our own
classic-BPF programs (:mod:`stunturn_diag.sansio.bpf`).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass


@dataclass(frozen=True)
class Tool:
    """A program run by name (found on PATH)."""

    command: str
    package: str
    used_for: str
    #: there before setup.sh runs (Debian Essential, or python3, which runs setup.sh's pip)
    essential: bool = False
    #: "apt" (setup.sh's apt-get list) or "pip" (pyproject.toml, installed by setup.sh's pip)
    source: str = "apt"


TOOLS: tuple[Tool, ...] = (
    Tool("ip", "iproute2", "lab: namespaces, links, addresses, routes"),
    Tool("nft", "nftables", "lab: the NAT and filter rules"),
    Tool("sysctl", "procps", "lab: forwarding and conntrack settings"),
    Tool("ss", "iproute2", "lab run/matrix: waiting until the server command (and coturn) "
         "listens"),
    Tool("tc", "iproute2", "lab run/matrix: --delay/--jitter (netem qdiscs) and the netem check"),
    Tool("setpriv", "util-linux", "dropping privileges: punch's unprivileged self-test, unprivileged tests"),
    Tool("unshare", "util-linux", "tests: a private mount namespace for `lab down --all`; "
         "lab run/matrix: a throwaway network namespace for the netem check"),
    Tool("turnserver", "coturn", "interop tests and the benchmark: an RFC 5780 STUN server"),
    Tool("turnutils_stunclient", "coturn", "interop tests: coturn's STUN client"),
    Tool("turnutils_natdiscovery", "coturn", "interop tests and the benchmark: coturn's NAT discovery"),
    Tool("stun", "stun-client", "interop tests and the benchmark: the Vovida STUN client (RFC 3489)"),
    Tool("miniupnpd", "miniupnpd-nftables", "lab: PCP, NAT-PMP and UPnP IGD on +portmap sites' NAT boxes"),
    Tool("redis-server", "redis-server", "server tests, the lab test of two instances and the benchmark: "
         "the shared match store (each starts its own on a free port)"),
    Tool("haproxy", "haproxy", "tests: a load balancer in front of two serve instances"),
    Tool("openssl", "openssl", "server tests: a throwaway certificate for Redis over TLS"),
    Tool("pystun3", "pystun3", "the benchmark: an RFC 3489 client (pyproject.toml test extra)", source="pip"),
    Tool("python3", "python3", "lab tests and the benchmark: our CLI inside the namespaces", essential=True),
    Tool("cat", "coreutils", "lab tests: reading /proc/net/nf_conntrack in a namespace", essential=True),
    Tool("sleep", "coreutils", "lab tests: a long-running process in a namespace", essential=True),
    Tool("true", "coreutils", "lab tests: a process that exits at once", essential=True),
    Tool("bash", "bash", "scripts, and the private-mount-namespace lab test", essential=True),
    Tool("sh", "dash", "lab run/matrix: runs each given command line", essential=True),
    Tool("hostname", "hostname", "lab run tests: a host's addresses", essential=True),
)

#: Debian packages setup.sh itself needs that provide no program the code runs
SETUP_PACKAGES: tuple[str, ...] = ("python3-venv",)

#: shared libraries loaded with ctypes (none), and ones deliberately not needed
LIBRARIES: tuple[str, ...] = ()
NOT_NEEDED: tuple[str, ...] = ("libpcap",)


def apt_packages() -> list[str]:
    """The Debian packages setup.sh installs (the non-essential ones), sorted."""
    return sorted({t.package for t in TOOLS if not t.essential and t.source == "apt"} | set(SETUP_PACKAGES))


def missing() -> list[Tool]:
    """The listed programs that are not on PATH."""
    return [t for t in TOOLS if shutil.which(t.command) is None]


def tool(command: str) -> Tool:
    """The entry of ``command`` (KeyError when it is not listed)."""
    for t in TOOLS:
        if t.command == command:
            return t
    raise KeyError(command)
