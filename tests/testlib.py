"""Helpers shared by the tests in tests/ (``tests/conftest.py`` puts this folder on sys.path).

Third-party tools, polling, process clean-up and a coturn ``turnserver`` on loopback
(127.0.0.1 primary, 127.0.0.2 alternate: loopback owns all of 127.0.0.0/8).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from stunturn_diag.stun_requests import fresh_binding_request

A1, A2 = "127.0.0.1", "127.0.0.2"


def in_ci() -> bool:
    """``CI`` is set to anything but an empty/false value (as netns_tests/conftest.py reads it)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing(message: str):
    """A prerequisite is missing: a failure under CI (which must run everything), else a skip."""
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


#: Debian packages of the third-party tools the tests run
PACKAGES = {"turnserver": "coturn", "turnutils_stunclient": "coturn",
            "turnutils_natdiscovery": "coturn", "stun": "stun-client"}


def require_tool(tool: str) -> str:
    """Path of ``tool``, or :func:`missing` naming the Debian package that installs it."""
    path = shutil.which(tool)
    if path is None:
        missing(f"{tool} is not installed (apt-get install {PACKAGES.get(tool, tool)})")
    return path


def run_tool(argv: list[str], timeout: float = 120) -> str:
    """Run a third-party tool to completion; it must exit 0. Returns stdout + stderr."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{argv[0]} exited {proc.returncode}:\n{output}"
    return output


def roles(endpoints: Iterable) -> dict[str, tuple[str, int]]:
    """``{role: (ip, port)}`` from a STUN service's ``.endpoints`` or ``serve --json``'s list."""
    endpoints = getattr(endpoints, "endpoints", endpoints)
    out = {}
    for ep in endpoints:
        ep = ep.as_dict() if hasattr(ep, "as_dict") else ep
        out[ep["role"]] = (ep["ip"], ep["port"])
    return out


def wait_for(predicate, timeout: float = 10.0, what: str = "condition"):
    """Poll until ``predicate()`` is truthy and return it (the timeout only bounds a hang)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


def stop_process(proc: subprocess.Popen, timeout: float = 10) -> None:
    """End a process this test started, by PID: SIGTERM, then SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free on 127.0.0.1 for ``kind`` (checked, then released)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- coturn's turnserver on loopback ---------------------------------------------------------

def free_port_pair() -> tuple[int, int]:
    """Two distinct ports free for UDP and TCP on both loopback addresses (checked, then released)."""
    for _ in range(100):
        ports = []
        for _ in range(2):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.bind((A1, 0))
                ports.append(probe.getsockname()[1])
        held = []
        try:
            for ip in (A1, A2):
                for port in ports:
                    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                        sock = socket.socket(socket.AF_INET, kind)
                        held.append(sock)
                        sock.bind((ip, port))
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
        if ports[0] != ports[1]:
            return ports[0], ports[1]
    raise RuntimeError("no free port pair on loopback")


def _answers_binding(address: tuple[str, int]) -> bool:
    from stunturn_diag.sansio.stun import binding_request, encode

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((A1, 0))
        sock.settimeout(0.2)
        try:
            sock.sendto(encode(fresh_binding_request()), address)
            sock.recvfrom(4096)
            return True
        except OSError:  # timeout, or ECONNREFUSED while it starts
            return False


@contextmanager
def coturn_server(workdir: Path, extra_args: list[str]) -> Iterator[dict[str, tuple[str, int]]]:
    """Run ``turnserver`` on A1/A2 with two free ports until the block ends (ended by PID).

    No config file; its log, pid and user db live in ``workdir``. Yields the RFC 5780
    roles ``{"primary", "alt-port", "alt-ip", "alt-both"}`` once it answers a Binding request.
    """
    tool = require_tool("turnserver")
    for attempt in range(3):  # a port picked as free may be taken before coturn binds it
        p1, p2 = free_port_pair()
        log = open(workdir / f"stdout-{attempt}.log", "w")
        proc = subprocess.Popen(
            [tool, "-n", "--no-cli", "--no-tls", "--no-dtls", "-L", A1, "-L", A2, "-p", str(p1),
             "--alt-listening-port", str(p2), "--log-file", str(workdir / f"turn-{attempt}.log"),
             "--simple-log", "--pidfile", str(workdir / f"turn-{attempt}.pid"),
             "--userdb", str(workdir / "turndb"), *extra_args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir)
        try:
            deadline = time.monotonic() + 20
            ready = False
            while not ready and time.monotonic() < deadline and proc.poll() is None:
                ready = _answers_binding((A1, p1)) or time.sleep(0.05)
            if ready:
                yield {"primary": (A1, p1), "alt-port": (A1, p2), "alt-ip": (A2, p1),
                       "alt-both": (A2, p2)}
                return
        finally:
            stop_process(proc)
            log.close()
    pytest.fail(f"turnserver did not answer STUN on loopback; logs in {workdir}")


@contextmanager
def serve_subprocess(*extra_args: str) -> Iterator[str]:
    """``stunturn-diag serve`` on free loopback ports in its own process; yields its URL.

    Its own process, not an embedded server: CLI tests check their children's exit
    statuses, and nothing of the server's event loop should share their process.
    """
    from stunturn_diag.lab.pair_runner import start_serve

    proc, info = start_serve(subprocess.Popen, "127.0.0.1:0", "--stun-port", "0",
                             "--wait-timeout", "10", "--log-level", "WARNING", *extra_args)
    try:
        yield info["http_url"]
    finally:
        proc.terminate()
        proc.wait(10)


def in_background(fn, *args, **kwargs):
    """Run ``fn`` in a daemon thread; returns (thread, result dict with "value" or "error")."""
    result: dict = {}

    def run():
        try:
            result["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # surfaced by the test
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def is_closed(sock: socket.socket, timeout: float = 5.0) -> bool:
    """Has the peer closed (or reset) ``sock``? ``False`` if it is still open after ``timeout``."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
