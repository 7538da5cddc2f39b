"""``stunturn-diag lab demo``: the whole product on one machine, honestly reported.

Builds a lab (site a and site b behind kernel NATs), starts ``stunturn-diag serve``
on the server host, probes the NAT from a host in each site and compares the verdicts
with the catalogue's ground truth, then punches from site a (initiator) to site b
(receiver). Every step's outcome is recorded, including failures; the lab is always
torn down.
"""

from __future__ import annotations

import json
import os
import secrets
import selectors
import subprocess
import sys
import time
from typing import Callable

from .runner import Lab
from .spec import LabSpec

HTTP_PORT = 8080
SERVE_READY_TIMEOUT = 20.0
PROBE_TIMEOUT = 120.0
PUNCH_TIMEOUT = 90.0


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "stunturn_diag.cli", *args]


def _read_line(proc: subprocess.Popen, timeout: float) -> str | None:
    """One stdout line within ``timeout`` seconds, or None (process ended / too slow)."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while (left := deadline - time.monotonic()) > 0:
            if sel.select(timeout=min(left, 0.5)):
                line = proc.stdout.readline()
                return line or None
            if proc.poll() is not None:
                return None
        return None
    finally:
        sel.close()


def _tail(text: str | None, n: int = 600) -> str:
    return (text or "").strip()[-n:]


def _json_line(text: str) -> dict | None:
    for line in reversed((text or "").strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def compare(expected: dict, observed: dict) -> dict:
    """Ground truth vs a probe's ``--json``: keys both know, where the probe decided."""
    matches, mismatches, undecided = [], [], []
    if observed.get("nat") is not None:
        (matches if observed["nat"] == expected["nat"] else mismatches).append(
            {"key": "nat", "expected": expected["nat"], "observed": observed["nat"]})
    for proto in ("udp", "tcp"):
        got = observed.get(proto) or {}
        for key, want in expected[proto].items():
            if key not in got or want is None:
                continue
            entry = {"key": f"{proto}.{key}", "expected": want, "observed": got[key]}
            if got[key] is None:
                undecided.append(entry)
            elif got[key] == want:
                matches.append(entry)
            else:
                mismatches.append(entry)
    return {"matches": matches, "mismatches": mismatches, "undecided": undecided}


def _step_result(name: str, out: str, err: str, code: int | None) -> dict:
    status = "ok" if code == 0 else ("not-built" if code == 2 and "not built" in err
                                     else "failed")
    return {"step": name, "status": status, "exit_code": code, "stderr": _tail(err),
            "stdout": _tail(out) if _json_line(out) is None else None}


def _run(proc: subprocess.Popen, timeout: float) -> tuple[str, str, int | None]:
    try:
        out, err = proc.communicate(timeout=timeout)
        return out, err, proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=5)
        return out, err + f"\n(killed after {timeout:g}s)", None


def run_demo(site_a: str = "port-restricted", site_b: str = "full-cone", *,
             protocol: str = "udp", cgnat: tuple[str, ...] = (), same_nat: bool = False,
             progress: Callable[[str], None] = lambda message: None) -> dict:
    """Run the demo; returns a JSON-able report (``"ok"``: every step succeeded).

    ``same_nat``: both peers (a1, a2) behind site a's NAT; ``cgnat``: sites that get a
    carrier-grade NAT in front.
    """
    spec = LabSpec.simple(site_a, site_b, cgnat=cgnat, same_nat=same_nat)
    report: dict = {"sites": {}, "steps": []}
    progress("building the lab: " + ", ".join(
        f"site {name} = {site.nat.name}" + (f" behind CGNAT {site.cgnat.name}" if site.cgnat
                                            else "") + (f" ({site.hosts} hosts)"
                                                        if site.hosts > 1 else "")
        for name, site in spec.sites.items()))
    with Lab(spec) as lab:
        report["lab"] = lab.name
        for site in lab.sites:
            report["sites"][site] = {"nat": spec.sites[site].nat.name,
                                     "cgnat": (spec.sites[site].cgnat.name
                                               if spec.sites[site].cgnat else None),
                                     "public_ip": lab.site_public_ip(site),
                                     "host": lab.site_hosts(site)[0],
                                     "expected": lab.expected(site)}
        receiver = lab.site_hosts("b")[0] if "b" in lab.sites else lab.site_hosts("a")[1]
        report["peers"] = {
            "initiator": {"host": lab.site_hosts("a")[0], "site": "a"},
            "receiver": {"host": receiver, "site": lab.site_of(receiver),
                         "public_ip": lab.site_public_ip(lab.site_of(receiver))}}
        url = f"http://{lab.server_ip}:{HTTP_PORT}"
        progress(f"starting the server on {lab.server} ({url}, alternate IP {lab.server_alt_ip})")
        serve = lab.popen(lab.server, _cli("serve", f"{lab.server_ip}:{HTTP_PORT}",
                                           "--alt-ip", lab.server_alt_ip, "--json"))
        line = _read_line(serve, SERVE_READY_TIMEOUT)
        info = _json_line(line or "")
        if info is None:
            if serve.poll() is None:
                serve.kill()
            out, err, code = _run(serve, 5)
            step = _step_result("serve", (line or "") + out, err, code)
            if step["status"] == "ok":
                step["status"] = "failed"
            report["steps"].append(step)
            progress(f"server did not come up: {step['status']}")
            report["ok"] = False
            return report
        report["steps"].append({"step": "serve", "status": "ok", "listening": info})
        for site in lab.sites:
            host = report["sites"][site]["host"]
            progress(f"probing the NAT of site {site} from {host}")
            proc = lab.popen(host, _cli("probe", url, "--json"))
            out, err, code = _run(proc, PROBE_TIMEOUT)
            step = _step_result(f"probe {site}", out, err, code)
            result = _json_line(out)
            if result is not None and code in (0, 3):
                step["status"] = "ok" if code == 0 else "partial"
                step["result"] = result
                step["comparison"] = compare(report["sites"][site]["expected"], result)
            report["steps"].append(step)
            progress(f"  probe {site}: {step['status']}")
        report["steps"].append(_punch(lab, url, protocol, report, progress))
    progress("lab torn down")
    report["ok"] = all(s["status"] == "ok" and not s.get("comparison", {}).get("mismatches")
                       for s in report["steps"])
    return report


