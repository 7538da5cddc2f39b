"""`stunturn-diag lab` end to end: up/exec/status/down, crash cleanup, the demo."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from stunturn_diag.cli import main
from stunturn_diag.lab import down
from stunturn_diag.lab.demo import run_demo, render
from stunturn_diag.lab.runner import list_namespaces

pytestmark = pytest.mark.netns


def _ours(name: str) -> list[str]:
    return [n for n in list_namespaces() if n.startswith(name + "-")]


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("STUNTURN_LAB_STATE_DIR", str(tmp_path))
    return tmp_path


def test_up_exec_status_down(state_dir):
    runner = CliRunner()
    result = runner.invoke(main, ["lab", "up", "--site-a", "symmetric-random", "--site-b",
                                  "public", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    name = info["name"]
    try:
        assert info["sites"]["a"]["nat"] == "symmetric-random"
        assert len(_ours(name)) == len(info["nodes"])
        status = json.loads(runner.invoke(main, ["lab", "status", "--json"]).output)
        assert [lab["name"] for lab in status["labs"]] == [name]
        assert status["labs"][0]["up"] is True
        # exec runs inside the node's namespace and passes the exit status through
        cli = [sys.executable, "-m", "stunturn_diag.cli", "lab"]
        env_out = subprocess.run(cli + ["exec", name, "b1", "--", "ip", "-4", "-o", "addr"],
                                 capture_output=True, text=True, timeout=30,
                                 env={"STUNTURN_LAB_STATE_DIR": str(state_dir),
                                      "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        assert env_out.returncode == 0, env_out.stderr
        assert info["sites"]["b"]["hosts"]["b1"] + "/27" in env_out.stdout
        failed = runner.invoke(main, ["lab", "exec", name, "b1", "--", "false"])
        assert failed.exit_code == 1
        missing = runner.invoke(main, ["lab", "exec", name, "zz9", "--", "true"])
        assert missing.exit_code == 1 and "no node 'zz9'" in missing.output
    finally:
        result = runner.invoke(main, ["lab", "down", name])
    assert result.exit_code == 0, result.output
    assert _ours(name) == []
    assert json.loads(runner.invoke(main, ["lab", "status", "--json"]).output)["labs"] == []
    gone = runner.invoke(main, ["lab", "exec", name, "a1", "--", "true"])
    assert gone.exit_code == 1 and "no lab called" in gone.output


def test_down_after_a_crash_removes_everything(state_dir):
    code = ("import os, signal\n"
            "from stunturn_diag.lab import Lab, LabSpec\n"
            "lab = Lab(LabSpec.simple('full-cone', 'port-restricted')); lab.up()\n"
            "lab.popen('a1', ['sleep', '60'])\n"
            "print(lab.name, flush=True)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    name = proc.stdout.strip()
    assert name.startswith("stl-")
    try:
        assert _ours(name), "the crashed lab should still be there"
    finally:
        gone = down(name)
    assert len(gone) == 6
    assert _ours(name) == []


def test_demo_runs_everything_and_tears_down():
    messages: list[str] = []
    report = run_demo(progress=messages.append)
    assert _ours(report["lab"]) == []
    assert [s["step"] for s in report["steps"]] == ["serve", "probe a", "probe b", "punch udp"]
    text = render(report)
    for step in report["steps"]:
        assert f"- {step['step']}: {step['status']}" in text
    assert messages[-1] == "lab torn down"
    # the other parts have landed: the whole demo must succeed against ground truth
    assert report["ok"], text
    for step in report["steps"][1:3]:
        assert step["comparison"]["mismatches"] == []
        assert step["comparison"]["matches"]
