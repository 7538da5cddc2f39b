"""One STUN Binding request over UDP from a lab host; exit status 0 when it was answered.

    python3 -m stunturn_diag.lab.stun_ping IP PORT [--timeout S]

Run through :func:`stunturn_diag.lab.pair_runner.stun_answers` (``start_turn`` polls coturn
with it until it answers). Exit status 1: no answer within ``--timeout`` (default 0.3 s) or an ICMP
error; one try, nothing printed.
"""

from __future__ import annotations

import argparse
import socket
import sys

from ..sansio.stun import encode
from ..stun_requests import fresh_binding_request


def answers(ip: str, port: int, timeout: float) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(encode(fresh_binding_request()), (ip, port))
            sock.recv(2048)
        except OSError:          # timeout, or ECONNREFUSED while it starts
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m stunturn_diag.lab.stun_ping")
    parser.add_argument("ip")
    parser.add_argument("port", type=int)
    parser.add_argument("--timeout", type=float, default=0.3)
    args = parser.parse_args(argv)
    return 0 if answers(args.ip, args.port, args.timeout) else 1


if __name__ == "__main__":
    sys.exit(main())
