"""The probe's own SYN resends (:func:`stunturn_diag.netio.connect_resending`) over real
kernel TCP in the lab: the server's namespace drops exactly the SYN or the SYN-ACK we
choose (nftables), and the connect must still come through, from the right port, with
the resends counted.

- A lost SYN: resent from the same local port (the NAT's mapping is the first SYN's).
- A lost SYN-ACK: the server holds a half-open connection for the first SYN, so a
  resend from the same port cannot get through; with ``fresh_port_after=2`` the third
  SYN comes from another port and connects.
"""

from __future__ import annotations

import json
import sys

import pytest

from stunturn_diag.lab import Lab, LabSpec
from stunturn_diag.lab.pair_runner import serve_in_lab

pytestmark = pytest.mark.netns

STUN_PORT = 3478
#: run on the LAN host: one STUN-over-TCP exchange with our resends; prints a JSON line
SNIPPET = """
import json, sys
from stunturn_diag.probe.tcp_sockets import stun_tcp_from
server, local_port, fresh = sys.argv[1], int(sys.argv[2]), sys.argv[3]
x = stun_tcp_from(("0.0.0.0", local_port), (server, %d), 5.0, 0.05,
                  fresh_port_after=None if fresh == "none" else int(fresh))
print(json.dumps({"local_port": x.sock.getsockname()[1], "mapped": list(x.mapped), "resends": x.resends}))
x.sock.close()
""" % STUN_PORT


def _drop(lab: Lab, rule: str) -> None:
    """One nftables rule in the server's namespace (a fresh table: its numgen starts at 0)."""
    lab.exec("srv", ["nft", "delete", "table", "inet", "synloss"])
    script = ("table inet synloss {\n chain input { type filter hook input priority 0; }\n"
              " chain output { type filter hook output priority 0; }\n}\n" + rule + "\n")
    lab.exec("srv", ["nft", "-f", "-"], input=script, check=True)


def _connect(lab: Lab, local_port: int, fresh: str) -> dict:
    r = lab.exec("a1", [sys.executable, "-c", SNIPPET, lab.server_ip, str(local_port), fresh], timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def lab():
    with Lab(LabSpec.simple("full-cone", None)) as lab:
        serve_in_lab(lab)
        yield lab


def test_a_lost_syn_is_resent_from_the_same_port(lab):
    # the first SYN to the STUN port is dropped, the next one passes (numgen counts 0, 1, ...)
    _drop(lab, f"add rule inet synloss input tcp dport {STUN_PORT} tcp flags & (syn | ack) == syn "
               "numgen inc mod 1000 == 0 drop")
    got = _connect(lab, 40111, "none")
    assert got["resends"] == 1, got
    assert got["local_port"] == 40111 and got["mapped"][1] == 40111, got  # full-cone keeps the port


def test_a_lost_syn_ack_moves_to_a_fresh_port(lab):
    # every SYN-ACK toward local port 40222 is dropped (the NAT preserves ports: dport 40222)
    _drop(lab, f"add rule inet synloss output tcp sport {STUN_PORT} tcp dport 40222 "
               "tcp flags & (syn | ack) == syn | ack drop")
    got = _connect(lab, 40222, "2")
    assert got["resends"] >= 2, got
    assert got["local_port"] != 40222 and got["mapped"][1] == got["local_port"], got


def test_without_loss_nothing_is_resent(lab):
    _drop(lab, "")
    got = _connect(lab, 40333, "2")
    assert got == {"local_port": 40333, "mapped": [got["mapped"][0], 40333], "resends": 0}
