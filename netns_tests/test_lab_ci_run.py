"""`lab run` / `lab matrix` for real: a third-party-style program (plain sockets, not our
library) through a matrix, our own punch through a matrix, outputs and exit codes,
teardown on signals, and `lab down --all --mine` after `kill -9` of a runner."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import xmlschema

from stunturn_diag.errors import LabUnavailable
from stunturn_diag.lab.ci.netem import check_netem
from stunturn_diag.lab.runner import list_namespaces

from conftest import record_lab

pytestmark = pytest.mark.netns

HERE = Path(__file__).resolve().parent
SUPPORT = HERE / "support"
XSD = HERE.parent / "tests" / "junit.xsd"
CLI = [sys.executable, "-m", "stunturn_diag.cli", "lab"]
PY = sys.executable


def _ours(name: str) -> list[str]:
    return [n for n in list_namespaces() if n.startswith(name + "-")]


def _cli(tmp_path, *args, timeout=300):
    env = dict(os.environ, STUNTURN_LAB_STATE_DIR=str(tmp_path / "state"))
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=tmp_path)


def _json_lines(text: str) -> tuple[list[dict], dict]:
    lines = [json.loads(x) for x in text.splitlines() if x.strip()]
    for line in lines[:-1]:
        record_lab(line["lab"]) if line.get("lab") else None
        assert line.get("lab") is None or _ours(line["lab"]) == [], line["lab"]
    return lines[:-1], lines[-1]["summary"]


# --- a third-party-style program: naive UDP peers + a tiny HTTP rendezvous -----------------

NAIVE_TYPES = ["full-cone", "port-restricted", "restricted-cone", "symmetric-random"]


def naive_connects(a: str, b: str) -> bool:
    """What the naive peer (netns_tests/support/naive_peer.py) can do: it assumes the NAT
    keeps its local port (a symmetric NAT does not), and peer a's packets reach b's NAT
    first, so a plain masquerade at b (mapping moves on unsolicited: the conntrack
    collision) sends b's answers from another port, which a never hears."""
    from stunturn_diag.lab import CATALOGUE

    if any(CATALOGUE[t].expected["udp"]["mapping"] != "endpoint-independent" for t in (a, b)):
        return False
    return not CATALOGUE[b].expected["udp"]["mapping_moves_on_unsolicited"]


def test_naive_program_through_the_matrix(tmp_path):
    import itertools

    pairs = list(itertools.combinations_with_replacement(NAIVE_TYPES, 2))
    expectations = {f"{a}--{b}": "pass" if naive_connects(a, b) else "fail" for a, b in pairs}
    plan = {"types": NAIVE_TYPES, "jobs": 2, "timeout": 20, "expectations": expectations,
            "server": f"{PY} {SUPPORT / 'rendezvous.py'} {{server_ip}} 8000",
            "server_ready": "tcp:8000",
            "a": f"{PY} {SUPPORT / 'naive_peer.py'} a http://{{server_ip}}:8000 {{key}} "
                 "{peer_public_ip} 5",
            "b": f"{PY} {SUPPORT / 'naive_peer.py'} b http://{{server_ip}}:8000 {{key}} "
                 "$STUNTURN_LAB_PEER_PUBLIC_IP 5"}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    junit = tmp_path / "junit.xml"
    proc = _cli(tmp_path, "matrix", "--plan", "plan.json", "--junit", str(junit), "--json",
                "--logdir", "logs")
    results, summary = _json_lines(proc.stdout)
    by_pair = {r["pair"]: r for r in results}
    assert list(by_pair) == list(expectations)
    # the program's real outcomes are what its method allows, pair by pair
    outcomes = {p: r["outcome"] for p, r in by_pair.items()}
    assert outcomes == {p: "connected" if e == "pass" else "failed"
                        for p, e in expectations.items()}, proc.stderr
    assert proc.returncode == 0 and summary["ok"], proc.stderr
    assert outcomes["full-cone--full-cone"] == "connected"          # cone pairs pass
    assert outcomes["port-restricted--port-restricted"] == "failed"  # masquerade collides
    # theory column: our punch could do port-restricted--port-restricted, not with symmetric
    assert by_pair["port-restricted--port-restricted"]["theory"]["udp"]["possible"] is True
    assert by_pair["port-restricted--symmetric-random"]["theory"]["udp"]["possible"] is False
    # JUnit: valid, one case per pair, theory-impossible + expected-to-fail cases skipped
    xmlschema.XMLSchema(XSD).validate(str(junit))
    suite = ET.parse(junit).getroot().find("testsuite")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert list(cases) == list(expectations)
    skipped = sorted(n for n, c in cases.items() if c.find("skipped") is not None)
    assert skipped == ["port-restricted--symmetric-random", "symmetric-random--symmetric-random"]
    assert suite.get("failures") == "0" and suite.get("errors") == "0"
    assert suite.get("skipped") == "2" and suite.get("tests") == "10"
    ok = cases["full-cone--full-cone"]
    assert "a: heard the peer from 203.0.113.18" in ok.find("system-out").text
    assert "POST /register" in ok.find("system-err").text            # the server's log
    # per-pair logs and the Markdown table
    logs = tmp_path / "logs"
    assert "heard the peer" in (logs / "full-cone--full-cone" / "b.out").read_text()
    assert "never heard the peer" in (logs / "port-restricted--port-restricted" / "a.err").read_text()
    table = (logs / "results.md").read_text()
    assert "| port-restricted--port-restricted | not connect | passed (failed) |" in table
    assert "10 pairs: 8 passed, 0 failed, 2 skipped, 0 errors" in table


