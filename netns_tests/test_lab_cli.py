"""`stunturn-diag lab` end to end: up/exec/status/down, crash cleanup, the demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from stunturn_diag.cli import main
from stunturn_diag.lab import down
from stunturn_diag.lab.demo import run_demo, render
from stunturn_diag.lab.runner import list_namespaces

from conftest import in_ci, record_lab

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
    record_lab(name)
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
    # a message went each way through the punched channel, and the summary says so
    punch = report["steps"][3]
    ini, rec = punch["initiator"]["result"], punch["receiver"]["result"]
    assert punch["exchange"] == {"a1 -> b1": True, "b1 -> a1": True}
    assert rec["received"] == ini["sent"] == "hello from a1"
    assert ini["received"] == rec["sent"] == "hello from b1"
    assert ini["peer"] == {"ip": report["sites"]["b"]["public_ip"], "port": rec["mapped"]["port"]}
    assert '"hello from a1" arrived through the punched channel' in text
    assert f"initiator a1: 192.168.1.10:{ini['local']['port']} (mapped 203.0.113.2:" in text
    assert "talked directly over UDP" in text
    assert messages[0].startswith(f"building lab {report['lab']}: ")


def _demo_cli(*args: str, timeout: float = 240) -> tuple[int, dict, str]:
    proc = subprocess.run([sys.executable, "-m", "stunturn_diag.cli", "lab", "demo", *args,
                           "--json"], capture_output=True, text=True, timeout=timeout)
    report = json.loads(proc.stdout)
    record_lab(report["lab"])
    assert _ours(report["lab"]) == []
    return proc.returncode, report, proc.stderr


@pytest.mark.parametrize("args,initiator,receiver", [
    (("--protocol", "tcp"), "a1", "b1"),
    (("--same-nat", "--site-a", "full-cone"), "a1", "a2"),
    (("--cgnat", "b", "--protocol", "tcp"), "a1", "b1"),
], ids=["tcp", "same-nat", "cgnat-tcp"])
def test_demo_variants_exchange_messages(args, initiator, receiver):
    code, report, err = _demo_cli(*args)
    punch = report["steps"][-1]
    assert code == 0 and report["ok"], (punch, err)
    assert punch["exchange"] == {f"{initiator} -> {receiver}": True,
                                 f"{receiver} -> {initiator}": True}
    assert punch["receiver"]["result"]["received"] == f"hello from {initiator}"
    assert punch["initiator"]["result"]["received"] == f"hello from {receiver}"
    if "--same-nat" in args:
        assert punch["initiator"]["result"]["strategy"] == "lan"
    if "--cgnat" in args:
        assert report["sites"]["b"]["cgnat"] == "port-restricted"


def test_demo_connects_an_unpunchable_pair_through_the_relay():
    code, report, err = _demo_cli("--site-a", "symmetric-random", "--site-b",
                                  "symmetric-random")
    punch = report["steps"][-1]
    assert code == 0 and report["ok"] is True, err
    assert report["relay"] == {"ip": "198.51.100.10", "port": 3480}
    for role in ("initiator", "receiver"):
        result = punch[role]["result"]
        assert result["strategy"] == "relay" and result["relayed"] is True
        assert result["relay_reason"].startswith("relay-needed")    # the probes were shared
    assert punch["exchange"] == {"a1 -> b1": True, "b1 -> a1": True}
    assert "talked through the TURN relay over UDP" in render(report)


def test_demo_paths_shows_direct_portmap_and_relay():
    code, report, err = _demo_cli("--paths")
    assert code == 0 and report["ok"] is True, err
    paths = {s["step"]: s for s in report["steps"] if s["step"].startswith("path ")}
    assert list(paths) == ["path direct", "path portmap", "path relay"]
    used = {name: (s["initiator"]["result"]["strategy"], s["receiver"]["result"]["strategy"])
            for name, s in paths.items()}
    assert used == {"path direct": ("simultaneous", "simultaneous"),
                    "path portmap": ("portmap", "portmap"), "path relay": ("relay", "relay")}
    text = render(report)
    assert "reached at its gateway mapping" in text and "(relayed: relay-needed" in text


def test_demo_reports_an_unpunchable_pair_honestly():
    code, report, err = _demo_cli("--site-a", "symmetric-random", "--site-b",
                                  "symmetric-random", "--no-relay")
    punch = report["steps"][-1]
    assert code == 1 and report["ok"] is False
    assert [s["status"] for s in report["steps"][:3]] == ["ok", "ok", "ok"]
    assert punch["status"] == "failed"
    assert punch["initiator"]["result"]["reason"] == "relay-needed"   # the probes were shared
    assert punch["exchange"] == {"a1 -> b1": False, "b1 -> a1": False}
    text = render(report)
    assert "initiator a1: failed (relay-needed)" in text
    assert "result: some steps failed or are not built yet: punch udp (relay-needed)" in text


def _unprivileged_tree() -> tuple[str, str]:
    """A copy of the package and click that user 65534 can read, and a Python it can run."""
    import shutil
    import tempfile

    import click
    import stunturn_diag

    root = tempfile.mkdtemp(prefix="stunturn-unpriv-")
    os.chmod(root, 0o755)
    for pkg in (stunturn_diag, click):
        src = os.path.dirname(pkg.__file__)
        shutil.copytree(src, os.path.join(root, os.path.basename(src)),
                        ignore=shutil.ignore_patterns("__pycache__"))
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o755)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644)
    for python in (sys.executable, shutil.which("python3"), "/usr/bin/python3"):
        if python and subprocess.run(SETPRIV + [python, "-c", "import tomllib"],
                                     capture_output=True, timeout=30).returncode == 0:
            return root, python
    shutil.rmtree(root)
    message = "no Python interpreter that user 65534 may run"
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


SETPRIV = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.mark.parametrize("args", [["lab", "demo"], ["lab", "demo", "--json"], ["lab", "up"],
                                  ["lab", "down", "--all"], ["lab", "status"]])
def test_unprivileged_user_gets_one_clear_line(args):
    import shutil

    root, python = _unprivileged_tree()
    try:
        proc = subprocess.run(SETPRIV + [python, "-m", "stunturn_diag.cli", *args],
                              capture_output=True, text=True, timeout=60, cwd="/",
                              env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                   "PYTHONPATH": root, "HOME": "/"})
    finally:
        shutil.rmtree(root)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr == ("Error: the NAT lab needs root (it creates network namespaces "
                           "and nftables rules) (run it with sudo)\n")


def test_root_without_capabilities_gets_one_clear_line():
    """Root in an unprivileged container: euid 0, but no CAP_NET_ADMIN/CAP_SYS_ADMIN."""
    proc = subprocess.run(["setpriv", "--bounding-set=-all", "--inh-caps=-all",
                           sys.executable, "-m", "stunturn_diag.cli", "lab", "demo"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("Error: the NAT lab needs CAP_NET_ADMIN and CAP_SYS_ADMIN")
    assert len(proc.stderr.splitlines()) == 1


KILL_SCRIPT = r"""
set -u
mkdir -p /run/netns
mount -t tmpfs stl-test /run/netns || exit 3   # a private /run/netns: only our labs are seen
[ -z "$(ip netns list)" ] || exit 4          # never run `down --all` on shared namespaces
export STUNTURN_LAB_STATE_DIR="$STATE"
export TMPDIR="$STATE/tmp"; mkdir -p "$TMPDIR"   # the lab's temp folders (coturn's) land here
cli="$PY -m stunturn_diag.cli"
$cli lab demo > "$STATE/out" 2> "$STATE/err" &
demo=$!
for _ in $(seq 1 300); do
    grep -q "probing the NAT of site a" "$STATE/err" && break
    sleep 0.1
