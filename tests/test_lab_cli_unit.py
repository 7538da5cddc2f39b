"""`lab` CLI and demo report without root: clear errors, catalogue, honest rendering."""

from __future__ import annotations

import json

from click.testing import CliRunner

from stunturn_diag.cli import main
from stunturn_diag.lab import CATALOGUE
from stunturn_diag.lab.demo import compare, render


def test_lab_needs_root_and_says_so(monkeypatch):
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    for args in (["lab", "up"], ["lab", "down", "--all"], ["lab", "status"], ["lab", "demo"],
                 ["lab", "demo", "--json"], ["lab", "exec", "stl-abcdef", "a1", "--", "true"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1
        assert "needs root" in result.output
        assert "Traceback" not in result.output


def test_missing_tools_are_named(monkeypatch):
    monkeypatch.setattr("os.geteuid", lambda: 0)
    monkeypatch.setattr("shutil.which", lambda tool: None if tool == "nft" else "/bin/" + tool)
    result = CliRunner().invoke(main, ["lab", "up"])
    assert result.exit_code == 1
    assert "'nft'" in result.output and "apt-get install nftables" in result.output


def test_bad_options_are_config_errors():
    result = CliRunner().invoke(main, ["lab", "up", "--site-a", "nonsense"])
    assert result.exit_code == 1 and "unknown NAT type 'nonsense'" in result.output
    result = CliRunner().invoke(main, ["lab", "down"])
    assert result.exit_code == 2 and "exactly one" in result.output
    result = CliRunner().invoke(main, ["lab", "up", "--same-nat", "--site-b", "public"])
    assert result.exit_code == 2 and "drop --site-b" in result.output
    result = CliRunner().invoke(main, ["lab", "demo", "--same-nat", "--site-b", "public"])
    assert result.exit_code == 2 and "drop --site-b" in result.output
    result = CliRunner().invoke(main, ["lab", "up", "--spec", "x.toml", "--cgnat", "a"])
    assert result.exit_code == 2 and "--spec describes the whole lab" in result.output


def test_catalogue_lists_every_entry_with_ground_truth():
    result = CliRunner().invoke(main, ["lab", "catalogue", "--json"])
    assert result.exit_code == 0
    entries = json.loads(result.output)["catalogue"]
    assert [e["name"] for e in entries] == list(CATALOGUE)
    assert entries[0]["expected"] == CATALOGUE[entries[0]["name"]].expected
    text = CliRunner().invoke(main, ["lab", "catalogue"]).output
    assert "symmetric-sequential" in text and "port-restricted cone" in text


def test_compare_separates_matches_mismatches_and_undecided():
    expected = CATALOGUE["port-restricted"].expected
    observed = {"nat": True, "udp": {"mapping": "endpoint-independent",
                                     "filtering": "endpoint-independent",
                                     "hairpin": None},
                "tcp": {"unsolicited_syn": "rst"}}
    result = compare(expected, observed)
    assert {m["key"] for m in result["matches"]} == {"nat", "udp.mapping",
                                                     "tcp.unsolicited_syn"}
    assert [m["key"] for m in result["mismatches"]] == ["udp.filtering"]
    assert [m["key"] for m in result["undecided"]] == ["udp.hairpin"]


def test_render_reports_failures_honestly():
    report = {"lab": "stl-000000", "ok": False,
              "sites": {"a": {"nat": "port-restricted", "public_ip": "203.0.113.2",
                              "host": "a1"}},
              "steps": [{"step": "serve", "status": "ok",
                         "listening": {"http_url": "http://198.51.100.10:8080"}},
                        {"step": "probe a", "status": "not-built", "exit_code": 2,
                         "stderr": "stunturn-diag probe: not built yet in this version."},
                        {"step": "punch udp", "status": "failed",
                         "initiator": {"status": "failed", "stderr": "timeout", "result": None},
                         "receiver": {"status": "ok", "stderr": "", "result": {"ok": True}}}]}
    text = render(report)
    assert "- probe a: not-built" in text and "not built yet" in text
    assert "- punch udp: failed" in text and "initiator stderr: timeout" in text
    assert "some steps failed" in text


def test_down_all_removes_only_our_prefix_family(monkeypatch, tmp_path):
    from stunturn_diag.lab import runner

    monkeypatch.setenv("STUNTURN_LAB_STATE_DIR", str(tmp_path))
    monkeypatch.setattr("os.geteuid", lambda: 0)
    monkeypatch.setattr(runner, "check_prerequisites", lambda: None)
    monkeypatch.setattr(runner, "list_namespaces",
                        lambda: ["stl-abc123-a1", "docker-ns", "stl-ffffff-srv", "xstl-1"])
    monkeypatch.setattr(runner, "_kill_namespace_processes", lambda ns: None)
    deleted = []
    monkeypatch.setattr(runner, "_run", lambda step, timeout=30: deleted.append(step.argv))
    (tmp_path / "stl-abc123.json").write_text("{}")
    assert runner.down_all() == ["stl-abc123-a1", "stl-ffffff-srv"]
    assert deleted == [["ip", "netns", "delete", "stl-abc123-a1"],
                       ["ip", "netns", "delete", "stl-ffffff-srv"]]
    assert not (tmp_path / "stl-abc123.json").exists()


def test_state_file_that_is_no_lab_is_a_clear_lab_error(monkeypatch, tmp_path):
    import pytest

    from stunturn_diag.errors import LabError
    from stunturn_diag.lab.runner import Lab

    monkeypatch.setenv("STUNTURN_LAB_STATE_DIR", str(tmp_path))
    (tmp_path / "stl-abc123.json").write_text('{"name": "stl-abc123"}')
    (tmp_path / "stl-def456.json").write_text("[1]")
    (tmp_path / "stl-0a0a0a.json").write_text('{"name": "stl-0a0a0a", "spec": {"sites": {"a": "nope"}}}')
    for name in ("stl-abc123", "stl-def456", "stl-0a0a0a"):
        with pytest.raises(LabError, match="does not describe a lab"):
            Lab.attach(name)