# --- our own punch through the matrix reproduces the punch theory ---------------------------

PUNCH_A = (f"{PY} -m stunturn_diag punch http://{{server_ip}}:8080 --key {{key}} "
           "--target-ip {b_public_ip} --protocol udp --probe --json --punch-timeout 4 -q")
PUNCH_B = (f"{PY} -m stunturn_diag punch http://{{server_ip}}:8080 --key {{key}} "
           "--protocol udp --wait 30 --wait-interval 0.2 --probe --json --punch-timeout 4 -q")
SERVE = f"{PY} -m stunturn_diag serve {{server_ip}}:8080 --alt-ip {{alt_ip}}"


def test_punch_through_the_matrix_matches_the_theory(tmp_path):
    proc = _cli(tmp_path, "matrix", "--types", "full-cone,port-restricted,symmetric-random",
                "--jobs", "2", "--server", SERVE, "--server-ready", "tcp:8080",
                "--a", PUNCH_A, "--b", PUNCH_B, "--timeout", "60", "--json",
                "--logdir", "logs")
    results, summary = _json_lines(proc.stdout)
    assert proc.returncode == 0 and summary["ok"], (proc.stdout, proc.stderr)
    status = {r["pair"]: r["status"] for r in results}
    assert status == {"full-cone--full-cone": "passed", "full-cone--port-restricted": "passed",
                      "full-cone--symmetric-random": "passed",
                      "port-restricted--port-restricted": "passed",
                      "port-restricted--symmetric-random": "skipped",
                      "symmetric-random--symmetric-random": "skipped"}
    for r in results:
        out = json.loads((Path(r["logdir"]) / "a.out").read_text().splitlines()[-1])
        if r["status"] == "passed":
            assert out["ok"] and out["strategy"] == r["theory"]["udp"]["strategy"]
        else:
            assert r["outcome"] == "failed" and out["reason"] == "relay-needed"


# --- one run: outputs, placeholders, environment, exit codes -------------------------------

def test_run_collects_outputs_and_exit_codes(tmp_path):
    a = "echo A {peer_public_ip} {key} $STUNTURN_LAB_KEY {type_a}; echo to-err >&2"
    b = "echo B {peer_public_ip} $STUNTURN_LAB_PEER_PUBLIC_IP > {logdir}/extra.txt; exit 3"
    proc = _cli(tmp_path, "run", "--site-a", "full-cone+no-hairpin", "--site-b", "public",
                "--a", a, "--b", b, "--json", "--logdir", "logs")
    res = json.loads(proc.stdout)
    record_lab(res["lab"])
    assert _ours(res["lab"]) == []
    assert proc.returncode == 1 and res["status"] == "failed" and res["outcome"] == "failed"
    assert res["commands"]["a"]["exit"] == 0 and res["commands"]["b"]["exit"] == 3
    assert (res["commands"]["a"]["node"], res["commands"]["b"]["node"]) == ("a1", "b1")
    words = Path(res["commands"]["a"]["stdout"]).read_text().split()
    assert words[:2] == ["A", "192.0.2.42"] and words[2] == words[3] and len(words[2]) == 24
    assert words[4] == "full-cone+no-hairpin"
    assert Path(res["commands"]["a"]["stderr"]).read_text() == "to-err\n"
    assert (tmp_path / "logs" / res["pair"] / "extra.txt").read_text() == \
        "B 203.0.113.2 203.0.113.2\n"
    # --expect fail turns it around
    proc = _cli(tmp_path, "run", "--site-a", "full-cone", "--a", "true", "--b", "exit 1",
                "--expect", "fail", "--logdir", "logs")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "full-cone--full-cone (lab stl-" in proc.stdout and ": passed (failed" in proc.stdout
    record_lab(proc.stdout.split("(lab ")[1].split(")")[0])


