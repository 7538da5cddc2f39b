"""``stunturn-diag lab demo``: the whole product on one machine, honestly reported.

Builds a lab (site a and site b behind kernel NATs), starts ``stunturn-diag serve``
on the server host, probes the NAT from a host in each site and compares the verdicts
with the catalogue's ground truth, then punches from site a (initiator) to site b
(receiver), each side sharing its probe report as NAT profile, and has each side send
the other a message through the punched channel (:mod:`.demo_peer`, the punch library
API). When coturn's ``turnserver`` is installed it runs on the server host and ``serve``
offers it, so a pair that cannot be punched connects through the relay; ``paths=True``
(``lab demo --paths``) then shows, in three more quick labs, a direct pair, a pair that
connects through a gateway port mapping and one that connects only through the relay. Every step's outcome is recorded, including failures; the lab is always torn
down (also on Ctrl-C or SIGTERM; after ``kill -9``, ``stunturn-diag lab down --all``).
The server, the relay and the peers are started and awaited through :mod:`.pair_runner`,
the driver the netns tests and the benchmarks use too.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable

from ..errors import StunturnError
from .pair_runner import (HTTP_PORT, PATH_PAIRS, ServeFailed, finish, last_json_line,
                          run_pair_with_relay, run_peers, serve_in_lab, start_turn)
from .runner import Lab, check_prerequisites, sigterm_interrupts
from stunturn_diag.sansio.lab.spec import LabSpec

PROBE_TIMEOUT = 120.0
PUNCH_TIMEOUT = 90.0


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "stunturn_diag.cli", *args]


def _tail(text: str | None, n: int = 600) -> str:
    return (text or "").strip()[-n:]


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
            "stdout": _tail(out) if last_json_line(out) is None else None}


def run_demo(site_a: str = "port-restricted", site_b: str = "full-cone", *,
             protocol: str = "udp", cgnat: tuple[str, ...] = (), same_nat: bool = False,
             paths: bool = False, relay: bool = True,
             progress: Callable[[str], None] = lambda message: None) -> dict:
    """Run the demo; returns a JSON-able report (``"ok"``: every step succeeded).

    ``same_nat``: both peers (a1, a2) behind site a's NAT; ``cgnat``: sites that get a
    carrier-grade NAT in front.
    """
    spec = LabSpec.simple(site_a, site_b, cgnat=cgnat, same_nat=same_nat)
    check_prerequisites()
    with sigterm_interrupts():
        report = _run_demo(spec, protocol, progress, relay)
        if paths:
            report["steps"] += [_path_step(*pair, progress) for pair in PATH_PAIRS]
            report["ok"] = report["ok"] and all(s["status"] == "ok" for s in report["steps"])
        return report


def _path_step(path: str, nat_a: str, nat_b: str, progress) -> dict:
    """One quick lab whose pair should connect over ``path`` (direct, portmap, relay)."""
    progress(f"path {path}: {nat_a} (a1) -> {nat_b} (b1), with a TURN relay offered")
    step = {"step": f"path {path}", "nat": [nat_a, nat_b]}
    try:
        pair = run_pair_with_relay(nat_a, nat_b)
    except StunturnError as exc:
        return step | {"status": "failed", "stderr": str(exc)}
    used = pair.initiator.get("strategy")
    want = used if path == "direct" and used not in ("portmap", "relay") else path
    step.update(status="ok" if pair.ok and pair.data_both_ways and used == want else "failed",
                initiator={"result": pair.initiator}, receiver={"result": pair.receiver})
    progress(f"  path {path}: {step['status']} ({used}, "
             f"{pair.initiator.get('connect_ms')} ms after the match)")
    return step


def _run_demo(spec: LabSpec, protocol: str, progress: Callable[[str], None],
              relay: bool = True) -> dict:
    report: dict = {"sites": {}, "steps": []}
    lab = Lab(spec)
    progress(f"building lab {lab.name}: " + ", ".join(
        f"site {name} = {site.nat.name}" + (f" behind CGNAT {site.cgnat.name}" if site.cgnat
                                            else "") + (f" ({site.hosts} hosts)"
                                                        if site.hosts > 1 else "")
        for name, site in spec.sites.items()))
    with lab:
        report["lab"] = lab.name
        for site, described in lab.describe()["sites"].items():
            report["sites"][site] = {"nat": described["nat"], "cgnat": described["cgnat"],
                                     "public_ip": described["public_ip"],
                                     "host": lab.site_hosts(site)[0],
                                     "expected": lab.expected(site)}
        receiver = lab.site_hosts("b")[0] if "b" in lab.sites else lab.site_hosts("a")[1]
        report["peers"] = {
            "initiator": {"host": lab.site_hosts("a")[0], "site": "a"},
            "receiver": {"host": receiver, "site": lab.site_of(receiver),
                         "public_ip": lab.site_public_ip(lab.site_of(receiver))}}
        url = f"http://{lab.server_ip}:{HTTP_PORT}"
        turn = _start_turn(lab, report, progress) if relay else None
        try:
            if not _serve_probe_punch(lab, url, protocol, report, progress, turn):
                report["ok"] = False
                return report
        finally:          # also on Ctrl-C / SIGTERM: coturn's temp folder goes with it
            if turn is not None:
                turn.stop()
    progress("lab torn down")
    report["ok"] = all(s["status"] == "ok" and not s.get("comparison", {}).get("mismatches")
                       for s in report["steps"])
    return report


def _serve_probe_punch(lab: Lab, url: str, protocol: str, report: dict, progress,
                       turn) -> bool:
    """serve (offering ``turn``), a probe per site, the punch; False when serve failed."""
    progress(f"starting the server on {lab.server} ({url}, alternate IP {lab.server_alt_ip})")
    try:
        info = serve_in_lab(lab, wait_timeout=None, log_level=None, turn=turn).info
    except ServeFailed as exc:
        step = _step_result("serve", exc.stdout, exc.stderr, exc.returncode)
        if step["status"] == "ok":
            step["status"] = "failed"
        report["steps"].append(step)
        progress(f"server did not come up: {step['status']}")
        return False
    report["steps"].append({"step": "serve", "status": "ok", "listening": info})
    for site in lab.sites:
        host = report["sites"][site]["host"]
        progress(f"probing the NAT of site {site} from {host}")
        proc = lab.popen(host, _cli("probe", url, "--json"))
        out, err, code = finish(proc, PROBE_TIMEOUT)
        step = _step_result(f"probe {site}", out, err, code)
        result = last_json_line(out)
        if result is not None and code in (0, 3):
            step["status"] = "ok" if code == 0 else "partial"
            step["result"] = result
            step["comparison"] = compare(report["sites"][site]["expected"], result)
        report["steps"].append(step)
        progress(f"  probe {site}: {step['status']}")
    report["steps"].append(_punch(lab, url, protocol, report, progress))
    return True


def _start_turn(lab: Lab, report: dict, progress):
    """coturn on the server host when installed (else the demo runs without a relay)."""
    if shutil.which("turnserver") is None:
        report["relay"] = None
        return None
    try:
        turn = start_turn(lab)
    except StunturnError as exc:
        progress(f"no TURN relay: {exc}")
        report["relay"] = None
        return None
    report["relay"] = {"ip": turn.address[0], "port": turn.address[1]}
    progress(f"TURN relay (coturn) on {turn.address[0]}:{turn.address[1]}")
    return turn


def _punch(lab: Lab, url: str, protocol: str, report: dict, progress) -> dict:
    """Punch from the initiator to the receiver (each with its site's probe report as NAT
    profile), then each sends the other a message through the punched channel."""
    with tempfile.TemporaryDirectory(prefix=f"{lab.name}-demo-") as workdir:
        return _punch_in(lab, url, protocol, report, progress, Path(workdir))


def _punch_in(lab: Lab, url: str, protocol: str, report: dict, progress,
              workdir: Path) -> dict:
    key = secrets.token_hex(12)
    peers = report["peers"]
    profiles = {step["step"].split()[-1]: step.get("result") for step in report["steps"]
                if step["step"].startswith("probe ")}
    progress(f"punching {protocol}: {peers['initiator']['host']} (initiator, site a) -> "
             f"{peers['receiver']['host']} (receiver, site {peers['receiver']['site']})")
    roles = ("receiver", "initiator")
    argvs = []
    for role in roles:
        host = peers[role]["host"]
        argv = [sys.executable, "-m", "stunturn_diag.lab.demo_peer", url,
                "--protocol", protocol, "--wait", "30",
                "--message", f"hello from {host}"]
        if role == "initiator":
            argv += ["--target-ip", peers["receiver"]["public_ip"]]
        profile = profiles.get(peers[role]["site"])
        if profile:
            path = workdir / f"{role}-profile.json"
            path.write_text(json.dumps(profile))
            argv += ["--nat-profile", str(path)]
        argvs.append((host, argv))
    runs = run_peers(lab, argvs, timeout=PUNCH_TIMEOUT,
                     env=dict(os.environ, STUNTURN_KEY=key))     # the key stays out of ps
    by_role = dict(zip(roles, runs))
    step: dict = {"step": f"punch {protocol}", "protocol": protocol}
    for role in ("initiator", "receiver"):
        run = by_role[role]
        side = _step_result(role, run.stdout, run.stderr, run.returncode)
        side["host"] = run.host
        side["result"] = run.result
        step[role] = side
    ini, rec = step["initiator"]["result"] or {}, step["receiver"]["result"] or {}
    step["exchange"] = {
        f"{peers['initiator']['host']} -> {peers['receiver']['host']}":
            ini.get("sent") is not None and rec.get("received") == ini.get("sent"),
        f"{peers['receiver']['host']} -> {peers['initiator']['host']}":
            rec.get("sent") is not None and ini.get("received") == rec.get("sent")}
    punched = step["initiator"]["status"] == step["receiver"]["status"] == "ok"
    step["status"] = "ok" if punched and all(step["exchange"].values()) else "failed"
    if step["status"] == "ok":
        progress(f"  punch: ok ({ini.get('strategy')}), a message went each way")
    else:
        progress(f"  punch: failed ({ini.get('reason') or rec.get('reason') or 'see the report'})")
    return step


def _addr(value: dict | None) -> str:
    return f"{value['ip']}:{value['port']}" if isinstance(value, dict) else "?"


def _render_side(role: str, side: dict) -> list[str]:
    """One line per punching side: where it punched from and to, or that it failed."""
    res = side.get("result") or {}
    who = f"{role} {side.get('host', '')}".rstrip()
    if res.get("ok"):
        mapped = f" (mapped {_addr(res['mapped'])})" if res.get("mapped") else ""
        via = (f" (relayed: {res.get('relay_reason')})" if res.get("relayed") else
               f" (reached at its gateway mapping {_addr(res['portmap'])})"
               if res.get("portmap") else "")
        return [f"    {who}: {_addr(res.get('local'))}{mapped} -> peer "
                f"{_addr(res.get('peer'))}, authenticated {res.get('connect_ms')} ms "
                f"after the match{via}"]
    if res:
        return [f"    {who}: failed ({res.get('reason')})"]
    return [f"    {who}: {side['status']}"]


def _render_punch(step: dict) -> list[str]:
    ini = (step.get("initiator") or {}).get("result") or {}
    lines = []
    if ini.get("strategy"):
        why = ini.get("explanation") or ""
        why = why[len(ini["strategy"]) + 1:].strip() if why.startswith(ini["strategy"] + ":") \
            else why
        lines.append(f"    strategy {ini['strategy']}" + (f": {why}" if why else ""))
    for role in ("initiator", "receiver"):
        if step.get(role):
            lines += _render_side(role, step[role])
    messages = []
    for role in ("initiator", "receiver"):
        res = (step.get(role) or {}).get("result") or {}
        if res and not res.get("ok") and res.get("message") not in messages:
            messages.append(res.get("message"))
            lines.append(f"    {role}: {res.get('message')}")
    for direction, arrived in (step.get("exchange") or {}).items():
        src = direction.split(" -> ")[0]
        sides = [step.get(r) or {} for r in ("initiator", "receiver")]
        sent = next(((s.get("result") or {}).get("sent") for s in sides
                     if s.get("host") == src), None)
        if arrived:
            lines.append(f"    {direction}: {json.dumps(sent)} arrived through the punched channel")
        elif sent is not None:
            lines.append(f"    {direction}: message did NOT arrive")
    for role in ("initiator", "receiver"):
        error = ((step.get(role) or {}).get("result") or {}).get("exchange_error")
        if error:
            lines.append(f"    {role}: {error}")
    return lines


def _probe_line(result: dict) -> str:
    """The probe's main verdicts in one line (RFC 4787 / RFC 5382 terms)."""
    udp, tcp = result.get("udp") or {}, result.get("tcp") or {}
    if udp.get("reachable") is False:
        head = "UDP blocked (no STUN answer over UDP)"
    else:
        head = (f"{udp.get('classic_label', '?')}: UDP mapping {udp.get('mapping')}, "
                f"filtering {udp.get('filtering')}, ports {udp.get('port_allocation')}")
    if tcp.get("reachable") is False:
        return f"    {head}; TCP unreachable"
    return f"    {head}; TCP unsolicited SYN {tcp.get('unsolicited_syn')}"


