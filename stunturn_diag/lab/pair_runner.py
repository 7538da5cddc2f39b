"""Run the server and both peers of a punch inside a NAT lab: the one driver.

``lab demo`` runs through it (its :mod:`.demo_peer` punch, and with ``--paths`` the three
path labs of :func:`run_pair_with_relay`), and so do the netns tests and the benchmarks
(the test kit's TCP selftest is a thin layer over :func:`run_peers`).

- :func:`start_serve` starts ``stunturn-diag serve --json`` and returns once its ready line
  came (the one starter of a serve process: :func:`serve_in_lab` on the lab's server host,
  the tests' and benchmarks' loopback servers);
- :func:`start_turn` runs coturn beside it, offered by ``serve`` (``turn=``;
  :func:`launch_turn` without waiting for it);
- :func:`run_peers` starts peer processes in lab hosts and waits for them all within one
  deadline (each one's output, exit status and last JSON line: :func:`last_json_line`);
- :func:`run_pair`: the server and two :mod:`stunturn_diag.punch.labpeer` peers.

Every process started here ends by itself, at its deadline, or with the lab
(``Lab.popen``).
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Sequence

from ..errors import LabError
from . import state

HTTP_PORT = 8080
#: seconds ``serve`` gets to print its ready line
SERVE_READY_TIMEOUT = 20.0
#: coturn on the lab's server host (3478/3479 are serve's STUN responder, 3490 the portmap helper)
TURN_PORT = 3480
TURN_RELAY_PORTS = (49152, 49251)
TURN_SECRET = "lab-turn-shared-secret"
TURN_REALM = "stunturn.lab"


def last_json_line(text: str | None) -> dict | None:
    """The last line of ``text`` that is a JSON object, or None."""
    for line in reversed((text or "").strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def parse_peer_output(text: str, err: str) -> dict:
    """The last JSON line a lab peer printed, else a ``crashed`` result with its stderr."""
    result = last_json_line(text)
    if result is not None:
        return result
    return {"ok": False, "reason": "crashed", "message": err.strip()[-800:]}


def read_line(proc: subprocess.Popen, timeout: float) -> str | None:
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


def finish(proc: subprocess.Popen, timeout: float) -> tuple[str, str, int | None]:
    """Wait for ``proc`` (at most ``timeout`` s, then kill it): stdout, stderr and its exit
    status (None: killed at the deadline, which stderr's last line says)."""
    try:
        out, err = proc.communicate(timeout=timeout)
        return out, err, proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=5)
        return out, (err or "") + f"\n(killed after {timeout:g}s)", None


# --- the server -------------------------------------------------------------------------

class ServeFailed(LabError):
    """``serve`` printed no ready line: what it printed and its exit status (None: it
    hung and was killed)."""

    def __init__(self, stdout: str, stderr: str, returncode: int | None) -> None:
        super().__init__(f"the server did not start (exit status {returncode}): "
                         f"{(stderr or stdout).strip()[-500:]}")
        self.stdout, self.stderr, self.returncode = stdout, stderr, returncode


class Serving(NamedTuple):
    proc: subprocess.Popen
    #: serve's ready line (``http_url``, ``stun_endpoints``...)
    info: dict


def start_serve(popen: Callable[..., subprocess.Popen], listen: str, *options: str,
                ready_timeout: float = SERVE_READY_TIMEOUT,
                stderr: int = subprocess.PIPE) -> Serving:
    """``stunturn-diag serve LISTEN --json OPTIONS...`` started with ``popen``
    (``subprocess.Popen``, or a lab host's ``Lab.popen``); returns once its ready line
    came, else kills it and raises :class:`ServeFailed`. ``stderr``: where its log goes
    (a pipe nobody reads fills up under a long benchmark: DEVNULL)."""
    proc = popen([sys.executable, "-m", "stunturn_diag", "serve", listen, "--json", *options],
                 stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL, text=True)
    line = read_line(proc, ready_timeout)
    info = last_json_line(line)
    if info is None:
        if proc.poll() is None:
            proc.kill()
        out, err, code = finish(proc, 5)
        raise ServeFailed((line or "") + (out or ""), err or "", code)
    return Serving(proc, info)


def serve_in_lab(lab, *, http_port: int = HTTP_PORT, wait_timeout: float | None = 20.0,
                 log_level: str | None = "WARNING", extra: Sequence[str] = (),
                 turn: TurnServer | None = None,
                 ready_timeout: float = SERVE_READY_TIMEOUT) -> Serving:
    """``serve`` (with ``--alt-ip``) on the lab's server host at ``http_port``; returns once
    it listens. ``wait_timeout``/``log_level``: its ``--wait-timeout``/``--log-level``
    (None: serve's defaults, as ``lab demo`` runs it); ``extra``: more serve options
    (another instance: other STUN ports, ``--redis``...); ``turn``: the relay it offers
    (:func:`start_turn`)."""
    options = ["--alt-ip", lab.server_alt_ip]
    if wait_timeout is not None:
        options += ["--wait-timeout", str(wait_timeout)]
    if log_level is not None:
        options += ["--log-level", log_level]
    return start_serve(lambda argv, **kw: lab.popen(lab.server, argv, **kw),
                       f"{lab.server_ip}:{http_port}", *options, *extra,
                       *(turn.flags if turn else []), ready_timeout=ready_timeout)


