"""Run both peers of a punch inside a NAT lab (netns tests, benchmark, demos).

:func:`run_pair` starts the signaling server + STUN responder on the lab's server
host, the initiator and the receiver (each in its own namespace, through the
library API: :mod:`.labpeer`), lets them exchange datagrams both ways and returns
both JSON results. Every process it starts ends with the lab (``Lab.popen``) or by itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from ..errors import LabError

HTTP_PORT = 8080
#: coturn on the lab's server host (3478/3479 are serve's STUN responder, 3490 the portmap helper)
TURN_PORT = 3480
TURN_RELAY_PORTS = (49152, 49251)
TURN_SECRET = "lab-turn-shared-secret"
TURN_REALM = "stunturn.lab"



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

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _turn_answers(lab, address: tuple[str, int]) -> bool:
    """A STUN Binding to coturn from the server host answered (bounded: one try, 0.3 s)."""
    probe = ("import socket,sys; from stunturn_diag.sansio import stun; "
             "from stunturn_diag.stun_requests import fresh_binding_request; s=socket.socket(2,2); "
             "s.settimeout(0.3); s.sendto(stun.encode(fresh_binding_request()), "
             f"({address[0]!r},{address[1]})); s.recv(2048)")
    return lab.exec(lab.server, [sys.executable, "-c", probe], timeout=10).returncode == 0


def start_turn(lab, *, port: int = TURN_PORT, secret: str = TURN_SECRET) -> TurnServer:
    """Run coturn on ``lab.server_ip:port`` with a temp config (``use-auth-secret``);
    returns once it answers STUN. ``TurnServer.flags`` are serve's ``--turn-*`` flags."""
    tool = shutil.which("turnserver")
    if tool is None:
        raise LabError("coturn's turnserver is not installed", hint="apt-get install coturn "
                       "(scripts/setup.sh)")
    workdir = tempfile.mkdtemp(prefix=f"{lab.name}-turn-")    # as the lab's miniupnpd folders
    conf = os.path.join(workdir, "turnserver.conf")
    with open(conf, "w") as fh:
        fh.write(turnserver_conf(lab.server_ip, port, TURN_RELAY_PORTS, secret, TURN_REALM,
                                 workdir))
    proc = lab.popen(lab.server, [tool, "-c", conf], stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    server = TurnServer(proc, (lab.server_ip, port), secret, workdir,
                        ["--turn-server", f"{lab.server_ip}:{port}", "--turn-secret", secret,
                         "--turn-realm", TURN_REALM, "--turn-transports", "udp,tcp"])
    for _ in range(100):
        if proc.poll() is not None:
            break
        if _turn_answers(lab, server.address):
            return server
        time.sleep(0.05)
    log = open(os.path.join(workdir, "turn.log")).read()[-800:] if os.path.exists(
        os.path.join(workdir, "turn.log")) else ""
    server.stop()
    raise LabError(f"turnserver did not answer on {lab.server_ip}:{port}: {log}")


def start_server(lab, *, wait_timeout: float = 20.0, http_port: int = HTTP_PORT,
                 extra: tuple[str, ...] = (), turn: TurnServer | None = None) -> subprocess.Popen:
    """``stunturn-diag serve`` on the lab's server host; returns once it listens.
    ``extra``: more serve options (another instance: other STUN ports, ``--redis``...);
    ``turn``: the relay it offers (:func:`start_turn`)."""
    proc = lab.popen(lab.server, [sys.executable, "-m", "stunturn_diag", "serve",
                                  f"{lab.server_ip}:{http_port}", "--alt-ip", lab.server_alt_ip,
                                  "--wait-timeout", str(wait_timeout), "--json",
                                  "--log-level", "WARNING", *extra,
                                  *(turn.flags if turn else [])])
    line = proc.stdout.readline()
    if not line.startswith("{"):
        raise RuntimeError(f"server did not start: {line!r} {proc.stderr.read()[-500:]}")
    return proc


def parse_peer_output(text: str, err: str) -> dict:
    """The last JSON line a lab peer printed, else a ``crashed`` result with its stderr."""
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"ok": False, "reason": "crashed", "message": err.strip()[-800:]}


def run_pair(  # noqa: PLR0913 - test/bench driver
lab, initiator_host: str, receiver_host: str, *, key: str = "lab-key-0123",
             profiles: bool = True, punch_timeout: float = 5.0, prime_ttl: int = 2,
             birthday: bool = False, server: bool = True, pair_wait: float = 15.0,
             linger: float = 0.0, urls: tuple[str, str] | None = None,
             turn: TurnServer | None = None, profile_json: str | None = None,
             protocol: str = "udp", receiver_delay: float = 0.0) -> PairResult:
    """``linger``: keep exchanging data at least this many seconds after the channel opened (UDP;
    ``protocol="tcp"`` exchanges one line each way); ``urls``: (initiator's, receiver's)
    signaling servers when they differ (several instances sharing a Redis), started by
    the caller; ``turn``: the relay the server offers (:func:`start_turn`);
    ``profile_json``: the NAT profile both peers claim (default: each site's ground
    truth); ``receiver_delay``: the receiver starts that many seconds late."""
    if server and urls is None:
        start_server(lab, turn=turn)
    url = f"http://{lab.server_ip}:{HTTP_PORT}"
    initiator_url, receiver_url = urls or (url, url)
    target = lab.site_public_ip(lab.site_of(receiver_host))
    env = dict(os.environ, PYTHONUNBUFFERED="1", STUNTURN_KEY=key)

    def peer(host: str, role: str) -> subprocess.Popen:
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
        return lab.popen(host, argv + (["--birthday"] if birthday else []), env=env)

    ini = peer(initiator_host, "initiator")
    rec = peer(receiver_host, "receiver")
    limit = punch_timeout + pair_wait + 30
    ro, re_ = rec.communicate(timeout=limit)
    io, ie = ini.communicate(timeout=limit)
    return PairResult(parse_peer_output(io, ie), parse_peer_output(ro, re_))


#: run argv as uid/gid 65534 with no capability but CAP_DAC_READ_SEARCH: that one only
#: lets the interpreter and the checkout be read wherever they live (pyenv under a
#: 0700 /root, a CI clone under a 0700 temp folder); it grants nothing on the network
#: (no binding below 1024, no raw sockets, no CAP_NET_ADMIN)
UNPRIVILEGED_PREFIX = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                       "--inh-caps=-all,+dac_read_search", "--ambient-caps=+dac_read_search",
                       "--bounding-set=-all,+dac_read_search"]


def unprivileged_argv(argv: list[str]) -> list[str]:
    """``argv`` wrapped to run as an ordinary user (nobody, no network capability); needs root."""
    return [*UNPRIVILEGED_PREFIX, *argv]



#: the three paths of issue 12, one NAT pair each: (path, initiator NAT, receiver NAT)
PATH_PAIRS = [("direct", "port-restricted", "full-cone"),
              ("portmap", "symmetric-random+portmap", "port-restricted"),
              ("relay", "symmetric-random", "symmetric-random")]


def run_pair_with_relay(nat_a: str, nat_b: str, **kw) -> PairResult:
    """A fresh lab of ``nat_a`` (a1, initiator) and ``nat_b`` (b1), coturn on srv offered
    by the server, :func:`run_pair`; everything torn down afterwards."""
    from ..lab import Lab, LabSpec

    with Lab(LabSpec.simple(nat_a, nat_b)) as lab:
        turn = start_turn(lab)
        try:
            return run_pair(lab, "a1", "b1", turn=turn, **kw)
        finally:
            turn.stop()
