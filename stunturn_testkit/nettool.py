"""Client side of the lab reflector, for lab hosts (stdlib only; prints one JSON line).

``python3 -m stunturn_testkit.nettool udp [--local-port P] --ask IP:PORT[/K] ...``
    one socket; each ``--ask`` asks the reflector at IP:PORT to answer from its socket
    number K (default: the socket asked) and reports the mapped address or null.
``... alloc --server IP:PORT --n N [--base P]``  N fresh sockets one after another: local port and
    mapped port of each (RFC 4787 section 4.2.1 port allocation).
``... hairpin --server IP:PORT``  RFC 4787 section 6: socket 2 sends to socket 1's mapping.
``... count --server IP:PORT --count N``  N requests, how many answers come back.
``... tcp --server IP:PORT [--local-port P] [--connect-back-from IP]``  mapped address
    of a TCP connection; optionally the server then connects to that mapping from IP
    while we listen on the same local port (RFC 5382 section 7.1).
``... poke --bind IP:PORT --to IP:PORT --wait S``  send one unsolicited datagram, then
    answer the first datagram that arrives within S seconds with its source address.
Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from stunturn_diag.sansio.netaddr import parse_hostport

WAIT = 0.5      # seconds per try
TRIES = 3
CONNECT_BACK_WAIT = 5.0   # the reflector's connect-back gives up after 1.5 s


def _endpoint(text: str) -> tuple[str, int]:
    return parse_hostport(text)


def _ask(sock: socket.socket, server, via, ident, tries=TRIES, wait=WAIT):
    """Send a request up to ``tries`` times; the reply's mapped/by, or None."""
    msg = json.dumps({"id": ident, "via": via}).encode()
    for _ in range(tries):
        sock.sendto(msg, server)
        for data, _ in _datagrams(sock, time.monotonic() + wait):
            try:
                reply = json.loads(data)
            except ValueError:
                continue
            if isinstance(reply, dict) and reply.get("id") == ident:
                return {"mapped": reply.get("mapped"), "by": reply.get("by")}
    return None


def _datagrams(sock: socket.socket, deadline: float):
    """Yield ``(data, source)`` for datagrams arriving before ``deadline`` (monotonic);
    ICMP errors queued by earlier sends are skipped. At most 256 datagrams."""
    for _ in range(256):
        left = deadline - time.monotonic()
        if left <= 0:
            return
        sock.settimeout(left)
        try:
            yield sock.recvfrom(2048)
        except (socket.timeout, TimeoutError):
            return
        except OSError:           # ICMP port unreachable from a previous send
            continue


