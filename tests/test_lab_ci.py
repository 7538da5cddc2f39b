"""`lab run` / `lab matrix` pure parts: placeholders, plans, theory, reports, ownership,
netem steps; and the CLI's exit-2 errors without a lab (no root, no nft, bad plans)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import xmlschema
from click.testing import CliRunner

from stunturn_diag.cli import main
from stunturn_diag.errors import ConfigError
from stunturn_diag.lab import LabSpec
from stunturn_diag.lab.ci import owner, plan, report
from stunturn_diag.sansio.lab import placeholders
from stunturn_diag.lab.ci.netem import netem_steps
from stunturn_diag.sansio.lab.theory import path_of, punchable, theory
from stunturn_diag.sansio.lab.spec import nat_from, parse_nat_token
from stunturn_diag.sansio.lab.topology import plan as topology_plan
from stunturn_diag.sansio.punch.decision import decide, profile_from_details

XSD = Path(__file__).with_name("junit.xsd")
COMMON = {"server_ip": "198.51.100.10", "alt_ip": "198.51.100.20",
          "a_public_ip": "203.0.113.2", "b_public_ip": "203.0.113.18", "key": "k123",
          "type_a": "full-cone", "type_b": "port-restricted+hairpin",
          "logdir": "/tmp/logs/with space"}


# --- placeholders -------------------------------------------------------------------

def test_placeholders_fill_each_role_and_the_environment():
    a = placeholders.values_for("a", COMMON)
    b = placeholders.values_for("b", COMMON)
    assert a["peer_public_ip"] == "203.0.113.18" and b["peer_public_ip"] == "203.0.113.2"
    cmd = "peer --to {peer_public_ip} --srv {server_ip}:{alt_ip} -k {key} {type_b} > {logdir}/x"
    assert placeholders.substitute(cmd, a) == (
        "peer --to 203.0.113.18 --srv 198.51.100.10:198.51.100.20 -k k123 "
        "port-restricted+hairpin > '/tmp/logs/with space'/x")
    # shell ${VAR} and doubled braces are left for the shell
    assert placeholders.substitute("echo ${HOME} {{x}} {key}", a) == "echo ${HOME} {x} k123"
    env = placeholders.environment(a)
    assert env["STUNTURN_LAB_PEER_PUBLIC_IP"] == "203.0.113.18"
    assert env["STUNTURN_LAB_SERVER_IP"] == "198.51.100.10"
    assert set(env) == {"STUNTURN_LAB_" + n.upper() for n in placeholders.NAMES}


def test_placeholder_mistakes_are_named():
    with pytest.raises(ConfigError, match=r"unknown placeholder \{sever_ip\}"):
        placeholders.check("x {sever_ip}", "a")
    server = placeholders.values_for("server", COMMON)
    assert "peer_public_ip" not in server
    with pytest.raises(ConfigError, match="peer commands"):
        placeholders.substitute("x {peer_public_ip}", server, role="server")


# --- TYPE+flag syntax and plans ----------------------------------------------------------

def test_type_flag_syntax():
    assert parse_nat_token("port-restricted+hairpin+loss=5+no-firewall+syn=drop") == {
        "base": "port-restricted", "hairpin": True, "loss_percent": 5,
        "input_firewall": False, "tcp_unsolicited": "drop"}
    nat = nat_from("full-cone+no-hairpin+udp-timeout=5")
    assert (nat.hairpin, nat.udp_timeout, nat.name) == (False, 5, "full-cone+no-hairpin+udp-timeout=5")
    with pytest.raises(ConfigError, match="unknown NAT setting"):
        nat_from("full-cone+colour=blue")
    with pytest.raises(ConfigError, match="empty flag"):
        nat_from("full-cone+")
    # the lab CLI takes it too
    assert LabSpec.simple("port-restricted+hairpin", "full-cone").sites["a"].nat.hairpin


def _plan(**data):
    return plan.plan_from({"a": "peer a", "b": "peer b"} | data)


def test_matrix_expansion_unordered_ordered_and_same_nat():
    p = _plan(types="full-cone,symmetric-random")
    assert [x.id for x in p.pairs] == ["full-cone--full-cone", "full-cone--symmetric-random",
                                       "symmetric-random--symmetric-random"]
    p = _plan(types=["full-cone", "symmetric-random"], ordered=True, same_nat=True)
    assert [x.id for x in p.pairs] == [
        "full-cone--full-cone", "full-cone--symmetric-random", "symmetric-random--full-cone",
        "symmetric-random--symmetric-random", "full-cone@same-nat", "symmetric-random@same-nat"]
    same = p.pairs[-1]
    assert list(same.spec.sites) == ["a"] and same.spec.sites["a"].hosts == 2
    assert len(_plan(all=True).pairs) == 14 * 15 // 2


def test_matrix_impairments_cgnat_and_explicit_pairs():
    p = _plan(types=["full-cone", "full-cone+loss=3"], loss=5, udp_timeout=7,
              cgnat={"b": "symmetric-random"},
              pairs=[{"id": "custom", "sites": {"a": "full-cone", "b": {"nat": "public"}},
                      "expect": "fail"}])
    first = p.pairs[0]
    assert first.id == "full-cone--full-cone+cgnat-b=symmetric-random"
    assert first.spec.sites["a"].nat.loss_percent == 5          # matrix-wide loss
    assert first.spec.sites["a"].nat.udp_timeout == 7
    assert first.spec.sites["b"].cgnat.name == "symmetric-random"
    assert p.pairs[1].spec.sites["b"].nat.loss_percent == 3     # the type's own flag wins
    custom = p.pairs[-1]
    assert custom.id == "custom" and custom.expect == "fail"
    assert custom.spec.sites["b"].nat.name == "public"


def test_plan_file_and_options(tmp_path):
    f = tmp_path / "nat-plan.toml"
    f.write_text('types = ["full-cone", "port-restricted"]\njobs = 2\ntimeout = 9\n'
                 'a = "peer a {peer_public_ip}"\nb = "peer b"\n'
                 '[expectations]\n"port-restricted--port-restricted" = "fail"\n')
    p = plan.load(f, {"timeout": 4, "jobs": None})
    assert (p.timeout, p.jobs) == (4.0, 2)
    byid = {x.id: x for x in p.pairs}
    assert byid["port-restricted--port-restricted"].expect == "fail"
    assert byid["full-cone--full-cone"].expect == "theory"


@pytest.mark.parametrize("data,message", [
    ({"types": "full-cone", "colour": 1}, "unknown matrix setting"),
    ({"types": "full-cone", "expectations": {"nope--nope": "fail"}}, "not in the matrix"),
    ({"types": "full-cone", "expect": "maybe"}, "bad expectation"),
    ({"types": "full-cone", "timeout": 0}, "timeout must be"),
    ({"types": "full-cone,full-cone"}, "listed twice"),
    ({"types": "full-cone", "server_ready": "tcp:0"}, "bad server readiness"),
    ({"types": "full-cone", "all": True}, "not both"),
    ({}, "no pairs"),
    ({"types": "full-cone", "a": ""}, "no command for peer a"),
    ({"types": "nonsense"}, "unknown NAT type"),
])
def test_bad_plans_say_what_is_wrong(data, message):
    with pytest.raises(ConfigError, match=message):
        plan.plan_from({"a": "x", "b": "y"} | data)


# --- theory --------------------------------------------------------------------------

def test_theory_is_the_punch_decision_on_ground_truth():
    for a, b in (("full-cone", "symmetric-random"), ("port-restricted", "symmetric-random"),
                 ("symmetric-sequential", "symmetric-sequential")):
        spec = LabSpec.simple(a, b)
        for proto in ("udp", "tcp"):
            want = decide(profile_from_details(spec.sites["a"].expected, proto),
                          profile_from_details(spec.sites["b"].expected, proto),
                          protocol=proto)
            got = punchable(spec, proto)
            assert (got["possible"], got["strategy"]) == (want.feasible, want.strategy)
    assert punchable(LabSpec.simple("port-restricted", "symmetric-random"), "udp")["possible"] is False
    blocked = theory(LabSpec.simple("udp-blocked", "full-cone"))
    assert blocked["udp"] == {"possible": False, "strategy": "blocked",
                              "explanation": "site a cannot use UDP at all",
                              "relay_over_tcp": True}
    assert blocked["tcp"]["possible"] is True
    same = theory(LabSpec.simple("symmetric-random", None, same_nat=True))
    assert same["udp"]["strategy"] == "lan"


def test_expectations_from_theory_and_overrides():
    p = _plan(types="port-restricted,symmetric-random",
              expectations={"port-restricted--port-restricted": "fail",
                            "symmetric-random--symmetric-random": "pass",
                            "port-restricted--symmetric-random": "skip"})
    got = {x.id: x.expectation("udp") for x in p.pairs}
    assert got == {"port-restricted--port-restricted": ("fail", False),
                   "port-restricted--symmetric-random": ("skip", True),
                   "symmetric-random--symmetric-random": ("pass", False)}
    theory_only = _plan(types="symmetric-random").pairs[0]
    assert theory_only.expectation("udp") == ("fail", True)     # a skipped test case


def test_with_a_relay_every_usable_pair_connects_over_the_theorys_path():
    p = _plan(types="port-restricted,symmetric-random,udp-blocked", relay=True)
    got = {x.id: (x.expectation("udp", True), x.expected_path("udp", True),
                  x.expected_path("tcp", True)) for x in p.pairs}
    assert p.relay is True
    assert got["port-restricted--port-restricted"] == (("pass", False), "direct", "direct")
    assert got["port-restricted--symmetric-random"] == (("pass", False), "relay", "relay")
    # no UDP at all: the relay reached over TCP (RFC 8656 section 3.1); TCP still works
    assert got["port-restricted--udp-blocked"] == (("pass", False), "relay", "direct")
    no_relay = _plan(types="port-restricted,udp-blocked").pairs
    assert {x.id: x.expectation("udp") for x in no_relay}["port-restricted--udp-blocked"] == \
        ("fail", True)                                           # without the relay: fails
    # a gateway that maps ports: portmap over UDP (TCP punches do not use mappings)
    mapped = plan.make_pair("symmetric-random+portmap", "port-restricted")
    assert mapped.expected_path("udp", True) == "portmap"
    assert mapped.expected_path("tcp", True) == "relay"
    assert mapped.expected_path("udp", False) is None          # nothing checked without


def test_a_peers_path_comes_from_its_json_result():
    assert path_of({"ok": True, "strategy": "relay", "relayed": True}) == "relay"
    assert path_of({"ok": True, "strategy": "portmap", "relayed": False}) == "portmap"
    assert path_of({"ok": True, "strategy": "predict", "relayed": False}) == "direct"
    assert path_of({"ok": False, "reason": "relay-failed"}) is None
    assert path_of({"ok": True}) is None and path_of(None) is None


def test_turn_placeholders_need_the_relay():
    server = "serve --turn-server {turn_server} --turn-realm {turn_realm}"
    with pytest.raises(ConfigError, match=r"\{turn_realm\} needs a relay"):
        _plan(types="full-cone", server=server)
    assert _plan(types="full-cone", server=server, relay=True).relay
    with pytest.raises(ConfigError, match="relay must be true or false"):
        _plan(types="full-cone", relay="yes")
    values = placeholders.values_for("server", COMMON | {"turn_server": "198.51.100.10:3480"})
    assert placeholders.substitute(server, values) == \
        "serve --turn-server 198.51.100.10:3480 --turn-realm ''"
    secret = COMMON | {"turn_secret": "s3cret"}
    assert placeholders.values_for("server", secret)["turn_secret"] == "s3cret"
    assert placeholders.values_for("a", secret)["turn_secret"] == ""     # not the peers'


# --- reports -------------------------------------------------------------------------

def _result(pair, expect, skipped, outcome, **kw):
    cmds = {"a": {"command": "a", "node": "a1", "exit": 0 if outcome == "connected" else 1,
                  "timed_out": False, "stopped": False, "stdout": "a.out", "stderr": "a.err"},
            "b": {"command": "b", "node": "b1", "exit": 0, "timed_out": False,
                  "stopped": False, "stdout": "b.out", "stderr": "b.err"}}
    th = {"udp": {"possible": not skipped, "strategy": "relay-needed" if skipped else "simultaneous",
                  "explanation": "..."},
          "tcp": {"possible": True, "strategy": "simultaneous", "explanation": "..."}}
    return report.result(pair=pair, type_a="x", type_b="y", expect=expect, skipped=skipped,
                         theory=th, outcome=outcome, duration_s=1.25, commands=cmds, **kw)


def test_judging_outcomes():
    assert report.judge("pass", False, "connected") == (True, "passed")
    assert report.judge("pass", False, "timeout") == (False, "failed")
    assert report.judge("fail", False, "failed") == (True, "passed")
    assert report.judge("fail", False, "connected") == (False, "failed")
    assert report.judge("fail", True, "connected") == (True, "skipped")
    assert report.judge("pass", False, "error") == (False, "error")
    assert report.judge("skip", True, "not-run") == (True, "skipped")


def test_a_relayed_matrix_checks_the_path_both_peers_took():
    def paths(a, b):
        return {"a": {"path": a}, "b": {"path": b}}
    kw = dict(relay=True, expect_path="relay")
    ok = _result("r--r", "pass", False, "connected", paths=paths("relay", "relay"), **kw)
    assert ok["status"] == "passed" and ok["path_error"] is None
    wrong = _result("r--r", "pass", False, "connected", paths=paths("direct", "direct"), **kw)
    assert wrong["status"] == "failed"
    assert wrong["path_error"] == "connected over direct, expected relay"
    split = _result("r--r", "pass", False, "connected", paths=paths("direct", "relay"), **kw)
    assert split["status"] == "failed" and "different paths: a direct, b relay" in \
        split["path_error"]
    assert "but the peers ended on different paths" in report.message(split)
    # peers that print no JSON result: only the exit status counts
    silent = _result("r--r", "pass", False, "connected", paths={"a": None, "b": None}, **kw)
    assert silent["status"] == "passed"
    assert "| r--r | connect | passed (connected, relay) |" in report.markdown([ok])
    assert "relay" not in _result("x--y", "pass", False, "connected")    # no relay: as before


def _results():
    return [_result("full-cone--full-cone", "pass", False, "connected"),
            _result("x--y", "pass", False, "failed"),
            _result("s--s", "fail", True, "failed"),
            _result("e--e", "pass", False, "error", error="lab build failed <&>")]


def test_markdown_and_json_lines():
    results = _results()
    md = report.markdown(results)
    assert "| full-cone--full-cone | connect | passed (connected) | 1.2 s | yes (simultaneous) |" in md
    assert "| x--y | connect | **FAILED** (failed) |" in md
    assert "| s--s | not connect | skipped (failed) | 1.2 s | no (relay-needed) |" in md
    assert "4 pairs: 1 passed, 1 failed, 1 skipped, 1 errors" in md
    lines = [json.loads(x) for x in report.json_lines(results).splitlines()]
    assert [x["status"] for x in lines[:-1]] == ["passed", "failed", "skipped", "error"]
    assert lines[-1]["summary"]["ok"] is False
    assert report.summary(results[:1] + results[2:3])["ok"] is True


def test_junit_is_valid_and_carries_logs():
    results = _results()
    logs = {"full-cone--full-cone": {"a.out": "hello \x01 <b>", "a.err": "warn",
                                     "server.out": "up"}}
    text = report.junit(results, logs, timestamp="2026-01-02T03:04:05")
    xmlschema.XMLSchema(XSD).validate(text)
    root = ET.fromstring(text.split("\n", 1)[1])
    suite = root.find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"),
            suite.get("skipped")) == ("4", "1", "1", "1")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    ok = cases["full-cone--full-cone"]
    assert ok.find("failure") is None and ok.find("skipped") is None
    assert "===== a.out =====\nhello  <b>" in ok.find("system-out").text
    assert "===== server.out =====\nup" in ok.find("system-out").text
    assert ok.find("system-err").text == "===== a.err =====\nwarn"
    assert "a peer exited non-zero" in cases["x--y"].find("failure").get("message")
    assert "cannot connect (relay-needed)" in cases["s--s"].find("skipped").get("message")
    assert "lab build failed <&>" in cases["e--e"].find("error").get("message")


# --- ownership ----------------------------------------------------------------------------

def test_reapable_only_dead_owners_of_the_same_user_and_family():
    me = {"pid": 10, "start": 5, "uid": 1000, "family": ""}
    dead_mine = {"pid": 99, "start": 7, "uid": 1000, "family": ""}
    assert owner.reapable(dead_mine, me, owner_alive=False)
    assert not owner.reapable(dead_mine, me, owner_alive=True)
    assert not owner.reapable(dead_mine | {"uid": 1001}, me, owner_alive=False)
    assert not owner.reapable(dead_mine | {"family": "job-7"}, me, owner_alive=False)
    assert not owner.reapable(None, me, owner_alive=False)         # a `lab up` lab


def test_owner_liveness_uses_the_start_time(monkeypatch):
    mine = owner.me()
    assert owner.alive(mine)
    assert not owner.alive(mine | {"start": (mine["start"] or 0) + 1})   # a reused PID
    assert not owner.alive(mine | {"pid": 2 ** 22 + 12345})
    monkeypatch.setenv("SUDO_UID", "4242")
    assert owner.me()["uid"] == 4242


def test_reapable_labs_reads_the_state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("STUNTURN_LAB_STATE_DIR", str(tmp_path))
    spec = LabSpec.simple("full-cone", "full-cone").to_dict()
    me = owner.me()
    owner.claim("stl-aaaaa1", spec, me)                               # alive: ours, running
    owner.claim("stl-aaaaa2", spec, me | {"pid": 2 ** 22 + 1})        # dead: ours
    owner.claim("stl-aaaaa3", spec, me | {"pid": 2 ** 22 + 1, "uid": me["uid"] + 1})
    (tmp_path / "stl-aaaaa4.json").write_text(json.dumps({"name": "stl-aaaaa4", "spec": spec}))
    assert owner.reapable_labs() == ["stl-aaaaa2"]
    owner.release("stl-aaaaa2")
    assert owner.reapable_labs() == []


# --- netem ---------------------------------------------------------------------------------

def test_netem_steps_delay_both_ends_of_each_site_link():
    topo = topology_plan(LabSpec.simple("full-cone", "full-cone", cgnat=("b",)), "stl-000001")
    steps = netem_steps(topo, 20, 5)
    assert steps == [
        ("inet", ["tc", "qdisc", "add", "dev", "s-a", "root", "netem", "delay", "20ms", "5ms"]),
        ("nat-a", ["tc", "qdisc", "add", "dev", "wan0", "root", "netem", "delay", "20ms", "5ms"]),
        ("inet", ["tc", "qdisc", "add", "dev", "s-b", "root", "netem", "delay", "20ms", "5ms"]),
        ("cgn-b", ["tc", "qdisc", "add", "dev", "wan0", "root", "netem", "delay", "20ms", "5ms"])]
    assert netem_steps(topo, 0, 0) == []


# --- CLI: exit 2 before any lab ---------------------------------------------------------

RUN = ["lab", "run", "--a", "true", "--b", "true"]


def test_run_and_matrix_without_root_exit_2(monkeypatch, tmp_path):
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    for args in (RUN, ["lab", "matrix", "--types", "full-cone", "--a", "x", "--b", "y"]):
        result = CliRunner().invoke(main, args + ["--logdir", str(tmp_path)])
        assert result.exit_code == 2, result.output
        assert result.output == ("Error: the NAT lab needs root (it creates network namespaces "
                                 "and nftables rules) (run it with sudo)\n")


def test_run_without_nft_exit_2(monkeypatch, tmp_path):
    monkeypatch.setattr("os.geteuid", lambda: 0)
    monkeypatch.setattr("shutil.which", lambda tool: None if tool == "nft" else "/bin/" + tool)
    result = CliRunner().invoke(main, RUN + ["--logdir", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output == ("Error: the NAT lab needs the 'nft' command "
                             "(apt-get install nftables)\n")


def test_bad_run_options_exit_2(tmp_path):
    result = CliRunner().invoke(main, ["lab", "run", "--a", "x {nope}", "--b", "y"])
    assert result.exit_code == 2 and "unknown placeholder {nope}" in result.output
    result = CliRunner().invoke(main, ["lab", "run", "--b", "y"])
    assert result.exit_code == 2 and "no command for peer a" in result.output
    result = CliRunner().invoke(main, ["lab", "matrix", "--a", "x", "--b", "y",
                                       "--expect-pair", "oops"])
    assert result.exit_code == 2 and "PAIR=pass|fail|skip|theory" in result.output
    result = CliRunner().invoke(main, ["lab", "down", "--mine"])
    assert result.exit_code == 2 and "--mine goes with --all" in result.output


def test_build_failures_in_a_restricted_container_say_what_to_do():
    from stunturn_diag.lab.runner import build_hint

    hint = build_hint(["ip", "netns", "add", "stl-1-inet"],
                      'mount --make-shared /run/netns failed: Permission denied')
    assert "/run/netns" in hint and "--privileged" in hint
    hint = build_hint(["ip", "netns", "exec", "x", "sysctl", "-q", "-w", "a=1"],
                      "sysctl: setting key \"a\": Read-only file system")
    assert "/proc/sys is read-only" in hint and "systempaths=unconfined" in hint
    assert build_hint(["ip", "-n", "x", "link", "add"], "RTNETLINK answers: File exists") is None


def test_the_documented_plan_file_is_valid():
    p = plan.load(Path(__file__).resolve().parent.parent / "docs" / "examples" / "nat-plan.toml",
                  {})
    assert p.jobs == 2 and p.commands.server_ready == "tcp:9000"
    assert any(x.id == "both-behind-cgnat" for x in p.pairs)
    assert {x.expect for x in p.pairs} >= {"theory", "fail"}


@pytest.mark.parametrize("data", [
    {"types": "full-cone+name=../../etc"},
    {"pairs": [{"id": "..", "sites": {"a": "full-cone", "b": "full-cone"}}]},
    {"pairs": [{"id": "a/b", "sites": {"a": "full-cone", "b": "full-cone"}}]},
])
def test_pair_ids_cannot_leave_the_log_folder(data):
    with pytest.raises(ConfigError, match="bad pair id"):
        plan.plan_from({"a": "x", "b": "y"} | data)
