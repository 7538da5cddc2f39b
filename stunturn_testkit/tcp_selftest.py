"""Lab driver for the TCP punch: learn mapping, swap candidates through files, punch, echo.

Run one per peer (the netns tests start it in each LAN host)::

    python3 -m stunturn_testkit.tcp_selftest --role initiator --name a --peer b \\
        --dir /tmp/x --stun 203.0.113.10:3478 --timeout 8

:func:`run_lab_pair` runs both sides in a :class:`~stunturn_diag.lab.Lab` (netns
tests, benchmarks) through the product's lab driver (:mod:`stunturn_diag.lab.pair_runner`).
Each side writes ``<dir>/<name>.json`` ({"srflx": [ip, port], "local": [[ip, port]...]}),
waits for ``<dir>/<peer>.json``, punches toward the peer's candidates and checks
bytes both ways. It prints one JSON line (``ok``, ``connect_s``, ``reason``...)
and exits 0 on success, 1 on a punch failure, 2 on a setup failure. Everything
is bounded by ``--timeout``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from stunturn_diag.sansio.netaddr import parse_hostport

from stunturn_diag.errors import PunchError, StunturnError
from stunturn_diag.lab.pair_runner import run_peers, serve_in_lab
from stunturn_diag.punch.tcp import TcpRendezvous

from . import env


def _addr(text: str) -> tuple[str, int]:
    return parse_hostport(text)


def _write(path: str, data: dict) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)


def _wait_for(path: str, until: float) -> dict | None:
    while time.monotonic() < until:
        try:
            with open(path) as fh:
                return json.load(fh)
        except (FileNotFoundError, json.JSONDecodeError):
            time.sleep(0.01)
    return None


#: seconds after writing its candidates at which a side starts punching (both take
#: the later of the two sides' times)
START_LEAD = 0.1


def _until(when: float) -> None:
    """Wait until wall-clock time ``when``: sleep, then the last 2 ms on the CPU."""
    left = when - time.time()
    if left > 0.002:
        time.sleep(min(left - 0.002, START_LEAD + 5.0))
    while time.time() < when:
        pass


def _echo(sock, role: str, name: str, until: float) -> tuple[bytes, bytes]:
    """Initiator sends first, receiver answers: proves both directions."""
    sock.settimeout(max(0.1, until - time.monotonic()))
    mine = f"hello from {name}\n".encode()
    if role == "initiator":
        sock.sendall(mine)
        got = sock.makefile("rb").readline()
    else:
        got = sock.makefile("rb").readline()
        sock.sendall(mine)
    return mine, got


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--role", choices=("initiator", "receiver"), required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--peer", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--stun", type=_addr, help="STUN server ip:port (TCP)")
    ap.add_argument("--srflx", type=_addr, help="skip STUN and announce this address")
    ap.add_argument("--timeout", type=float, default=8.0, help="punch deadline (s)")
    ap.add_argument("--stun-timeout", type=float, default=8.0, help="STUN over TCP (s)")
    ap.add_argument("--wait", type=float, default=20.0, help="candidate exchange wait (s)")
    ap.add_argument("--prime-ttl", type=int, default=None)
    ap.add_argument("--local-port", type=int, default=0)
    ap.add_argument("--use", default="srflx,local", help="candidate kinds to punch toward")
    ap.add_argument("--strategy", default="simultaneous-open")
    ap.add_argument("--predict", type=int, default=0,
                    help="aim at the N ports after the peer's srflx port (sequential NAT)")
    ap.add_argument("--max-connects", type=int, default=40,
                    help="full-TTL rounds per candidate (1: a single round, no retry)")
    ap.add_argument("--delay", type=float, default=0.0,
                    help="sleep this long before punching (simulates start skew)")
    args = ap.parse_args(argv)
    out: dict = {"name": args.name, "role": args.role}
    t0 = time.monotonic()
    try:
        rv = TcpRendezvous(local_port=args.local_port)
        mapped = args.srflx or rv.learn_mapping(args.stun, args.stun_timeout)
        out.update(mapped=list(mapped), local_port=rv.local_port)
        # the signaling server releases both peers in the same instant; the file
        # swap stands in for it with a start time both sides agree on (the lab's
        # namespaces share one clock), instead of the skew of polling for a file
        start_at = time.time() + START_LEAD
        _write(os.path.join(args.dir, f"{args.name}.json"),
               {"srflx": list(mapped), "local": [list(a) for a in rv.local_candidates()],
                "start_at": start_at})
        peer = _wait_for(os.path.join(args.dir, f"{args.peer}.json"),
                         time.monotonic() + args.wait)
        if peer is None:
            raise StunturnError(f"the peer {args.peer} wrote no candidates")
    except StunturnError as exc:
        out.update(ok=False, stage="setup", reason=getattr(exc, "reason", exc.code),
                   message=str(exc))
        print(json.dumps(out), flush=True)
        return 2
    kinds = args.use.split(",")
    ip, port = peer["srflx"]
    srflx = [(ip, port + i) for i in range(1, args.predict + 1) if port + i < 65536] \
        if args.predict else [(ip, port)]
    cands = ([tuple(a) for a in peer["local"]] if "local" in kinds else []) + \
        (srflx if "srflx" in kinds else [])
    out["candidates"] = [list(c) for c in cands]
    _until(max(start_at, peer.get("start_at", 0.0)) + max(0.0, args.delay))
    t1 = time.monotonic()
    out["start_wall"] = time.time()
    deadline = t1 + args.timeout
    try:
        sock = rv.punch(cands, role=args.role, deadline=deadline, prime_ttl=args.prime_ttl,
                        strategy=args.strategy, max_connects=args.max_connects)
    except PunchError as exc:
        out.update(ok=False, stage="punch", reason=exc.reason, message=exc.message,
                   attempts=exc.attempts, punch_s=round(time.monotonic() - t1, 3))
        print(json.dumps(out), flush=True)
        rv.close()
        return 1
    out.update(connect_s=round(time.monotonic() - t1, 3),
               peer_addr=list(sock.getpeername()), local_addr=list(sock.getsockname()))
    try:
        sent, got = _echo(sock, args.role, args.name, time.monotonic() + 10)
        out.update(ok=got == f"hello from {args.peer}\n".encode(), sent=sent.decode().strip(),
                   got=got.decode(errors="replace").strip(), stage="echo",
                   echo_s=round(time.monotonic() - t1 - out["connect_s"], 3))
    except OSError as exc:
        out.update(ok=False, stage="echo", reason="echo-failed",
                   message=f"{type(exc).__name__}: {exc}")
    finally:
        sock.close()
        rv.close()
    out["total_s"] = round(time.monotonic() - t0, 3)
    print(json.dumps(out), flush=True)
    return 0 if out["ok"] else 1


def run_lab_pair(lab, host_a: str, host_b: str, *, timeout: float,
                 extra_a: list[str] = (), extra_b: list[str] = (),
                 unprivileged: bool = False, stun_port: int = 3478) -> tuple[dict, dict]:
    """Start the lab's server, run the driver in both hosts (a = initiator), return results.

    ``unprivileged`` drops CAP_NET_ADMIN (``setpriv``): no TCP_REPAIR, kernel ISNs.
    Both processes end by themselves (bounded by ``timeout``) or with the lab.
    """
    serve_in_lab(lab)
    with tempfile.TemporaryDirectory(prefix="stunturn-tcp-") as tmp:
        drop = ["setpriv", "--bounding-set", "-net_admin"] if unprivileged else []
        base = drop + [sys.executable, "-m", "stunturn_testkit.tcp_selftest", "--dir", tmp,
                       "--stun", f"{lab.server_ip}:{stun_port}", "--timeout", str(timeout)]
        a, b = run_peers(lab, [(host_a, base + ["--role", "initiator", "--name", "a",
                                                "--peer", "b", *extra_a]),
                               (host_b, base + ["--role", "receiver", "--name", "b",
                                                "--peer", "a", *extra_b])],
                         timeout=timeout + 40, env=env(PYTHONUNBUFFERED="1"))
    return a.outcome(), b.outcome()


if __name__ == "__main__":
    sys.exit(main())