def _udp_socket(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    return sock


def _ask_spec(text: str) -> tuple[tuple[str, int], int | None]:
    endpoint, _, via = text.partition("/")
    return _endpoint(endpoint), (int(via) if via else None)


def cmd_udp(args) -> dict:
    sock = _udp_socket(args.local_port)
    results = []
    for n, (server, via) in enumerate(args.ask):
        results.append(_ask(sock, server, via, f"q{n}", tries=args.tries))
    return {"local_port": sock.getsockname()[1], "results": results}


def cmd_alloc(args) -> dict:
    # every socket stays open until the end: a closed socket's local port can be handed
    # out again, and the same 5-tuple then finds its old conntrack entry (and mapping)
    pairs, socks = [], []
    try:
        for n in range(args.n):
            sock = _udp_socket(args.base + n if args.base else 0)
            socks.append(sock)
            answer = _ask(sock, args.server, None, f"a{n}")
            pairs.append([sock.getsockname()[1], answer["mapped"][1] if answer else None])
    finally:
        for sock in socks:
            sock.close()
    return {"ports": pairs}


def cmd_hairpin(args) -> dict:
    s1, s2 = _udp_socket(), _udp_socket()
    m1, m2 = _ask(s1, args.server, None, "m1"), _ask(s2, args.server, None, "m2")
    if m1 is None or m2 is None:
        return {"hairpin": None, "error": "no mapping"}
    target = tuple(m1["mapped"])
    for _ in range(TRIES):
        s2.sendto(b"hairpin", target)
        s1.settimeout(WAIT)
        try:
            data, source = s1.recvfrom(2048)
        except (socket.timeout, TimeoutError, OSError):
            continue
        if data == b"hairpin":
            return {"hairpin": True, "source": list(source), "m1": m1["mapped"],
                    "m2": m2["mapped"]}
    return {"hairpin": False, "m1": m1["mapped"], "m2": m2["mapped"]}


def cmd_count(args) -> dict:
    sock = _udp_socket()
    got: set[int] = set()
    sock.settimeout(0.005)
    for i in range(args.count):
        sock.sendto(json.dumps({"id": i}).encode(), args.server)
        _drain(sock, got)
    # stragglers: stop 1 s after the last answer, 5 s at most
    hard_stop = time.monotonic() + 5.0
    quiet_until = time.monotonic() + 1.0
    while len(got) < args.count and time.monotonic() < min(quiet_until, hard_stop):
        before = len(got)
        _drain(sock, got)
        if len(got) > before:
            quiet_until = time.monotonic() + 1.0
    return {"sent": args.count, "received": len(got)}


def _drain(sock: socket.socket, got: set[int]) -> None:
    for _ in range(64):
        try:
            data, _ = sock.recvfrom(2048)
        except (socket.timeout, TimeoutError, BlockingIOError):
            return
        except OSError:
            continue
        try:
            got.add(int(json.loads(data)["id"]))
        except (ValueError, KeyError, TypeError):
            pass


def _line(conn: socket.socket, buf: bytearray) -> dict | None:
    while b"\n" not in buf:
        chunk = conn.recv(4096)
        if not chunk:
            return None
        buf += chunk
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return json.loads(line)


def cmd_tcp(args) -> dict:
    listener = None
    conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    conn.bind(("0.0.0.0", args.local_port))
    port = conn.getsockname()[1]
    if args.connect_back_from:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind(("0.0.0.0", port))
        listener.listen(4)
    conn.settimeout(3)
    try:
        conn.connect(args.server)
    except OSError as exc:
        return {"local_port": port, "mapped": None, "error": type(exc).__name__}
    request = {}
    if args.connect_back_from:
        request["connect_back"] = {"from": args.connect_back_from}
    conn.sendall(json.dumps(request).encode() + b"\n")
    buf = bytearray()
    out = {"local_port": port, "mapped": (_line(conn, buf) or {}).get("mapped")}
    if listener is not None:
        conn.settimeout(CONNECT_BACK_WAIT)
        try:
            out["connect_back"] = (_line(conn, buf) or {}).get("connect_back")
        except (OSError, ValueError):
            out["connect_back"] = None
        listener.settimeout(0.2)
        try:
            accepted, _ = listener.accept()
            accepted.close()
            out["accepted"] = True
        except (socket.timeout, TimeoutError, OSError):
            out["accepted"] = False
    conn.close()
    return out


def cmd_poke(args) -> dict:
    sock = _udp_socket_bound(args.bind)
    sock.sendto(b"poke", args.to)
    print(json.dumps({"sent": True}), flush=True)
    for data, source in _datagrams(sock, time.monotonic() + args.wait):
        try:
            ident = json.loads(data).get("id")
        except (ValueError, AttributeError):
            ident = None
        sock.sendto(json.dumps({"id": ident, "mapped": list(source),
                                "by": list(args.bind)}).encode(), source)
        return {"from": list(source)}
    return {"from": None}


def _udp_socket_bound(ep) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(ep)
    return sock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m stunturn_testkit.nettool")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("udp")
    p.add_argument("--ask", type=_ask_spec, action="append", required=True)
    p.add_argument("--local-port", type=int, default=0)
    p.add_argument("--tries", type=int, default=TRIES)
    p = sub.add_parser("alloc")
    p.add_argument("--server", type=_endpoint, required=True)
    p.add_argument("--n", type=int, default=5)
    p.add_argument("--base", type=int, default=0, help="local ports base, base+1, ...")
    p = sub.add_parser("hairpin")
    p.add_argument("--server", type=_endpoint, required=True)
    p = sub.add_parser("count")
    p.add_argument("--server", type=_endpoint, required=True)
    p.add_argument("--count", type=int, default=200)
    p = sub.add_parser("tcp")
    p.add_argument("--server", type=_endpoint, required=True)
    p.add_argument("--local-port", type=int, default=0)
    p.add_argument("--connect-back-from")
    p = sub.add_parser("poke")
    p.add_argument("--bind", type=_endpoint, required=True)
    p.add_argument("--to", type=_endpoint, required=True)
    p.add_argument("--wait", type=float, default=5.0)
    args = parser.parse_args(argv)
    if getattr(args, "count", 1) > 10000 or getattr(args, "tries", 1) > 20 \
            or getattr(args, "n", 1) > 100:
        parser.error("--count <= 10000, --tries <= 20, --n <= 100")
    handler = {"udp": cmd_udp, "alloc": cmd_alloc, "hairpin": cmd_hairpin, "count": cmd_count, "tcp": cmd_tcp,
               "poke": cmd_poke}[args.cmd]
    print(json.dumps(handler(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
