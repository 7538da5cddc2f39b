"""Results of ``lab run`` / ``lab matrix`` as data, Markdown, JUnit XML and JSON lines (pure).

One result per pair (a JSON-able dict, :func:`result`); the renderers take a list of
them. ``status`` is what a CI reads: ``passed`` (the outcome was the expected one),
``failed`` (it was not), ``skipped`` (the theory says the pair cannot connect and the
program was not expected to; it still ran, the outcome is in the message) or
``error`` (the lab or a command could not be started).

With a relay (``lab matrix --relay``) a connected pair also has to take the path the
theory expects (``expect_path``: direct / portmap / relay) where its peers report one
(``paths``: per peer the path, ``relay_reason`` and ``connect_ms`` of our punch's JSON
result); peers on different paths, or on another path, fail the pair.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

OUTCOMES = ("connected", "failed", "timeout", "error", "not-run")
STATUSES = ("passed", "failed", "skipped", "error")
LOG_LIMIT = 64 * 1024          # characters of each log kept in the JUnit file


def path_problem(expect_path: str | None, paths: dict | None) -> str | None:
    """Why the peers' reported paths are not the expected one (None: they are, or
    nothing is checked: no expectation, or no peer reported a path)."""
    kinds = {role: (p or {}).get("path") for role, p in (paths or {}).items()}
    if expect_path is None or not any(kinds.values()):
        return None
    if len(set(kinds.values())) > 1:
        return "the peers ended on different paths: " + ", ".join(
            f"{role} {kind or 'none'}" for role, kind in sorted(kinds.items()))
    kind = next(iter(kinds.values()))
    return None if kind == expect_path else f"connected over {kind}, expected {expect_path}"


def judge(expect: str, skipped: bool, outcome: str,
          path_error: str | None = None) -> tuple[bool, str]:
    """``(ok, status)``: was ``outcome`` the ``expect`` ed one, and the case's status
    (a connected pair on the wrong path, ``path_error``, has failed)."""
    if outcome == "connected" and path_error and expect == "pass":
        return False, "failed"
    if outcome == "error":
        return False, "error"
    if expect == "skip" or outcome == "not-run":
        return True, "skipped"
    ok = (outcome == "connected") == (expect == "pass")
    if skipped:
        return True, "skipped"
    return ok, "passed" if ok else "failed"


def result(*, pair: str, type_a: str, type_b: str, expect: str, skipped: bool, theory: dict,
           outcome: str, duration_s: float, commands: dict, lab: str | None = None,
           logdir: str | None = None, error: str | None = None, protocol: str = "udp",
           relay: bool = False, expect_path: str | None = None,
           paths: dict | None = None) -> dict:
    """One pair's result record (the JSON line); ``relay``, ``expect_path`` and
    ``paths`` only with a relay offered."""
    path_error = path_problem(expect_path, paths) if outcome == "connected" else None
    ok, status = judge(expect, skipped, outcome, path_error)
    out = {"pair": pair, "type_a": type_a, "type_b": type_b, "protocol": protocol,
           "expect": expect, "theory": theory, "outcome": outcome, "ok": ok,
           "status": status, "duration_s": round(duration_s, 3), "commands": commands,
           "lab": lab, "logdir": logdir, "error": error}
    if relay:
        out.update(relay=True, expect_path=expect_path, paths=paths or {},
                   path_error=path_error)
    return out


def summary(results: list[dict]) -> dict:
    """Counts per status and whether every expected pair passed (the exit status)."""
    counts = {s: sum(r["status"] == s for r in results) for s in STATUSES}
    return {"pairs": len(results), **counts, "ok": counts["failed"] == counts["error"] == 0}


def message(res: dict) -> str:
    """One line: what was expected and what happened."""
    theory = res["theory"][res["protocol"]]
    said = (f"theory ({res['protocol']}): " + ("can connect" if theory["possible"]
                                               else "cannot connect") + f" ({theory['strategy']})")
    if res["status"] == "error":
        return f"could not run: {res['error']}"
    if res["outcome"] == "not-run":
        return f"not run (expect = skip); {said}"
    what = {"connected": "both peers exited 0", "failed": "a peer exited non-zero",
            "timeout": "a peer ran past the timeout"}[res["outcome"]]
    codes = ", ".join(f"{role} {c['exit'] if c.get('exit') is not None else 'killed'}"
                      for role, c in res["commands"].items() if role in ("a", "b"))
    expected = "connect" if res["expect"] == "pass" else "not connect"
    if res.get("expect_path"):
        expected += f" over {res['expect_path']}"
    if res.get("path_error"):
        what += f" but {res['path_error']}"
    return f"expected to {expected}; {what} ({codes}); {said}"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _theory_cell(entry: dict) -> str:
    return ("yes" if entry["possible"] else "no") + f" ({entry['strategy']})"


def markdown(results: list[dict]) -> str:
    """A Markdown table: pair, expectation, result, time, theory for UDP and TCP."""
    rows = ["| pair | expected | result | time | punchable UDP | punchable TCP |",
            "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        result_text = {"passed": "passed", "failed": "**FAILED**", "error": "**ERROR**",
                       "skipped": "skipped"}[r["status"]]
        if r["status"] != "error" and r["outcome"] != "not-run":
            kinds = sorted({p.get("path") for p in (r.get("paths") or {}).values()
                            if p and p.get("path")})
            result_text += f" ({r['outcome']}" + "".join(f", {k}" for k in kinds) + ")"
        rows.append("| " + " | ".join(_cell(c) for c in (
            r["pair"], "connect" if r["expect"] == "pass" else
            ("—" if r["expect"] == "skip" else "not connect"), result_text,
            f"{r['duration_s']:.1f} s", _theory_cell(r["theory"]["udp"]),
            _theory_cell(r["theory"]["tcp"]))) + " |")
    s = summary(results)
    rows.append("")
    rows.append(f"{s['pairs']} pairs: {s['passed']} passed, {s['failed']} failed, "
                f"{s['skipped']} skipped, {s['error']} errors"
                + (" — every expected pair passed" if s["ok"] else ""))
    return "\n".join(rows) + "\n"


def json_lines(results: list[dict]) -> str:
    """One JSON object per pair, then a summary line (``{"summary": ...}``)."""
    lines = [json.dumps(r, sort_keys=True) for r in results]
    lines.append(json.dumps({"summary": summary(results)}, sort_keys=True))
    return "\n".join(lines) + "\n"


def _logs_text(logs: dict[str, str], kind: str) -> str:
    parts = []
    for name, text in logs.items():
        if name.endswith("." + kind):
            text = text if len(text) <= LOG_LIMIT else (
                f"[first {len(text) - LOG_LIMIT} characters cut]\n" + text[-LOG_LIMIT:])
            parts.append(f"===== {name} =====\n{text}")
    return "\n".join(parts)


def _xml_safe(text: str) -> str:
    """Drop characters XML 1.0 cannot carry (control bytes from a program's output)."""
    return "".join(c for c in text if c in "\t\n\r" or ord(c) >= 0x20 and c not in "\ufffe\uffff")


def junit(results: list[dict], logs: dict[str, dict[str, str]], *,
          suite: str = "stunturn-diag lab matrix", timestamp: str | None = None) -> str:
    """JUnit XML: one ``testsuite``, one ``testcase`` per pair (classname: the suite,
    name: the pair id), ``failure`` / ``error`` / ``skipped`` with the message, the
    pair's logs in ``system-out`` (``*.out``) and ``system-err`` (``*.err``).

    ``logs``: pair id -> {"a.out": text, "a.err": text, "server.out": ...}.
    """
    s = summary(results)
    total = f"{sum(r['duration_s'] for r in results):.3f}"
    root = ET.Element("testsuites", name=suite, tests=str(s["pairs"]),
                      failures=str(s["failed"]), errors=str(s["error"]),
                      skipped=str(s["skipped"]), time=total)
    attrs = {"name": suite, "tests": str(s["pairs"]), "failures": str(s["failed"]),
             "errors": str(s["error"]), "skipped": str(s["skipped"]), "time": total}
    if timestamp:
        attrs["timestamp"] = timestamp
    ts = ET.SubElement(root, "testsuite", attrs)
    props = ET.SubElement(ts, "properties")
    if results:
        ET.SubElement(props, "property", name="protocol", value=results[0]["protocol"])
    for r in results:
        case = ET.SubElement(ts, "testcase", name=r["pair"], classname=suite.replace(" ", "."),
                             time=f"{r['duration_s']:.3f}")
        text = _xml_safe(message(r))
        if r["status"] == "failed":
            el = ET.SubElement(case, "failure", message=text, type="unexpected-" + r["outcome"])
            el.text = text
        elif r["status"] == "error":
            el = ET.SubElement(case, "error", message=text, type="lab-error")
            el.text = text
        elif r["status"] == "skipped":
            ET.SubElement(case, "skipped", message=text)
        pair_logs = logs.get(r["pair"], {})
        ET.SubElement(case, "system-out").text = _xml_safe(_logs_text(pair_logs, "out"))
        ET.SubElement(case, "system-err").text = _xml_safe(_logs_text(pair_logs, "err"))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def render_run(res: dict) -> str:
    """``lab run``'s human report of its one pair."""
    theory = ", ".join(f"{p.upper()} {_theory_cell(t)}" for p, t in res["theory"].items())
    lines = [f"{res['pair']} (lab {res['lab']}): {res['status']} ({res['outcome']}, "
             f"{res['duration_s']:.1f} s)", f"  {message(res)}",
             f"  punchable in theory: {theory}"]
    for role, c in res["commands"].items():
        state = ("ran past the timeout" if c["timed_out"] else
                 "stopped at the end" if role == "server" and c["stopped"] else
                 f"exit {c['exit']}")
        lines.append(f"  {role} on {c['node']}: {state}; logs {c['stdout']}, {c['stderr']}")
    if res["error"]:
        lines.append(f"  error: {res['error']}")
    return "\n".join(lines)