def _punch(lab: Lab, url: str, protocol: str, report: dict, progress) -> dict:
    key = secrets.token_hex(12)
    peers = report["peers"]
    initiator_host, receiver_host = peers["initiator"]["host"], peers["receiver"]["host"]
    progress(f"punching {protocol}: {initiator_host} (initiator, site a) -> "
             f"{receiver_host} (receiver, site {peers['receiver']['site']})")
    full_env = dict(os.environ, STUNTURN_KEY=key)     # the key stays out of ps
    initiator = lab.popen(initiator_host, _cli("punch", url, "--target-ip",
                                                peers["receiver"]["public_ip"],
                                                "--protocol", protocol, "--json"), env=full_env)
    receiver = lab.popen(receiver_host, _cli("punch", url, "--wait", "30", "--protocol",
                                              protocol, "--json"), env=full_env)
    r_out, r_err, r_code = _run(receiver, PUNCH_TIMEOUT)
    i_out, i_err, i_code = _run(initiator, PUNCH_TIMEOUT)
    step: dict = {"step": f"punch {protocol}", "protocol": protocol}
    sides = {}
    for role, (out, err, code) in (("initiator", (i_out, i_err, i_code)),
                                   ("receiver", (r_out, r_err, r_code))):
        side = _step_result(role, out, err, code)
        side["result"] = _json_line(out)
        sides[role] = side
    step.update(sides)
    statuses = {s["status"] for s in sides.values()}
    step["status"] = ("ok" if statuses == {"ok"} else
                      "not-built" if "not-built" in statuses else "failed")
    progress(f"  punch: {step['status']}")
    return step


def render(report: dict) -> str:
    """A readable summary of :func:`run_demo`'s report."""
    lines = [f"NAT lab demo ({report.get('lab', '?')})"]
    for site, info in report["sites"].items():
        behind = f" behind CGNAT {info['cgnat']}" if info.get("cgnat") else ""
        lines.append(f"  site {site}: {info['nat']}{behind}, public {info['public_ip']}, "
                     f"host {info['host']}")
    for step in report["steps"]:
        name, status = step["step"], step["status"]
        lines.append(f"- {name}: {status}")
        if name == "serve" and status == "ok":
            lines.append(f"    {step['listening'].get('http_url', '')}")
        comparison = step.get("comparison")
        if comparison:
            lines.append(f"    verdicts matching the lab's ground truth: "
                         f"{len(comparison['matches'])}, differing: "
                         f"{len(comparison['mismatches'])}, undecided: "
                         f"{len(comparison['undecided'])}")
            for miss in comparison["mismatches"]:
                lines.append(f"    ! {miss['key']}: probe says {miss['observed']}, "
                             f"lab is {miss['expected']}")
        result = step.get("result")
        if result and name.startswith("probe"):
            udp = result.get("udp") or {}
            lines.append(f"    {result.get('udp', {}).get('classic_label', '')}: "
                         f"mapping {udp.get('mapping')}, filtering {udp.get('filtering')}")
        for role in ("initiator", "receiver"):
            side = step.get(role)
            if not side:
                continue
            res = side.get("result") or {}
            summary = ", ".join(f"{k}={res[k]}" for k in ("ok", "strategy", "reason", "peer")
                                if k in res)
            lines.append(f"    {role}: {side['status']} {summary}")
        if status != "ok":
            for key in ("stderr", "stdout"):
                if step.get(key):
                    lines.append(f"    {key}: {step[key].splitlines()[-1]}")
            for role in ("initiator", "receiver"):
                if step.get(role, {}).get("stderr") and step[role]["status"] != "ok":
                    lines.append(f"    {role} stderr: {step[role]['stderr'].splitlines()[-1]}")
    lines.append("result: " + ("every step succeeded" if report.get("ok") else
                               "some steps failed or are not built yet (see above)"))
    return "\n".join(lines)
