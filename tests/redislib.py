"""A real ``redis-server`` for tests: a free loopback port, a temporary directory, no
persistence, ended by PID. No fakes: the scripts, pub/sub and TTLs are Redis's own.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time

from testlib import missing, stop_process


def free_tcp_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class RedisServer:
    """``redis-server`` on 127.0.0.1:<port>; ``stop()``/``start()`` keep the port (a restart)."""

    def __init__(self, port: int | None = None, extra: list[str] | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            missing("redis-server is not installed (scripts/setup.sh installs it)")
        self.binary = binary
        self.port = port or free_tcp_port()
        self.extra = list(extra or [])
        self.dir = tempfile.mkdtemp(prefix="stunturn-redis-")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> "RedisServer":
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
             "--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "yes",
             "--enable-debug-command", "local", *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode} (port {self.port} taken?)")
            try:
                if self.command("PING") == b"+PONG":
                    return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not answer PING")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def command(self, *args: str, timeout: float = 5.0) -> bytes:
        """One command in RESP over a fresh connection; the first reply line (+ bulk) raw."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            packed = f"*{len(args)}\r\n".encode() + b"".join(
                f"${len(str(a).encode())}\r\n{a}\r\n".encode() for a in args)
            sock.sendall(packed)
            data = b""
            while b"\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            head, _, rest = data.partition(b"\r\n")
            if head.startswith(b"$") and int(head[1:]) >= 0:
                need = int(head[1:])
                while len(rest) < need:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    rest += chunk
                return rest[:need]
            return head

    def keys(self, pattern: str = "*") -> int:
        """How many keys match ``pattern`` (a bounded SCAN would be overkill for tests)."""
        reply = self.command("EVAL", "return #redis.call('KEYS', ARGV[1])", "0", pattern)
        return int(reply[1:])
