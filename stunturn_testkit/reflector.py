"""A tiny "echo my source address" server for the lab's server host (stdlib only).

``python3 -m stunturn_testkit.reflector --udp IP:PORT ... --tcp IP:PORT ... [--lifetime S]``

UDP: a datagram carrying JSON ``{"id": x, "via": k}`` is answered from bound socket
number ``k`` (default: the receiving one) with ``{"id", "mapped": [ip, port], "by":
[ip, port]}`` -- like a STUN Binding with CHANGE-REQUEST (RFC 5780 section 4.4), so a
client learns its mapped address and which sources its NAT lets in. Malformed
datagrams are dropped and counted.

TCP: on a connection, reads one JSON line ``{"connect_back": {"from": ip, "port"?: n}}``
(optional), writes ``{"mapped": [ip, port]}`` and, when asked, opens a new TCP
connection from ``from`` to the mapped address and reports ``{"connect_back":
"connected" | "refused" | "icmp" | "timeout" | "error"}`` (RFC 5382 section 7.1
unsolicited SYN; "refused" = a TCP RST, "icmp" = an ICMP error, told apart through
the socket's ``IP_RECVERR`` error queue since connect() fails alike for both).

Prints ``{"ready": true}`` once bound; exits by itself after ``--lifetime`` seconds.
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import sys
import threading
import time
from stunturn_diag.sansio.netaddr import parse_hostport, parse_queued_error

CONNECT_BACK_TIMEOUT = 1.5
IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)
MAX_TCP_THREADS = 64


def _endpoint(text: str) -> tuple[str, int]:
    return parse_hostport(text)


def connect_result(source_ip: str, target: tuple[str, int], source_port: int = 0,
                   timeout: float = CONNECT_BACK_TIMEOUT) -> str:
    """Try one TCP connection; name its outcome."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    sock.settimeout(timeout)
    try:
        sock.bind((source_ip, source_port))
        sock.connect(target)
        return "connected"
    except ConnectionRefusedError:
        return "icmp" if _icmp_queued(sock) else "refused"
    except (socket.timeout, TimeoutError):
        return "timeout"
    except OSError:
        return "error"
    finally:
        sock.close()


def _icmp_queued(sock: socket.socket) -> bool:
    """True when the socket's error queue holds an ICMP error (struct sock_extended_err
    with ee_origin SO_EE_ORIGIN_ICMP); a TCP RST queues nothing."""
    try:
        _, ancillary, _, _ = sock.recvmsg(1, 512, MSG_ERRQUEUE | socket.MSG_DONTWAIT)
    except OSError:
        return False
    return any((err := parse_queued_error(data)) is not None and err.is_icmp
               for _level, _type, data in ancillary)


def _serve_tcp(conn: socket.socket, peer: tuple[str, int]) -> None:
    try:
        conn.settimeout(3)
        data = b""
        while b"\n" not in data and len(data) < 4096:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        try:
            request = json.loads(data.split(b"\n", 1)[0] or b"{}")
        except ValueError:
            request = {}
        conn.sendall(json.dumps({"mapped": list(peer)}).encode() + b"\n")
        back = request.get("connect_back") if isinstance(request, dict) else None
        if isinstance(back, dict) and isinstance(back.get("from"), str):
            result = connect_result(back["from"], peer, int(back.get("port", 0)))
            conn.sendall(json.dumps({"connect_back": result}).encode() + b"\n")
    except OSError:
        pass
    finally:
        conn.close()


def serve(udp: list[tuple[str, int]], tcp: list[tuple[str, int]], lifetime: float) -> dict:
    """Run until ``lifetime`` seconds pass; returns counters."""
    sel = selectors.DefaultSelector()
    udp_socks = []
    for ep in udp:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(ep)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, "udp")
        udp_socks.append(s)
    for ep in tcp:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(ep)
        s.listen(64)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, "tcp")
    print(json.dumps({"ready": True}), flush=True)
    stats = {"udp": 0, "tcp": 0, "dropped": 0}
    deadline = time.monotonic() + lifetime
    while (left := deadline - time.monotonic()) > 0:
        for key, _ in sel.select(timeout=min(left, 0.5)):
            sock = key.fileobj
            if key.data == "tcp":
                try:
                    conn, peer = sock.accept()
                except OSError:
                    continue
                stats["tcp"] += 1
                if threading.active_count() > MAX_TCP_THREADS:
                    conn.close()
                    stats["dropped"] += 1
                    continue
                threading.Thread(target=_serve_tcp, args=(conn, peer), daemon=True).start()
                continue
            try:
                data, peer = sock.recvfrom(2048)
            except OSError:
                continue
            try:
                request = json.loads(data)
                via = request.get("via")
                out = udp_socks[udp_socks.index(sock) if via is None else int(via)]
                reply = {"id": request.get("id"), "mapped": list(peer),
                         "by": list(out.getsockname())}
                out.sendto(json.dumps(reply).encode(), peer)
                stats["udp"] += 1
            except (ValueError, TypeError, AttributeError, IndexError, OSError):
                stats["dropped"] += 1
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m stunturn_testkit.reflector")
    parser.add_argument("--udp", action="append", default=[], type=_endpoint)
    parser.add_argument("--tcp", action="append", default=[], type=_endpoint)
    parser.add_argument("--lifetime", type=float, default=600.0)
    args = parser.parse_args(argv)
    stats = serve(args.udp, args.tcp, min(args.lifetime, 3600.0))
    print(json.dumps(stats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
