"""One peer of a lab punch: punch through the library API, exchange data both ways, print
the JSON result (one line) and exit 0 only when the channel opened and data went both ways.

Used by :func:`stunturn_diag.lab.pair_runner.run_pair` (``lab demo --paths``, the netns
tests, the benchmarks) and, as a ``lab matrix`` peer command, by the suite's punch matrix
(``netns_tests/test_punch_udp_matrix.py``)::

    python -m stunturn_diag.punch.labpeer --role initiator --url http://{server_ip}:8080 \\
        --target {peer_public_ip} --nat-type {type_a}

The key is read from the environment (``STUNTURN_KEY``, else ``lab run``/``lab
matrix``'s ``STUNTURN_LAB_KEY``), never from argv: it stays out of ``ps``. The NAT
profile the peer claims (as after a probe) is ``--profile JSON`` or the catalogue's
ground truth of ``--nat-type TOKEN``; none: the punch decides without it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROLES = {"initiator": "initiator", "receiver": "receiver", "a": "initiator", "b": "receiver"}


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m stunturn_diag.punch.labpeer")
    ap.add_argument("--role", required=True, choices=sorted(ROLES),
                    help="initiator (a) or receiver (b)")
    ap.add_argument("--url", required=True, help="the signaling server")
    ap.add_argument("--target", default="", help="the peer's public IP (initiator)")
    ap.add_argument("--profile", default=None, help="this peer's NAT profile as JSON")
    ap.add_argument("--nat-type", default=None,
                    help="claim this catalogue type's ground truth (TYPE[+flag...])")
    ap.add_argument("--protocol", choices=["udp", "tcp"], default="udp")
    ap.add_argument("--punch-timeout", type=float, default=5.0)
    ap.add_argument("--prime-ttl", type=int, default=2)
    ap.add_argument("--birthday", action="store_true")
    ap.add_argument("--wait", type=float, default=15.0,
                    help="initiator: pairing timeout; receiver: how long to wait")
    ap.add_argument("--linger", type=float, default=0.0,
                    help="UDP: exchange data at least this long after the channel opened")
    ap.add_argument("--delay", type=float, default=0.0, help="start this many seconds late")
    return ap.parse_args(argv)


def _profile(args: argparse.Namespace) -> dict | None:
    if args.profile:
        return json.loads(args.profile)
    if args.nat_type:
        from stunturn_diag.sansio.lab.spec import SiteSpec

        return SiteSpec.from_dict({"nat": args.nat_type}).expected
    return None


def _exchange_udp(ch, role: str, linger: float) -> dict:
    from ..errors import StunturnError

    got = acked = False
    tail = 0
    unexpected: list[str] = []
    out: dict = {}
    t_open = time.monotonic()
    for _ in range(400):
        try:
            ch.send(f"data:{role}:{'ack' if got else '-'}".encode())
        except StunturnError as e:          # the peer is gone: a result, not a crash
            out["data_error"] = str(e)
            break
        if got and acked:
            tail += 1
            if tail > 5 and time.monotonic() - t_open > linger:
                break
        end = time.monotonic() + 0.03
        while time.monotonic() < end:
            try:
                m = ch.recv(timeout=max(0.0, end - time.monotonic())).decode()
            except TimeoutError:
                break
            except StunturnError as e:
                out["data_error"] = str(e)
                break
            if m.startswith("data:") and m.split(":")[1] != role:
                got = True
                acked = acked or m.endswith(":ack")
            elif m:
                unexpected.append(m[:40])
    out.update(got=got, acked=acked, unexpected=unexpected, stats=ch.stats())
    time.sleep(0.1)
    return out


def _exchange_tcp(ch, role: str) -> dict:
    ch.settimeout(10)
    ch.sendall(f"data:{role}\n".encode())
    line = ch.makefile("rb").readline().decode().strip()
    return {"got": line.startswith("data:") and line != f"data:{role}", "acked": bool(line),
            "line": line}


def main(argv: list[str] | None = None) -> int:
    from ..errors import StunturnError
    from . import api

    args = _args(argv)
    role = ROLES[args.role]
    key = os.environ.get("STUNTURN_KEY") or os.environ.get("STUNTURN_LAB_KEY")
    if not key:
        print(json.dumps({"ok": False, "reason": "no-key",
                          "message": "set STUNTURN_KEY or STUNTURN_LAB_KEY"}))
        return 2
    time.sleep(args.delay)
    opts = dict(punch_timeout=args.punch_timeout, prime_ttl=args.prime_ttl or None,
                birthday=args.birthday, peer_timeout=5.0, nat_profile=_profile(args))
    t0 = time.monotonic()
    try:
        if role == "initiator":
            r = api.initiate(args.url, key, args.target, protocol=args.protocol,
                             pair_timeout=args.wait, **opts)
        else:
            r = api.receive(args.url, key, protocol=args.protocol, wait=args.wait,
                            wait_interval=0.05, **opts)
    except StunturnError as e:
        out = {"ok": False, "reason": getattr(e, "reason", None) or e.code, "message": str(e),
               "attempts": getattr(e, "attempts", []), "elapsed": time.monotonic() - t0}
        out.update(getattr(e, "context", {}) or {})
        print(json.dumps(out))
        return 1
    out = r.as_dict()
    if role == "initiator":
        out["target"] = args.target
    ch = r.connection
    out.update(_exchange_tcp(ch, role) if args.protocol == "tcp"
               else _exchange_udp(ch, role, args.linger))
    out["elapsed"] = time.monotonic() - t0
    ch.close()
    print(json.dumps(out))
    return 0 if out.get("ok") and out["got"] and out["acked"] else 1


if __name__ == "__main__":
    sys.exit(main())
