"""Runs a :class:`~.plan.MatrixPlan`: per pair a fresh lab, the server command on the
server host, the peer commands on the first host of each site, collected and torn down.

Each pair's lab is recorded with this process as owner (:mod:`.owner`) before it is
built and forgotten after teardown. Teardown always happens: on errors (context
managers), on Ctrl-C / SIGTERM / SIGHUP (they interrupt the main thread, which stops
the workers and waits for their teardown) and, after ``kill -9``, by the next run or
``lab down --all --mine`` (labs whose owner is gone). Pairs run in ``plan.jobs``
worker threads, each with its own uniquely named lab.

With ``plan.relay`` each pair's lab also runs coturn on the server host
(:func:`~stunturn_diag.lab.pair_runner.launch_turn`, both public IPs' host), started
beside the server command (the peers start once both are ready), which gets it through
``{turn_server}``/``{turn_secret}``/``{turn_realm}``; each peer's last JSON line (our
punch's result) gives the path it took.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from ...errors import ConfigError, LabError, LabUnavailable, PlanError, StunturnError
from ..runner import Lab, check_prerequisites, down, sigterm_interrupts
from . import owner, plan as plan_mod, report
from stunturn_diag.sansio.lab import placeholders
from .netem import check_netem, netem_steps
from stunturn_diag.sansio.lab.theory import pair_sites, path_of
from ..pair_runner import last_json_line, launch_turn

POLL = 0.05
GRACE = 2.0          # after one peer failed, the other gets this long before it is ended
STOP_WAIT = 3.0      # a command asked to stop (SIGTERM) gets this long before SIGKILL


def load_plan(path: str | None, options: dict) -> plan_mod.MatrixPlan:
    """The plan from a file and options; a bad one is a PlanError (exit 2)."""
    try:
        return plan_mod.load(path, options)
    except PlanError:
        raise
    except ConfigError as exc:
        raise PlanError(exc.message, hint=exc.hint) from None


def prepare(matrix: plan_mod.MatrixPlan, progress: Callable[[str], None]) -> None:
    """Prerequisites (exit 2 if missing), then this user's dead runs' leftovers."""
    try:
        check_prerequisites()
        if matrix.needs_netem:
            check_netem()
    except LabUnavailable:
        raise
    except StunturnError as exc:
        raise LabUnavailable(exc.message, hint=exc.hint) from None
    for name in owner.reapable_labs():
        progress(f"removing {name}, left by an earlier run of yours that is gone")
        try:
            down(name)
        except LabError as exc:
            progress(f"  could not: {exc}")


class _Cancelled(Exception):
    pass


def _common_values(lab: Lab, pair: plan_mod.Pair, key: str, logdir: Path,
                   turn=None) -> dict[str, str]:
    site_a, site_b = pair_sites(pair.spec)
    return {"server_ip": lab.server_ip, "alt_ip": lab.server_alt_ip,
            "a_public_ip": lab.site_public_ip(site_a),
            "b_public_ip": lab.site_public_ip(site_b), "key": key,
            "type_a": pair.type_a, "type_b": pair.type_b, "logdir": str(logdir),
            "turn_server": f"{turn.address[0]}:{turn.address[1]}" if turn else "",
            "turn_secret": turn.secret if turn else "",
            "turn_realm": turn.realm if turn else ""}


def _peer_path(command: "_Command") -> dict | None:
    """What one peer's last JSON line says of its path (None: it printed none)."""
    try:
        result = last_json_line(command.out_path.read_bytes().decode("utf-8", "replace"))
    except OSError:
        return None
    if result is None:
        return None
    return {"path": path_of(result), "strategy": result.get("strategy"),
            "relay": result.get("relay"), "relay_reason": result.get("relay_reason"),
            "connect_ms": result.get("connect_ms"), "reason": result.get("reason")}


def _peer_hosts(lab: Lab, pair: plan_mod.Pair) -> tuple[str, str]:
    site_a, site_b = pair_sites(pair.spec)
    if site_a == site_b:
        hosts = lab.site_hosts(site_a)
        return hosts[0], hosts[1]
    return lab.site_hosts(site_a)[0], lab.site_hosts(site_b)[0]