def test_run_timeout_same_nat_and_cgnat(tmp_path):
    proc = _cli(tmp_path, "run", "--same-nat", "--site-a", "port-restricted", "--cgnat", "a",
                "--a", "echo {a_public_ip} {b_public_ip} {peer_public_ip}; sleep 60",
                "--b", "hostname -I", "--timeout", "2", "--json", "--logdir", "logs")
    res = json.loads(proc.stdout)
    record_lab(res["lab"])
    assert _ours(res["lab"]) == []
    assert proc.returncode == 1 and res["outcome"] == "timeout"
    assert res["commands"]["a"]["timed_out"] and res["commands"]["a"]["exit"] is None
    assert res["commands"]["b"]["node"] == "a2"
    assert Path(res["commands"]["a"]["stdout"]).read_text().split() == ["203.0.113.2"] * 3
    assert Path(res["commands"]["b"]["stdout"]).read_text().split() == ["192.168.1.11"]
    assert res["pair"] == "port-restricted@same-nat+cgnat-a"


def test_delay_needs_netem(tmp_path):
    try:
        check_netem()
        present = True
    except LabUnavailable:
        present = False
    proc = _cli(tmp_path, "run", "--delay", "20", "--jitter", "2", "--a", "true", "--b", "true",
                "--logdir", "logs")
    if present:
        assert proc.returncode == 0, proc.stderr
        return
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("Error: --delay/--jitter need the kernel's sch_netem, which "
                                  "this kernel lacks")
    assert len(proc.stderr.splitlines()) == 1


def test_unprivileged_run_exit_2():
    from test_lab_cli import SETPRIV, _unprivileged_tree

    root, python = _unprivileged_tree()
    try:
        proc = subprocess.run(SETPRIV + [python, "-m", "stunturn_diag.cli", "lab", "run",
                                         "--a", "true", "--b", "true", "--logdir", "/tmp"],
                              capture_output=True, text=True, timeout=60, cwd="/",
                              env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                   "PYTHONPATH": root, "HOME": "/"})
    finally:
        shutil.rmtree(root)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == ("Error: the NAT lab needs root (it creates network namespaces "
                           "and nftables rules) (run it with sudo)\n")


# --- teardown on signals -----------------------------------------------------------------

