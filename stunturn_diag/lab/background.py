"""Background traffic for a lab host: new UDP flows at a steady rate (stdlib only).

``python3 -m stunturn_diag.lab.background --to IP:PORT --rate R --duration S``

Each flow is a fresh UDP socket (a new local port) sending one datagram to
``IP:PORT``: behind a NAT every one is a new conntrack entry and so a new mapping,
which moves a sequential NAT's port counter on by one, as the other hosts, DNS
look-ups and check-ins behind a real NAT do. Paced on the monotonic clock, bounded
by ``--duration`` and by ``rate * duration`` flows; the lab runner starts it for
``SiteSpec.background_flows_per_s`` and ends it at teardown.

Slots missed by up to :data:`CATCH_UP` (a late wake-up on a busy machine) are still
sent, older ones skipped: at 500 flows/s a slot is 2 ms, less than a wake-up's delay
under load; skipping every slot missed by one interval gave 361-481 flows/s on the
2-core machine at load 10-11 (6 readings over 0.5 s), with the catch-up 470-490; a
longer stall never turns into a burst.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from stunturn_diag.sansio.netaddr import parse_hostport

#: the longest run and the most flows one process sends, whatever it is asked
MAX_DURATION = 3600.0
MAX_FLOWS = 1_000_000
#: seconds a slot may be late and still be sent
CATCH_UP = 0.02


def _endpoint(text: str) -> tuple[str, int]:
    return parse_hostport(text)


def run(target: tuple[str, int], rate: float, duration: float) -> int:
    """Send the flows; returns how many were sent."""
    if rate <= 0:
        return 0
    duration = min(duration, MAX_DURATION)
    count = min(int(rate * duration), MAX_FLOWS)
    interval = 1.0 / rate
    start = time.monotonic()
    sent = 0
    for i in range(count):
        due = start + i * interval
        now = time.monotonic()
        if now - start >= duration:
            break
        if due > now:
            time.sleep(due - now)
        elif now - due > max(interval, CATCH_UP):
            continue            # far behind schedule: skip this slot instead of a burst
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.sendto(b"stunturn-lab background flow", target)
            sent += 1
        except OSError:
            pass                # e.g. ICMP unreachable from an earlier flow; go on
        finally:
            sock.close()
    return sent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m stunturn_diag.lab.background",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--to", type=_endpoint, required=True, help="IP:PORT the flows go to")
    ap.add_argument("--rate", type=float, required=True, help="new flows per second")
    ap.add_argument("--duration", type=float, default=MAX_DURATION, help="seconds at most")
    args = ap.parse_args(argv)
    print(run(args.to, args.rate, args.duration), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