class _Command:
    """One started command: its process, log files and facts for the result."""

    def __init__(self, lab: Lab, role: str, node: str, command: str, values: dict,
                 logdir: Path) -> None:
        self.role, self.node, self.command = role, node, command
        self.out_path, self.err_path = logdir / f"{role}.out", logdir / f"{role}.err"
        env = dict(os.environ, PYTHONUNBUFFERED="1", STUNTURN_LAB_ROLE=role,
                   STUNTURN_LAB_NODE=node, **placeholders.environment(values))
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = lab.popen(node, ["sh", "-c", command], stdout=out, stderr=err,
                                  stdin=subprocess.DEVNULL, env=env, text=False)
        self.timed_out = False
        self.stopped = False

    def poll(self) -> int | None:
        return self.proc.poll()

    def stop(self, *, timed_out: bool = False) -> None:
        if self.proc.poll() is not None:
            return
        self.timed_out = self.timed_out or timed_out
        self.stopped = True
        self.proc.terminate()
        try:
            self.proc.wait(timeout=STOP_WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            try:
                self.proc.wait(timeout=STOP_WAIT)
            except subprocess.TimeoutExpired:
                pass           # the lab's teardown ends what is left in the namespace

    def record(self) -> dict:
        code = self.proc.poll()
        return {"command": self.command, "node": self.node,
                "exit": None if self.timed_out else code, "timed_out": self.timed_out,
                "stopped": self.stopped, "stdout": str(self.out_path),
                "stderr": str(self.err_path)}

    def logs(self) -> dict[str, str]:
        out = {}
        for path, kind in ((self.out_path, "out"), (self.err_path, "err")):
            try:
                out[f"{self.role}.{kind}"] = path.read_bytes().decode("utf-8", "replace")
            except OSError:
                out[f"{self.role}.{kind}"] = ""
        return out


def _wait_ready(lab: Lab, server: _Command, form: str, deadline: float,
                cancel: threading.Event) -> None:
    """Until the server is ready (``line``: it printed a line; ``tcp:P``/``udp:P``: a
    socket listens on port P in the server's namespace); LabError if it ends first."""
    port = plan_mod.ready_port(form)
    if form == "none":
        return
    while True:
        if cancel.is_set():
            raise _Cancelled()
        code = server.poll()
        if code is not None:
            raise LabError(f"the server command exited {code} before it was ready ({form})")
        if port is None:
            if b"\n" in server.out_path.read_bytes():
                return
        else:
            kind = "-Hltn" if port[0] == "tcp" else "-Hlun"
            out = lab.exec(lab.server, ["ss", kind, f"sport = :{port[1]}"], timeout=10)
            if out.stdout.strip():
                return
        if time.monotonic() >= deadline:
            raise LabError(f"the server was not ready ({form}) within the timeout")
        time.sleep(0.1)


def _wait_peers(peers: list[_Command], deadline: float, cancel: threading.Event) -> None:
    failed_at = None
    while any(p.poll() is None for p in peers):
        if cancel.is_set():
            raise _Cancelled()
        now = time.monotonic()
        if failed_at is None and any(p.poll() not in (None, 0) for p in peers):
            failed_at = now
        if now >= deadline:
            for p in peers:
                p.stop(timed_out=True)
            return
        if failed_at is not None and now - failed_at >= GRACE:
            for p in peers:
                p.stop()
            return
        time.sleep(POLL)


def run_pair(pair: plan_mod.Pair, matrix: plan_mod.MatrixPlan, logroot: Path,
             cancel: threading.Event | None = None,
             progress: Callable[[str], None] = lambda m: None) -> tuple[dict, dict]:
    """Run one pair; returns its result record and its logs (name -> text)."""
    cancel = cancel or threading.Event()
    expect, skipped = pair.expectation(matrix.protocol, matrix.relay)
    logdir = logroot / pair.id
    if logdir.exists():
        shutil.rmtree(logdir)
    logdir.mkdir(parents=True)
    base = dict(pair=pair.id, type_a=pair.type_a, type_b=pair.type_b, expect=expect,
                skipped=skipped, theory=pair.theory, logdir=str(logdir),
                protocol=matrix.protocol)
    if matrix.relay:
        base.update(relay=True, expect_path=pair.expected_path(matrix.protocol, True))
    if expect == "skip":
        return report.result(**base, outcome="not-run", duration_s=0.0, commands={}), {}
    lab = Lab(pair.spec)
    key = secrets.token_hex(12)
    commands: list[_Command] = []
    outcome, error, started, turn, paths = "error", None, None, None, {}
    owner.claim(lab.name, pair.spec.to_dict())
    progress(f"{pair.id}: building lab {lab.name}")
    try:
        with lab:
            for node, argv in netem_steps(lab.topology, matrix.delay_ms, matrix.jitter_ms):
                lab.exec(node, argv, timeout=20, check=True)
            if matrix.relay:        # coturn starts while the server command does
                turn = launch_turn(lab)
            common = _common_values(lab, pair, key, logdir, turn)
            deadline = time.monotonic() + matrix.timeout
            if matrix.commands.server:
                values = placeholders.values_for("server", common)
                server = _Command(lab, "server", lab.server, placeholders.substitute(
                    matrix.commands.server, values, role="server"), values, logdir)
                commands.append(server)
                _wait_ready(lab, server, matrix.commands.server_ready, deadline, cancel)
            if turn is not None:
                turn.wait_listening(lab)
            started = time.monotonic()
            peers = []
            for role, node in zip(("a", "b"), _peer_hosts(lab, pair)):
                values = placeholders.values_for(role, common)
                peers.append(_Command(lab, role, node, placeholders.substitute(
                    matrix.commands.template(role), values, role=role), values, logdir))
            commands += peers
            _wait_peers(peers, deadline, cancel)
            if any(p.timed_out for p in peers):
                outcome = "timeout"
            else:
                outcome = "connected" if all(p.poll() == 0 for p in peers) else "failed"
            for command in commands:
                command.stop()
            if matrix.relay:
                paths = {p.role: _peer_path(p) for p in peers}
    except _Cancelled:
        error = "interrupted"
    except StunturnError as exc:
        error = str(exc)
    finally:
        if turn is not None:
            turn.stop()
        owner.release(lab.name)
    duration = time.monotonic() - started if started else 0.0
    logs: dict[str, str] = {}
    for command in commands:
        logs.update(command.logs())
    res = report.result(**base, outcome=outcome, duration_s=duration, lab=lab.name,
                        error=error, commands={c.role: c.record() for c in commands},
                        **({"paths": paths} if matrix.relay else {}))
    (logdir / "result.json").write_text(report.json_lines([res]).splitlines()[0] + "\n")
    progress(f"{pair.id}: {res['status']} ({res['outcome']}, {duration:.1f} s)"
             + (f": {error}" if error else ""))
    return res, logs


def run_matrix(matrix: plan_mod.MatrixPlan, *, logdir: str | Path, junit: str | None = None,
               progress: Callable[[str], None] = lambda m: None) -> dict:
    """Run every pair (``matrix.jobs`` at a time); write ``results.md``, ``results.jsonl``
    (and ``junit``) and return ``{"results", "summary", "files"}``."""
    prepare(matrix, progress)
    root = Path(logdir).resolve()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PlanError(f"cannot create the log folder {root}: {exc.strerror}") from None
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    cancel = threading.Event()
    by_id: dict[str, tuple[dict, dict]] = {}
    progress(f"{len(matrix.pairs)} pair(s), {matrix.jobs} at a time, logs in {root}")

    def work(pair):
        if cancel.is_set():
            return
        by_id[pair.id] = run_pair(pair, matrix, root, cancel, progress)

    with sigterm_interrupts():
        pool = ThreadPoolExecutor(max_workers=matrix.jobs, thread_name_prefix="lab-pair")
        try:
            futures = [pool.submit(work, pair) for pair in matrix.pairs]
            for future in futures:
                while not future.done():
                    time.sleep(0.1)      # interruptible by Ctrl-C / SIGTERM
                future.result()
        except BaseException:
            cancel.set()
            progress("stopping: ending the running pairs and tearing their labs down")
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
    results = [by_id[p.id][0] for p in matrix.pairs]
    logs = {pid: entry[1] for pid, entry in by_id.items()}
    files = {"markdown": str(root / "results.md"), "jsonl": str(root / "results.jsonl")}
    (root / "results.md").write_text(report.markdown(results))
    (root / "results.jsonl").write_text(report.json_lines(results))
    if junit:
        Path(junit).write_text(report.junit(results, logs, timestamp=stamp))
        files["junit"] = str(junit)
    return {"results": results, "summary": report.summary(results), "files": files}
