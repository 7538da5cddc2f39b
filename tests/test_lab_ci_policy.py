"""The netns suite's policy: skip locally without prerequisites, fail under CI=true."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TARGET = "netns_tests/test_lab_topology.py::test_host_namespace_untouched"


def _run_netns_test(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    """One netns test with no `ip`/`nft` on PATH (a missing prerequisite, root or not)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("CI", "PYTEST_XDIST_WORKER", "PYTEST_ADDOPTS")}
    env["PATH"] = str(tmp_path)          # an empty directory
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "no:xdist", TARGET], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("ci", [None, "false", "0"])
def test_without_prerequisites_netns_tests_skip_locally(tmp_path, ci):
    proc = _run_netns_test(tmp_path, ci)
    assert proc.returncode == 0, proc.stdout
    assert "1 skipped" in proc.stdout


@pytest.mark.parametrize("ci", ["true", "1"])
def test_without_prerequisites_netns_tests_fail_in_ci(tmp_path, ci):
    proc = _run_netns_test(tmp_path, ci)
    assert proc.returncode == 1, proc.stdout
    assert "CI must run the netns tests" in proc.stdout
    assert "skipped" not in proc.stdout
