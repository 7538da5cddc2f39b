"""One peer of ``lab demo``'s punch: pair, punch, then swap a message through the channel.

Runs inside a lab host::

    STUNTURN_KEY=... python3 -m stunturn_diag.lab.demo_peer URL --message TEXT \
        [--target-ip IP] [--protocol udp|tcp] [--wait S] [--nat-profile FILE]

``--target-ip`` makes it the initiator, else it is the receiver; ``--nat-profile`` is
this host's ``probe --json`` report, shared with the peer as in ``punch``.
Prints one JSON line: :meth:`PunchResult.as_dict` (or the failure, as ``punch --json``
prints it) plus ``sent``, ``received`` (the peer's message as it came out of the
punched channel, or null) and ``exchange_error``. Exit status 0 only when the punch
succeeded and the peer's message arrived. Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time

from ..errors import StunturnError

EXCHANGE_TIMEOUT = 5.0     # seconds to swap the messages once the channel is up
RESEND = 0.1               # UDP: resend our message this often until the peer confirms
MAX_MESSAGE = 512


def _udp_exchange(channel, message: str, timeout: float) -> str | None:
    """Swap ``message`` over a UdpChannel (datagrams may be lost: resend until the peer
    confirms, bounded); the peer's message or None."""
    received: str | None = None
    confirmed = False
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / RESEND) + 1):
        if (received is not None and confirmed) or time.monotonic() >= deadline:
            break
        channel.send(json.dumps({"msg": message, "got": received is not None}).encode())
        resend_at = min(deadline, time.monotonic() + RESEND)
        while (left := resend_at - time.monotonic()) > 0:
            try:
                data = channel.recv(timeout=left)
            except TimeoutError:
                break
            if not data:                      # the peer ended the channel
                return received
            try:
                frame = json.loads(data)
                received = received if received is not None else str(frame["msg"])
                confirmed = confirmed or frame.get("got") is True
            except (ValueError, KeyError, TypeError):
                continue
    if received is not None:                  # tell the peer once more that it arrived
        for _ in range(3):
            try:
                channel.send(json.dumps({"msg": message, "got": True}).encode())
            except (StunturnError, OSError):
                break
    return received


def _tcp_exchange(sock: socket.socket, message: str, timeout: float) -> str | None:
    """Swap one newline-terminated ``message`` over a connected TCP socket."""
    sock.settimeout(timeout)
    sock.sendall(message.encode() + b"\n")
    buf = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in buf and len(buf) <= MAX_MESSAGE and time.monotonic() < deadline:
        chunk = sock.recv(MAX_MESSAGE)
        if not chunk:
            break
        buf += chunk
    return buf.partition(b"\n")[0].decode(errors="replace") if b"\n" in buf else None


def run(url: str, key: str, message: str, *, target_ip: str | None, protocol: str,
        wait: float, profile: dict | None) -> dict:
    """Punch as initiator (``target_ip``) or receiver, then exchange ``message``."""
    from ..punch import api

    opts = api.PunchOptions(protocol=protocol, nat_profile=profile, peer_timeout=5.0,
                            wait=0.0 if target_ip else wait, wait_interval=0.2,
                            pair_timeout=wait if target_ip else None)
    try:
        if target_ip:
            result = api.initiate(url, key, target_ip, protocol=protocol, options=opts)
        else:
            result = api.receive(url, key, protocol=protocol, options=opts)
    except StunturnError as exc:
        out = {"ok": False, "reason": getattr(exc, "reason", None) or exc.code,
               "error": exc.code, "message": str(exc),
               "attempts": getattr(exc, "attempts", [])}
        out.update(getattr(exc, "context", {}) or {})
        return out | {"sent": None, "received": None, "exchange_error": None}
    out = result.as_dict() | {"sent": message, "received": None, "exchange_error": None}
    try:
        exchange = _udp_exchange if result.protocol == "udp" else _tcp_exchange
        out["received"] = exchange(result.connection, message, EXCHANGE_TIMEOUT)
        if out["received"] is None:
            out["exchange_error"] = f"no message from the peer within {EXCHANGE_TIMEOUT:g}s"
    except (StunturnError, OSError) as exc:
        out["exchange_error"] = str(exc) or type(exc).__name__
    finally:
        result.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m stunturn_diag.lab.demo_peer")
    parser.add_argument("url")
    parser.add_argument("--message", required=True)
    parser.add_argument("--target-ip")
    parser.add_argument("--protocol", choices=["udp", "tcp"], default="udp")
    parser.add_argument("--wait", type=float, default=30.0)
    parser.add_argument("--nat-profile")
    args = parser.parse_args(argv)
    key = os.environ.get("STUNTURN_KEY", "")
    if len(args.message.encode()) > MAX_MESSAGE or "\n" in args.message:
        parser.error(f"--message: one line of at most {MAX_MESSAGE} bytes")
    profile = None
    if args.nat_profile:
        try:
            with open(args.nat_profile, encoding="utf-8") as fh:
                profile = json.load(fh)
        except (OSError, ValueError) as exc:
            parser.error(f"--nat-profile: {exc}")
    out = run(args.url, key, args.message, target_ip=args.target_ip,
              protocol=args.protocol, wait=min(args.wait, 300.0),
              profile=profile if isinstance(profile, dict) else None)
    print(json.dumps(out, sort_keys=True), flush=True)
    return 0 if out["ok"] and out["received"] is not None else 1


if __name__ == "__main__":
    sys.exit(main())