# --- the TURN relay ---------------------------------------------------------------------

def turnserver_conf(ip: str, port: int, relay_ports: tuple[int, int], secret: str, realm: str,
                    workdir: str) -> str:
    """The minimal coturn configuration for `serve --turn-server/--turn-secret` (README's):
    UDP relaying and RFC 6062 TCP allocations (no ``no-tcp-relay``), both on ``port``."""
    return "\n".join([
        f"listening-ip={ip}", f"listening-port={port}", f"relay-ip={ip}",
        f"min-port={relay_ports[0]}", f"max-port={relay_ports[1]}",
        "use-auth-secret", f"static-auth-secret={secret}", f"realm={realm}",
        "fingerprint", "no-tls", "no-dtls", "no-cli",
        f"log-file={workdir}/turn.log", "simple-log", f"pidfile={workdir}/turn.pid",
        f"userdb={workdir}/turndb", ""])


@dataclass
class TurnServer:
    """coturn's ``turnserver`` on the lab's server host (ended by PID: :meth:`stop`)."""

    proc: subprocess.Popen
    address: tuple[str, int]
    secret: str
    workdir: str
    flags: list[str] = field(default_factory=list)
    realm: str = TURN_REALM

    def wait_ready(self, lab, tries: int = 100) -> None:
        """Until it answers a STUN Binding on its address (at most ``tries`` polls 50 ms
        apart); else stop it and raise LabError with its log's tail."""
        for _ in range(tries):
            if self.proc.poll() is not None:
                break
            if stun_answers(lab, lab.server, self.address):
                return
            time.sleep(0.05)
        self._failed()

    def wait_listening(self, lab, tries: int = 100) -> None:
        """Until its UDP and TCP sockets listen on its port (``ss`` in the server's
        namespace, much cheaper than a STUN client process; what a runner that starts
        peers afterwards needs: the kernel queues their first requests until coturn
        reads them); else stop it and raise LabError."""
        for _ in range(tries):
            if self.proc.poll() is not None:
                break
            out = lab.exec(lab.server, ["ss", "-Hlntu", f"sport = :{self.address[1]}"],
                           timeout=10).stdout.split()
            if {"udp", "tcp"} <= set(out):
                return
            time.sleep(0.05)
        self._failed()

    def _failed(self) -> None:
        path = os.path.join(self.workdir, "turn.log")
        log = open(path).read()[-800:] if os.path.exists(path) else ""
        self.stop()
        raise LabError(f"turnserver did not answer on {self.address[0]}:{self.address[1]}: "
                       f"{log}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.workdir, ignore_errors=True)


def stun_answers(lab, node: str, address: tuple[str, int], *, timeout: float = 0.3) -> bool:
    """A STUN Binding from ``node`` to ``address`` answered within ``timeout`` s (one try:
    :mod:`.stun_ping`)."""
    argv = [sys.executable, "-m", "stunturn_diag.lab.stun_ping", address[0], str(address[1]),
            "--timeout", str(timeout)]
    return lab.exec(node, argv, timeout=10).returncode == 0


def launch_turn(lab, *, port: int = TURN_PORT, secret: str = TURN_SECRET) -> TurnServer:
    """Start coturn on ``lab.server_ip:port`` with a temp config (``use-auth-secret``) and
    return at once: :meth:`TurnServer.wait_ready` waits for its STUN answer (the caller
    may start ``serve`` meanwhile). ``TurnServer.flags`` are serve's ``--turn-*`` flags."""
    tool = shutil.which("turnserver")
    if tool is None:
        raise LabError("coturn's turnserver is not installed", hint="apt-get install coturn "
                       "(scripts/setup.sh)")
    workdir = str(state.new_workdir(lab.name, "turn"))
    conf = os.path.join(workdir, "turnserver.conf")
    with open(conf, "w") as fh:
        fh.write(turnserver_conf(lab.server_ip, port, TURN_RELAY_PORTS, secret, TURN_REALM,
                                 workdir))
    proc = lab.popen(lab.server, [tool, "-c", conf], stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    return TurnServer(proc, (lab.server_ip, port), secret, workdir,
                      ["--turn-server", f"{lab.server_ip}:{port}", "--turn-secret", secret,
                       "--turn-realm", TURN_REALM, "--turn-transports", "udp,tcp"])


def start_turn(lab, *, port: int = TURN_PORT, secret: str = TURN_SECRET) -> TurnServer:
    """:func:`launch_turn`, then :meth:`TurnServer.wait_ready`: returns once coturn
    answers STUN."""
    server = launch_turn(lab, port=port, secret=secret)
    server.wait_ready(lab)
    return server


# --- the peers --------------------------------------------------------------------------

@dataclass
class PeerRun:
    """How one peer process ended."""

    host: str
    stdout: str
    stderr: str
    #: None: still running at the deadline, killed
    returncode: int | None

    @property
    def result(self) -> dict | None:
        """Its last JSON line (None: it printed none)."""
        return last_json_line(self.stdout)

    def outcome(self) -> dict:
        """Its last JSON line, else a ``crashed`` result with its stderr."""
        return parse_peer_output(self.stdout, self.stderr)


def run_peers(lab, peers: Sequence[tuple[str, Sequence[str]]], *, timeout: float,
              env: dict | None = None) -> list[PeerRun]:
    """Start each ``(host, argv)`` in its lab host, in this order, and wait for all of
    them within ``timeout`` seconds of the start (one still running then is killed)."""
    procs = [(host, lab.popen(host, argv, env=env, stdin=subprocess.DEVNULL))
             for host, argv in peers]
    deadline = time.monotonic() + timeout
    return [PeerRun(host, *finish(proc, max(1.0, deadline - time.monotonic())))
            for host, proc in procs]


@dataclass
class PairResult:
    initiator: dict
    receiver: dict

    @property
    def ok(self) -> bool:
        return bool(self.initiator.get("ok") and self.receiver.get("ok"))

    @property
    def data_both_ways(self) -> bool:
        return all(r.get("got") and r.get("acked") for r in (self.initiator, self.receiver))


def run_pair(  # noqa: PLR0913 - test/bench driver
lab, initiator_host: str, receiver_host: str, *, key: str = "lab-key-0123",
             profiles: bool = True, punch_timeout: float = 5.0, prime_ttl: int = 2,
             birthday: bool = False, server: bool = True, pair_wait: float = 15.0,
             linger: float = 0.0, urls: tuple[str, str] | None = None,
             turn: TurnServer | None = None, profile_json: str | None = None,
             protocol: str = "udp", receiver_delay: float = 0.0) -> PairResult:
    """Both :mod:`stunturn_diag.punch.labpeer` peers (through the library API; they
    exchange data both ways) against the lab's server (started here unless ``server`` is
    false or ``urls`` are given).

    ``linger``: keep exchanging data at least this many seconds after the channel opened (UDP;
    ``protocol="tcp"`` exchanges one line each way); ``urls``: (initiator's, receiver's)
    signaling servers when they differ (several instances sharing a Redis), started by
    the caller; ``turn``: the relay the server offers (:func:`start_turn`);
    ``profile_json``: the NAT profile both peers claim (default: each site's ground
    truth); ``receiver_delay``: the receiver starts that many seconds late."""
    if server and urls is None:
        serve_in_lab(lab, turn=turn)
    url = f"http://{lab.server_ip}:{HTTP_PORT}"
    initiator_url, receiver_url = urls or (url, url)
    target = lab.site_public_ip(lab.site_of(receiver_host))

    def peer(host: str, role: str) -> tuple[str, list[str]]:
        profile = (profile_json or json.dumps(lab.expected(lab.site_of(host)))) if profiles \
            else "-"
        url = initiator_url if role == "initiator" else receiver_url
        delay = receiver_delay if role == "receiver" else 0.0
        argv = [sys.executable, "-m", "stunturn_diag.punch.labpeer", "--role", role,
                "--url", url, "--target", target, "--punch-timeout", str(punch_timeout),
                "--prime-ttl", str(prime_ttl), "--wait", str(pair_wait), "--linger",
                str(linger), "--protocol", protocol, "--delay", str(delay)]
        if profile != "-":
            argv += ["--profile", profile]
        return host, argv + (["--birthday"] if birthday else [])

    ini, rec = run_peers(lab, [peer(initiator_host, "initiator"), peer(receiver_host, "receiver")],
                         timeout=punch_timeout + pair_wait + 30,
                         env=dict(os.environ, PYTHONUNBUFFERED="1", STUNTURN_KEY=key))
    return PairResult(ini.outcome(), rec.outcome())


#: the three paths of issue 12, one NAT pair each: (path, initiator NAT, receiver NAT)
PATH_PAIRS = [("direct", "port-restricted", "full-cone"),
              ("portmap", "symmetric-random+portmap", "port-restricted"),
              ("relay", "symmetric-random", "symmetric-random")]


def run_pair_with_relay(nat_a: str, nat_b: str, **kw) -> PairResult:
    """A fresh lab of ``nat_a`` (a1, initiator) and ``nat_b`` (b1), coturn on srv offered
    by the server, :func:`run_pair`; everything torn down afterwards."""
    from stunturn_diag.sansio.lab.spec import LabSpec

    from .runner import Lab

    with Lab(LabSpec.simple(nat_a, nat_b)) as lab:
        turn = start_turn(lab)
        try:
            return run_pair(lab, "a1", "b1", turn=turn, **kw)
        finally:
            turn.stop()
