"""`stunturn-diag punch` as an ordinary user in the lab (uid 65534, no capabilities).

Two plain masquerades (the conntrack collision case, which needs the low-TTL
prime): setting IP_TTL needs no privilege; over TCP the runner falls back to
kernel ISNs without CAP_NET_ADMIN. Both sides relay a line each way.
"""

from __future__ import annotations

import shutil

import pytest

from stunturn_testkit.unprivileged import punch_two_masquerades

pytestmark = pytest.mark.netns


@pytest.mark.parametrize("protocol", ["udp", "tcp"])
def test_unprivileged_peers_punch_two_masquerades(protocol):
    """One attempt each, no retry. TCP runs with kernel ISNs (no CAP_NET_ADMIN, no
    listener filter): the priming socket is kept on the 4-tuple so that the peer's SYN
    finds it, and only the initiator sends a fresh full-TTL SYN
    (``tcp_machine.KERNEL_RECEIVER_KEEPS``); benchmarks/bench_punch_kernel_isn.py counts
    the rate with the other core busy. Both sides relay a line; a failure would be a
    one-line error, never a traceback."""
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux)")
    run = punch_two_masquerades(protocol)
    assert "Traceback" not in run.i_err + run.r_err, (run.i_err, run.r_err)
    assert run.ok, run.reasons()
    assert run.i_out == "hello from b1\n" and run.r_out == "hello from a1\n"
    assert f"over {protocol}" in run.i_err and "authenticated" in run.r_err
