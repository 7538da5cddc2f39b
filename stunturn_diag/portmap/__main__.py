"""``python3 -m stunturn_diag.portmap map METHOD PROTO PORT [--lifetime S] [--listen S]``

Binds PROTO (udp) PORT on all addresses, maps it on the gateway with METHOD (pcp,
nat-pmp, upnp), prints the mapping as one JSON line, then for ``--listen`` seconds
prints one JSON line per datagram received (``{"received": text, "from": ip:port}``),
deletes the mapping and prints ``{"deleted": bool}``. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import sys
import time

from .mapper import METHODS, create, delete


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m stunturn_diag.portmap")
    sub = ap.add_subparsers(dest="cmd", required=True)
    mp = sub.add_parser("map")
    mp.add_argument("method", choices=METHODS)
    mp.add_argument("protocol", choices=("udp",))
    mp.add_argument("port", type=int)
    mp.add_argument("--lifetime", type=int, default=120)
    mp.add_argument("--listen", type=float, default=0.0, help="seconds to print arrivals (<= 60)")
    args = ap.parse_args(argv)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", args.port))
    m = create(args.method, args.protocol, args.port, lifetime=args.lifetime)
    print(json.dumps(m.as_dict()), flush=True)
    end = time.monotonic() + min(60.0, max(0.0, args.listen))
    while m.ok and time.monotonic() < end:
        readable, _, _ = select.select([sock], [], [], max(0.0, end - time.monotonic()))
        if readable:
            data, src = sock.recvfrom(2048)
            print(json.dumps({"received": data.decode("utf-8", "replace"),
                              "from": f"{src[0]}:{src[1]}"}), flush=True)
            if data == b"stop":
                break
    if m.ok:
        print(json.dumps({"deleted": delete(m)}), flush=True)
    sock.close()
    return 0 if m.ok else 1


if __name__ == "__main__":
    sys.exit(main())