def _reason(step: dict) -> str | None:
    if step.get("comparison", {}).get("mismatches"):
        return "differs from the ground truth"
    if step["status"] == "partial":
        return "partial"
    for role in ("initiator", "receiver"):
        res = (step.get(role) or {}).get("result") or {}
        if res.get("reason"):
            return res["reason"]
        if res.get("exchange_error"):
            return "no message through the channel"
    return None


def render(report: dict) -> str:
    """A readable summary of :func:`run_demo`'s report."""
    lines = [f"NAT lab demo ({report.get('lab', '?')}): real kernel NATs in network "
             "namespaces, torn down afterwards"]
    for site, info in report["sites"].items():
        behind = f" behind CGNAT {info['cgnat']}" if info.get("cgnat") else ""
        lines.append(f"  site {site}: {info['nat']}{behind}, public {info['public_ip']}, "
                     f"host {info['host']}")
    for step in report["steps"]:
        name, status = step["step"], step["status"]
        lines.append(f"- {name}: {status}")
        if name == "serve" and status == "ok":
            listening = step["listening"]
            stun = ", ".join(_addr(e) for e in listening.get("stun_endpoints", []))
            lines.append(f"    signaling {listening.get('http_url', '')}"
                         + (f"; STUN {stun}" if stun else ""))
        result = step.get("result")
        if result and name.startswith("probe"):
            lines.append(_probe_line(result))
        comparison = step.get("comparison")
        if comparison:
            lines.append(f"    verdicts matching the lab's ground truth: "
                         f"{len(comparison['matches'])}, differing: "
                         f"{len(comparison['mismatches'])}, undecided: "
                         f"{len(comparison['undecided'])}")
            for miss in comparison["mismatches"]:
                lines.append(f"    ! {miss['key']}: probe says {miss['observed']}, "
                             f"lab is {miss['expected']}")
        if name.startswith("punch") or name.startswith("path "):
            if step.get("nat"):
                lines.append(f"    {step['nat'][0]} (a1) -> {step['nat'][1]} (b1)")
            lines += _render_punch(step)
        if status != "ok":
            for key in ("stderr", "stdout"):
                if step.get(key):
                    lines.append(f"    {key}: {step[key].splitlines()[-1]}")
            for role in ("initiator", "receiver"):
                if step.get(role, {}).get("stderr") and step[role]["status"] != "ok":
                    lines.append(f"    {role} stderr: {step[role]['stderr'].splitlines()[-1]}")
    if report.get("ok"):
        peers = report.get("peers", {})
        ini, rec = (peers.get(r, {}).get("host", "?") for r in ("initiator", "receiver"))
        proto = next((s.get("protocol") for s in report["steps"] if s.get("protocol")), "?")
        punch = next((s for s in report["steps"] if s["step"].startswith("punch")), {})
        how = ("through the TURN relay" if ((punch.get("initiator") or {}).get("result") or {})
               .get("relayed") else "directly")
        lines.append(f"result: every step succeeded: the probes agree with the lab's ground "
                     f"truth and {ini} and {rec} talked {how} over {proto.upper()}")
    else:
        failed = [s["step"] + (f" ({_reason(s)})" if _reason(s) else "")
                  for s in report["steps"] if s["status"] != "ok"
                  or s.get("comparison", {}).get("mismatches")]
        lines.append("result: some steps failed or are not built yet"
                     + (f": {', '.join(failed)}" if failed else " (see above)"))
    return "\n".join(lines)
