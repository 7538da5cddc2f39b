"""Runs a :class:`LabPlan`: builds the namespaces, runs commands in them, tears down.

``Lab`` is a context manager that always tears down (also when the build fails half
way). Namespaces are named ``stl-<6 hex>-<node>``; :func:`down_all` removes every
namespace of the ``stl-`` family, e.g. after a crash.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import shutil
import signal
import subprocess
import sys
import time
from typing import Sequence

from .. import sysdeps
from ..errors import ConfigError, LabError, PrivilegeError
from . import portmap_runner, state
from stunturn_diag.sansio.lab import v6
from stunturn_diag.sansio.lab.compiler import LabPlan, Step, compile_lab
from stunturn_diag.sansio.lab.spec import MAX_BACKGROUND_S, LabSpec
from stunturn_diag.sansio.lab.topology import SERVER, SERVER_ALT_IP, SERVER_IP, Topology

PREFIX_FAMILY = state.PREFIX_FAMILY
#: UDP port on the server host that background flows go to (discard, RFC 863):
#: nothing listens there in the lab, the server host answers ICMP port unreachable
BACKGROUND_PORT = 9


#: the programs the lab runs (their packages: stunturn_diag/sysdeps.py)
LAB_TOOLS = ("ip", "nft", "sysctl")
CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21          # `ip netns add` mounts the namespace under /run/netns


def check_prerequisites() -> None:
    """Raise PrivilegeError without root (or root without CAP_NET_ADMIN/CAP_SYS_ADMIN,
    as in an unprivileged container), LabError when ``ip``/``nft``/``sysctl`` are missing."""
    if os.geteuid() != 0:
        raise PrivilegeError("the NAT lab needs root (it creates network namespaces and "
                             "nftables rules)", hint="run it with sudo")
    for tool in LAB_TOOLS:
        if shutil.which(tool) is None:
            raise LabError(f"the NAT lab needs the '{tool}' command",
                           hint=f"apt-get install {sysdeps.tool(tool).package}")
    caps = effective_capabilities()
    missing = [name for bit, name in ((CAP_NET_ADMIN, "CAP_NET_ADMIN"),
                                      (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"))
               if caps is not None and not caps >> bit & 1]
    if missing:
        raise PrivilegeError(f"the NAT lab needs {' and '.join(missing)}, which this root "
                             "process lacks", hint="run it on the host, or in a container "
                             "started with --privileged")


def effective_capabilities() -> int | None:
    """This process's effective capability mask (``CapEff`` in /proc/self/status)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        return None
    return None


CONTAINER_HINT = ("in a container: run it with --privileged (or at least --cap-add NET_ADMIN "
                  "--cap-add SYS_ADMIN and mount rights for /run/netns), see docs/ci.md")


def build_hint(argv: Sequence[str], said: str) -> str | None:
    """What to do when a build step failed the way it does in a restricted container."""
    text = said.lower()
    if list(argv[:3]) == ["ip", "netns", "add"] and ("permission" in text or "mount" in text
                                                    or "read-only" in text):
        return "`ip netns add` must create and mount /run/netns/NAME; " + CONTAINER_HINT
    if "sysctl" in argv and "read-only" in text:
        return ("/proc/sys is read-only here; " + CONTAINER_HINT.replace(
            "--privileged", "--privileged or --security-opt systempaths=unconfined", 1))
    return None


def new_prefix() -> str:
    """A fresh namespace prefix of the ``stl-`` family, e.g. ``stl-3fa2c1``."""
    return PREFIX_FAMILY + secrets.token_hex(3)