def _wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_run_stopped_by_a_signal_tears_down(tmp_path, sig):
    env = dict(os.environ, STUNTURN_LAB_STATE_DIR=str(tmp_path / "state"))
    proc = subprocess.Popen([*CLI, "run", "--a", "sleep 60", "--b", "sleep 60", "--logdir",
                             str(tmp_path / "logs")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        _wait_for(tmp_path / "logs" / "port-restricted--full-cone" / "b.out")
        names = [p.stem for p in (tmp_path / "state").glob("stl-*.json")]
        assert len(names) == 1
        record_lab(names[0])
        assert _ours(names[0])
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode != 0 and "Traceback" not in err
    assert _ours(names[0]) == []
    assert list((tmp_path / "state").glob("stl-*.json")) == []


KILL_SCRIPT = r"""
set -u
mkdir -p /run/netns
mount -t tmpfs stl-test /run/netns || exit 3   # a private /run/netns: only our labs are seen
[ -z "$(ip netns list)" ] || exit 4          # never run `down --all` on shared namespaces
export STUNTURN_LAB_STATE_DIR="$STATE/state"
cli="$PY -m stunturn_diag.cli lab"
count() { ip netns list | awk '{print $1}' | grep -c "^$1-"; }
wait_file() { for _ in $(seq 1 600); do [ -e "$1" ] && return 0; sleep 0.1; done; return 1; }
# another user's run, dead too: a `lab up` lab given a foreign owner record
other=$($cli up --site-a full-cone --site-b full-cone --json | $PY -c 'import json,sys; print(json.load(sys.stdin)["name"])')
$PY - "$STATE/state/$other.json" <<'EOF'
import json, sys
path = sys.argv[1]; data = json.load(open(path))
data["owner"] = {"pid": 4194000, "start": 1, "uid": 54321, "family": ""}
json.dump(data, open(path, "w"))
EOF
plain=$($cli up --json | $PY -c 'import json,sys; print(json.load(sys.stdin)["name"])')
$cli run --a 'sleep 120' --b 'sleep 120' --timeout 300 --logdir "$STATE/victim" > /dev/null 2>&1 &
victim=$!
$cli run --a 'sleep 120' --b 'sleep 120' --timeout 300 --logdir "$STATE/live" > /dev/null 2>&1 &
live=$!
wait_file "$STATE/victim/port-restricted--full-cone/b.out" || exit 5
wait_file "$STATE/live/port-restricted--full-cone/b.out" || exit 6
owner_of() { $PY -c 'import json,sys,glob
for p in glob.glob(sys.argv[1] + "/stl-*.json"):
    d = json.load(open(p))
    if d.get("owner", {}).get("pid") == int(sys.argv[2]): print(d["name"])' "$STATE/state" "$1"; }
vlab=$(owner_of $victim); llab=$(owner_of $live)
echo "vlab=$vlab llab=$llab other=$other plain=$plain"
kill -9 $victim; wait $victim 2>/dev/null
echo "victim_left=$(count $vlab)"
$cli down --all --mine > "$STATE/down" 2>&1; echo "down_rc=$?"
echo "victim_after=$(count $vlab) live_after=$(count $llab) other_after=$(count $other) plain_after=$(count $plain)"
kill -9 $live; wait $live 2>/dev/null
echo "live_left=$(count $llab)"
$cli run --site-a public --site-b public --a true --b true --logdir "$STATE/next" > /dev/null 2> "$STATE/next.err"
echo "next_rc=$?"
echo "live_final=$(count $llab) other_final=$(count $other) plain_final=$(count $plain)"
$cli down --all > /dev/null 2>&1            # only this private /run/netns
echo "total_final=$(ip netns list | wc -l)"
"""


def test_kill_9_runner_then_down_mine_removes_only_its_own(tmp_path):
    """kill -9 a `lab run`: `lab down --all --mine` removes its lab and nothing else (a
    live run's, another user's, a `lab up` lab stay); the next `lab run` removes its own
    dead leftovers too. In a private mount namespace with its own /run/netns."""
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed")
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c",
                           KILL_SCRIPT], capture_output=True, text=True, timeout=280,
                          env=dict(os.environ, STATE=str(tmp_path), PY=sys.executable))
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    facts = dict(item.split("=", 1) for item in proc.stdout.split())
    assert all(facts[k].startswith("stl-") for k in ("vlab", "llab", "other", "plain")), facts
    assert facts["victim_left"] == "6", proc.stdout             # the crash left it
    assert facts["down_rc"] == "0", (tmp_path / "down").read_text()
    assert (tmp_path / "down").read_text().startswith(f"removed 6 namespace(s): {facts['vlab']}-")
    assert (facts["victim_after"], facts["live_after"], facts["other_after"],
            facts["plain_after"]) == ("0", "6", "6", "6")
    assert facts["live_left"] == "6" and facts["next_rc"] == "0"
    assert f"removing {facts['llab']}, left by an earlier run of yours" in \
        (tmp_path / "next.err").read_text()
    assert (facts["live_final"], facts["other_final"], facts["plain_final"]) == ("0", "6", "6")
    assert facts["total_final"] == "0"


@pytest.mark.parametrize("ready", ["udp:5000", "line"])
def test_server_readiness_and_a_server_that_dies(tmp_path, ready):
    server = (f"{PY} -c \"import socket, time; s = socket.socket(2, 2); "
              "s.bind(('{server_ip}', 5000)); print('up', flush=True); time.sleep(60)\"")
    proc = _cli(tmp_path, "run", "--server", server, "--server-ready", ready,
                "--a", "true", "--b", "true", "--json", "--logdir", "logs")
    res = json.loads(proc.stdout)
    record_lab(res["lab"])
    assert proc.returncode == 0 and res["status"] == "passed", proc.stderr
    assert res["commands"]["server"]["stopped"] and res["commands"]["server"]["node"] == "srv"
    assert Path(res["commands"]["server"]["stdout"]).read_text() == "up\n"
    proc = _cli(tmp_path, "run", "--server", "echo dying >&2; exit 4", "--server-ready", ready,
                "--a", "true", "--b", "true", "--json", "--logdir", "logs")
    res = json.loads(proc.stdout)
    record_lab(res["lab"])
    assert _ours(res["lab"]) == []
    assert proc.returncode == 1 and res["status"] == "error"
    assert "the server command exited 4 before it was ready" in res["error"]
    assert set(res["commands"]) == {"server"}
    assert Path(res["commands"]["server"]["stderr"]).read_text() == "dying\n"
