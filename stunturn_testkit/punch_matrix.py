"""Our punch as a ``lab matrix`` program: the server and peer command templates the
netns punch matrices (``netns_tests/test_punch_*_matrix.py``) and
``benchmarks/bench_paths.py --matrix`` run.

The server is ``stunturn-diag serve`` offering the lab's coturn (``--relay``: the
``{turn_*}`` placeholders; its secret reaches serve through the environment, not argv);
the peers are :mod:`stunturn_diag.punch.labpeer` claiming their site's ground truth
(``--nat-type {type_a}``), the key from the runner's ``STUNTURN_LAB_KEY``.
"""

from __future__ import annotations

import sys

PY = sys.executable
SERVE = (f"{PY} -m stunturn_diag serve {{server_ip}}:8080 --alt-ip {{alt_ip}} "
         "--wait-timeout 20 --json --log-level WARNING")
RELAY_SERVE = ('STUNTURN_TURN_SECRET="$STUNTURN_LAB_TURN_SECRET" ' + SERVE +
               " --turn-server {turn_server} --turn-realm {turn_realm} --turn-transports udp,tcp")


def peer(role: str, punch_timeout: float, wait: float, protocol: str = "udp") -> str:
    """The peer command of ``role`` (initiator = site a, receiver = site b)."""
    own_type = "{type_a}" if role == "initiator" else "{type_b}"
    return (f"{PY} -m stunturn_diag.punch.labpeer --role {role} --url http://{{server_ip}}:8080 "
            f"--target {{peer_public_ip}} --nat-type '{own_type}' --protocol {protocol} "
            f"--punch-timeout {punch_timeout} --wait {wait}")


def plan(pairs: list[tuple[str, str]], *, relay: bool = True, protocol: str = "udp",
         punch_timeout: float = 6.0, waits: tuple[float, float] = (15.0, 15.0),
         jobs: int = 1, timeout: float = 60) -> dict:
    """A ``lab matrix`` plan (the ``--plan`` file's table) over ``(type_a, type_b)`` pairs."""
    return {"pairs": [{"sites": {"a": a, "b": b}} for a, b in pairs], "jobs": jobs,
            "relay": relay, "protocol": protocol, "timeout": timeout,
            "server": RELAY_SERVE if relay else SERVE, "server_ready": "line",
            "a": peer("initiator", punch_timeout, waits[0], protocol),
            "b": peer("receiver", punch_timeout, waits[1], protocol)}