done
echo "up=$(ip netns list | wc -l)"
kill -9 $demo; wait $demo
echo "left=$(ip netns list | wc -l)"
pids=$(for ns in $(ip netns list | awk '{print $1}'); do ip netns pids "$ns"; done)
echo "pids=$(echo $pids | wc -w)"
echo "tmp_left=$(ls -d "$TMPDIR"/stl-* 2>/dev/null | wc -l)"
$cli lab down --all > "$STATE/down" 2>&1; echo "down_rc=$?"
echo "after=$(ip netns list | wc -l)"
echo "tmp_after=$(ls -d "$TMPDIR"/stl-* 2>/dev/null | wc -l)"
alive=0                                     # zombies awaiting their reaper do not count
for p in $pids; do
    state=$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)
    [ -n "$state" ] && [ "$state" != Z ] && alive=$((alive + 1)); echo "state_$p=${state:-gone}"
done
echo "alive=$alive"
$cli lab down --all > /dev/null 2>&1        # in case anything failed above
"""


def test_demo_killed_hard_is_cleaned_up_by_down_all(tmp_path):
    """kill -9 a running `lab demo`: its namespaces, processes and temp folders (coturn's)
    stay; `lab down --all` removes them. Runs in a private mount namespace (own /run/netns) so --all cannot
    touch labs of tests running in parallel."""
    import shutil

    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed")
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c",
                           KILL_SCRIPT], capture_output=True, text=True, timeout=180,
                          env=dict(os.environ, STATE=str(tmp_path), PY=sys.executable))
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    facts = dict(line.split("=", 1) for line in proc.stdout.split())
    assert facts["up"] == "6", (proc.stdout, proc.stderr)
    assert facts["left"] == "6" and int(facts["pids"]) >= 1     # the crash left them
    assert facts["down_rc"] == "0", (tmp_path / "down").read_text()
    assert "removed 6 namespace(s)" in (tmp_path / "down").read_text()
    assert facts["after"] == "0" and facts["alive"] == "0"
    assert int(facts["tmp_left"]) >= 1 and facts["tmp_after"] == "0", proc.stdout


def test_demo_stopped_by_sigterm_tears_its_lab_down():
    import signal

    proc = subprocess.Popen([sys.executable, "-m", "stunturn_diag.cli", "lab", "demo"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stderr.readline()
        assert first.startswith("building lab stl-"), first
        name = first.split()[2].rstrip(":")
        record_lab(name)
        for _ in range(200):                        # bounded: up to 200 progress lines
            line = proc.stderr.readline()
            if not line or line.startswith("probing the NAT of site a"):
                break
        assert _ours(name), "the lab should be up while the demo probes"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode != 0
    assert "Traceback" not in err and "Aborted!" in err
    assert _ours(name) == []