def _run(step: Step, timeout: float = 30) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(step.argv, input=step.stdin, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabError(f"lab command failed: {' '.join(step.argv[:6])}...: {exc}") from None


def list_namespaces() -> list[str]:
    """Names from ``ip netns list`` (first word of each line)."""
    out = _run(Step(["ip", "netns", "list"]))
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


def _kill_namespace_processes(netns: str) -> None:
    """End processes still running inside one of our namespaces (by PID)."""
    out = _run(Step(["ip", "netns", "pids", netns]))
    pids = [int(p) for p in out.stdout.split() if p.isdigit()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for pid in pids:
            try:
                os.kill(pid, sig)
                alive.append(pid)
            except ProcessLookupError:
                pass
        if not alive:
            return
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and any(_alive(p) for p in alive):
            time.sleep(0.05)
        pids = [p for p in alive if _alive(p)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return False


def _delete(names: list[str]) -> list[str]:
    """Delete these namespaces (ending their processes first); LabError if any stays."""
    gone, failed = [], []
    for netns in names:
        _kill_namespace_processes(netns)
        result = _run(Step(["ip", "netns", "delete", netns]))
        if result is not None and result.returncode != 0:
            failed.append(f"{netns}: {result.stderr.strip()}")
        else:
            gone.append(netns)
    if failed:
        raise LabError("could not delete lab namespace(s): " + "; ".join(failed),
                       hint="retry `stunturn-diag lab down --all`")
    return gone


def delete_namespaces(prefix: str) -> list[str]:
    """Delete every namespace named ``{prefix}-...`` (or exactly ``prefix``); returns them."""
    return _delete([n for n in list_namespaces()
                    if n == prefix or n.startswith(prefix + "-")])


def down(name: str) -> list[str]:
    """Tear down the lab ``name`` (its namespaces and state file)."""
    check_prerequisites()
    if not name.startswith(PREFIX_FAMILY):
        raise LabError(f"{name!r} is not a lab name", hint=f"lab names start with {PREFIX_FAMILY!r}")
    gone = delete_namespaces(name)
    state.forget(name)
    state.forget_workdirs(name)
    return gone


def down_all() -> list[str]:
    """Remove every namespace of the ``stl-`` family and all lab state (crash cleanup)."""
    check_prerequisites()
    gone = _delete([n for n in list_namespaces() if n.startswith(PREFIX_FAMILY)])
    labs = {"-".join(ns.split("-")[:2]) for ns in gone} | set(state.known())
    for name in state.known():
        state.forget(name)
    for name in labs:            # only the labs removed here: /tmp is shared with other labs
        state.forget_workdirs(name)
    return gone


@contextlib.contextmanager
def sigterm_interrupts():
    """SIGTERM/SIGHUP raise KeyboardInterrupt while the block runs, so labs' context
    managers tear them down (only possible in the main thread; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Lab:
    """A built NAT lab. ``with Lab(spec) as lab: ...`` builds it and always tears it down."""

    def __init__(self, spec: LabSpec, *, prefix: str | None = None) -> None:
        self.spec = spec
        self.name = prefix or new_prefix()
        if not self.name.startswith(PREFIX_FAMILY):
            raise LabError(f"lab prefix must start with {PREFIX_FAMILY!r}")
        self.plan: LabPlan = compile_lab(spec, self.name)
        self.topology: Topology = self.plan.topology
        self._procs: list[subprocess.Popen] = []
        self._up = False

    # -- lifecycle -------------------------------------------------------------------
    def __enter__(self) -> "Lab":
        self.up()
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self) -> "Lab":
        """Build every namespace, link, address, route and ruleset (tears down on failure)."""
        check_prerequisites()
        if self._up:
            raise LabError(f"lab {self.name} is already up")
        self._up = True
        try:
            for step in self.plan.setup:
                result = _run(step)
                if result.returncode != 0 and not step.optional:
                    said = result.stderr.strip() or result.stdout.strip()
                    raise LabError(f"building lab {self.name} failed at `{' '.join(step.argv)}`: "
                                   f"{said}", hint=build_hint(step.argv, said))
            portmap_runner.start(self)      # miniupnpd on +portmap sites (ended at down)
            self._start_background()
        except BaseException:
            self.down()
            raise
        return self

    def _start_background(self) -> None:
        """Start each site's background flows (``SiteSpec.background_flows_per_s``) in
        its last LAN host; they end with the lab (or after MAX_BACKGROUND_S)."""
        for name, site in self.spec.sites.items():
            index = site.background_host
            if index is None:
                continue
            host = self.site_hosts(name)[index - 1]
            self.popen(host, [sys.executable, "-m", "stunturn_diag.lab.background",
                              "--to", f"{SERVER_IP}:{BACKGROUND_PORT}",
                              "--rate", f"{site.background_flows_per_s:g}",
                              "--duration", f"{MAX_BACKGROUND_S:g}"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def background_host(self, site: str) -> str | None:
        """The LAN host that sends ``site``'s background flows (None without them)."""
        index = self.spec.sites[self._site(site).name].background_host
        return None if index is None else self.site_hosts(site)[index - 1]

    def down(self) -> None:
        """End processes started with :meth:`popen`, then delete the lab's namespaces."""
        try:
            for proc in self._procs:
                if proc.poll() is None:
                    proc.terminate()
            for proc in self._procs:
                try:
                    proc.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    try:
                        proc.wait(timeout=3)
                    except subprocess.TimeoutExpired:
                        pass  # unkillable (e.g. stuck in the kernel): the namespaces go anyway
            self._procs.clear()
        finally:
            if self._up:
                delete_namespaces(self.name)
                self._up = False

    def save_state(self) -> None:
        """Remember this lab for later CLI calls (``lab exec``/``lab down``)."""
        state.save(self.name, {"name": self.name, "spec": self.spec.to_dict()})

    @classmethod
    def attach(cls, name: str) -> "Lab":
        """The lab ``name`` that ``lab up`` built earlier (no building, no teardown)."""
        data = state.load(name)
        try:
            return cls(LabSpec.from_dict(data["spec"]), prefix=data["name"])
        except (KeyError, TypeError, ConfigError) as exc:  # valid JSON, but not a saved lab
            raise LabError(f"lab state for {name!r} does not describe a lab ({type(exc).__name__}: {exc})",
                           hint=f"`stunturn-diag lab down {name}` removes it") from None

    # -- addresses ---------------------------------------------------------------------
    @property
    def server_ip(self) -> str:
        return SERVER_IP

    @property
    def server_alt_ip(self) -> str:
        return SERVER_ALT_IP

    @property
    def server(self) -> str:
        """The server host's node name (``"srv"``)."""
        return SERVER

    @property
    def node_names(self) -> list[str]:
        return list(self.topology.nodes)

    @property
    def hosts(self) -> dict[str, str]:
        """LAN host node -> its LAN address, e.g. ``{"a1": "192.168.1.10"}``."""
        return self.topology.hosts

    @property
    def sites(self) -> list[str]:
        return list(self.topology.sites)

    def host_ip(self, host: str) -> str:
        return self._host(host)

    def site_of(self, host: str) -> str:
        self._host(host)
        return self.topology.site_of(host)

    def site_public_ip(self, site: str) -> str:
        """The address the internet sees for ``site`` (its outermost NAT's WAN)."""
        return self._site(site).public_ip

    # IPv6 of dual-stack sites (``+v6=MODE``, lab/v6.py); None where a site has none
    @property
    def server_ip6(self) -> str:
        return v6.SERVER_IP6

    @property
    def server_alt_ip6(self) -> str:
        return v6.SERVER_ALT_IP6

    def site_v6(self, site: str) -> "v6.SiteV6 | None":
        """The site's IPv6 layout (mode, prefixes, host addresses), None without IPv6."""
        return v6.plan_sites(self.spec, self.topology).get(self._site(site).name)

    def site_public_ip6(self, site: str) -> str | None:
        """The IPv6 address the internet sees from the site's first host."""
        layout = self.site_v6(site)
        return layout.public_ip if layout else None

    def host_ip6(self, host: str) -> str | None:
        layout = self.site_v6(self.site_of(host))
        return layout.hosts[host] if layout else None

    def site_hosts(self, site: str) -> list[str]:
        return list(self._site(site).hosts)

    def nat_node(self, site: str) -> str:
        return self._site(site).nat_node

    def expected(self, site: str) -> dict:
        """Ground truth seen from a host of ``site``: its NAT's ``NatSpec.expected``, or
        for a site behind a CGNAT :func:`~stunturn_diag.sansio.lab.nat.stacked_expected`, plus
        ``port_mapping`` (:func:`~stunturn_diag.sansio.lab.portmap.expected`)."""
        return self.spec.sites[self._site(site).name].expected

    def netns(self, node: str) -> str:
        if node not in self.topology.nodes:
            raise LabError(f"lab {self.name} has no node {node!r}",
                           hint=f"nodes: {', '.join(self.topology.nodes)}")
        return self.topology.netns(node)

    def describe(self) -> dict:
        """JSON-able summary: name, nodes with namespaces, addresses, sites."""
        return {
            "name": self.name,
            "nodes": {n: self.topology.netns(n) for n in self.topology.nodes},
            "server": {"node": SERVER, "ip": SERVER_IP, "alt_ip": SERVER_ALT_IP,
                       "ip6": v6.SERVER_IP6, "alt_ip6": v6.SERVER_ALT_IP6},
            "sites": {s.name: {"nat": self.spec.sites[s.name].nat.name,
                               "cgnat": (self.spec.sites[s.name].cgnat.name
                                         if self.spec.sites[s.name].cgnat else None),
                               "nat_node": s.nat_node, "cgnat_node": s.cgnat_node,
                               "public_ip": s.public_ip, "hosts": s.hosts,
                               "ipv6": self._describe_v6(s.name),
                               "background_flows_per_s":
                                   self.spec.sites[s.name].background_flows_per_s}
                      for s in self.topology.sites.values()},
        }

    def _describe_v6(self, site: str) -> dict | None:
        layout = self.site_v6(site)
        return layout and {"mode": layout.mode, "syn": layout.syn, "public_ip": layout.public_ip,
                           "hosts": layout.hosts}

    # -- running things ----------------------------------------------------------------
    def command(self, node: str, argv: Sequence[str]) -> list[str]:
        """The argv that runs ``argv`` inside ``node``'s namespace."""
        return ["ip", "netns", "exec", self.netns(node), *argv]

    def exec(self, node: str, argv: Sequence[str], *, timeout: float = 60,
             input: str | None = None, check: bool = False,
             env: dict | None = None) -> subprocess.CompletedProcess:
        """Run ``argv`` in ``node`` and wait (text output captured)."""
        try:
            result = subprocess.run(self.command(node, argv), input=input, capture_output=True,
                                    text=True, timeout=timeout, env=env, check=False)
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"`{' '.join(argv)}` in {node} ran over {timeout:g}s") from exc
        except OSError as exc:
            raise LabError(f"cannot run `{' '.join(argv)}` in {node}: {exc}") from None
        if check and result.returncode != 0:
            raise LabError(f"`{' '.join(argv)}` in {node} exited {result.returncode}: "
                           f"{result.stderr.strip()[-500:]}")
        return result

    def popen(self, node: str, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        """Start ``argv`` in ``node``; it is ended (by PID) when the lab goes down."""
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("text", True)
        proc = subprocess.Popen(self.command(node, argv), **kwargs)
        self._procs.append(proc)
        return proc

    def _site(self, site: str):
        try:
            return self.topology.sites[site]
        except KeyError:
            raise LabError(f"lab {self.name} has no site {site!r}",
                           hint=f"sites: {', '.join(self.topology.sites)}") from None

    def _host(self, host: str) -> str:
        try:
            return self.topology.hosts[host]
        except KeyError:
            raise LabError(f"lab {self.name} has no host {host!r}",
                           hint=f"hosts: {', '.join(self.topology.hosts)}") from None
