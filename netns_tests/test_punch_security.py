"""A third party on the path cannot take over a punched hole or inject data.

The attacker sits on the lab's core router (``inet``): it sees every packet between
the sites and spoofs packets with the genuine peers' addresses using Scapy. It
knows all addresses but not the access key.
"""

from __future__ import annotations

import os
import json
import sys

import pytest

from stunturn_diag.lab import Lab, LabSpec
from stunturn_diag.lab.pair_runner import run_pair, serve_in_lab

pytestmark = pytest.mark.netns

#: sniff our datagrams on every interface of the router; answer each with forgeries.
#: mode "forge": tampered/truncated handshake messages and tampered/replayed frames;
#: mode "pake": a fake peer running the real handshake with a guessed key (one online guess)
ATTACKER = r"""
import os, sys, time
from scapy.all import IP, UDP, Raw, conf, get_if_list, sniff
from stunturn_diag.sansio.punch.handshake import Handshake
conf.verb = 0
MAGIC = b"\x8fSTP"
duration, limit, mode, match_id = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
count = {"seen": 0, "sent": 0, "hello": 0, "proof": 0, "frame": 0}
mine = set()
out = conf.L3socket()
fakes = {}

def forgeries(data):
    kind = data[5]
    if kind == 1:          # HELLO: truncated; the genuine one again (harmless: idempotent)
        count["hello"] += 1
        return [data[:-1], data]
    if kind == 2:          # PROOF: tampered MAC; "verified" flag set without the key
        count["proof"] += 1
        return [data[:-1] + bytes([data[-1] ^ 1]), data[:7] + bytes([data[7] ^ 1]) + data[8:]]
    count["frame"] += 1    # frame: replay, flipped ciphertext byte, made-up tag
    flipped = bytearray(data)
    flipped[min(16, len(data) - 17)] ^= 0x20
    # the made-up tag rides a sequence number the receiver has not seen yet (header 8,
    # seq 8 bytes), so the replay window lets it through to the tag check whatever the
    # order of arrival: a tampered copy of a frame already received counts as replayed
    ahead = (int.from_bytes(data[8:16], "big") + 1000).to_bytes(8, "big")
    return [data, bytes(flipped), data[:8] + ahead + data[16:-16] + os.urandom(16)]

def fake_peer(data):
    if data[5] not in (1, 2):
        return []
    role = "initiator" if data[6] == 1 else "receiver"      # pose as the other role
    hs = fakes.setdefault(role, Handshake("a-guessed-key-42", match_id, role, entropy=os.urandom))
    count["hello" if data[5] == 1 else "proof"] += 1
    reply = hs.handle(data).reply
    return [hs.hello()] + ([reply] if reply else [])

def forge(pkt):
    if count["sent"] >= limit or IP not in pkt or UDP not in pkt:
        return
    data = bytes(pkt[UDP].payload)
    if not data.startswith(MAGIC) or data in mine:
        return
    count["seen"] += 1
    ip, udp = pkt[IP], pkt[UDP]
    if mode == "pake":      # answer the sender as if from its peer
        for f in fake_peer(data):
            mine.add(f)
            out.send(IP(src=ip.dst, dst=ip.src) / UDP(sport=udp.dport, dport=udp.sport) / Raw(f))
            count["sent"] += 1
        return
    for f in forgeries(data):
        mine.add(f)
        # as the sender toward the receiver, and as the receiver back to the sender
        # (back to the sender, the role byte claims the other role)
        back = f[:6] + bytes([f[6] ^ 1]) + f[7:]
        for src, sport, dst, dport, payload in ((ip.src, udp.sport, ip.dst, udp.dport, f),
                                                (ip.dst, udp.dport, ip.src, udp.sport, back)):
            mine.add(payload)
            out.send(IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(payload))
            count["sent"] += 1

ifaces = [i for i in get_if_list() if i != "lo"]
print("ready", flush=True)
sniff(iface=ifaces, prn=forge, timeout=duration, store=False)
print(count, flush=True)
"""

#: one side punching alone toward an address the attacker impersonates
LONE = r"""
import json, sys, time
from stunturn_diag.errors import PunchError
from stunturn_diag.punch.udp import UdpRendezvous
stun_ip, peer_ip, peer_port = sys.argv[1], sys.argv[2], int(sys.argv[3])
rv = UdpRendezvous()
mapped = rv.learn_mapping((stun_ip, 3478), 3.0)
print(json.dumps({"mapped": mapped}), flush=True)
time.sleep(0.5)
try:
    ch = rv.punch([(peer_ip, peer_port)], role="receiver", deadline=time.monotonic() + 3.0,
                  key="the-real-key-123", match_id="m-1")
    print(json.dumps({"ok": True, "peer": ch.peer_address}))
except PunchError as e:
    print(json.dumps({"ok": False, "reason": e.reason, "message": str(e)}))
"""


def _attacker(lab, duration: float, limit: int = 800, mode: str = "forge", match_id: str = "-"):
    proc = lab.popen("inet", [sys.executable, "-c", ATTACKER, str(duration), str(limit), mode,
                              match_id])
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()[-500:]
    return proc


def test_forged_replayed_and_tampered_packets_neither_break_nor_enter_the_channel():
    # full cone on both sides: every spoofed packet reaches the hosts (worst case for us)
    with Lab(LabSpec.simple("full-cone", "full-cone")) as lab:
        attacker = _attacker(lab, duration=9)
        res = run_pair(lab, "a1", "b1", punch_timeout=6, linger=5.0)
        out = attacker.communicate(timeout=20)[0]
    ini, rec = res.initiator, res.receiver
    assert res.ok and res.data_both_ways, (ini, rec, out)
    for side in (ini, rec):
        assert side["unexpected"] == [], side            # nothing forged was delivered
    stats = [ini["stats"], rec["stats"]]
    assert sum(s["replayed"] for s in stats) >= 1, (stats, out)
    assert sum(s["bad_tag"] for s in stats) >= 1, (stats, out)
    assert sum(s["handshake"]["bad_proof"] + s["handshake"]["malformed"] for s in stats) >= 1


def _lone_against(mode: str) -> tuple[dict, str]:
    with Lab(LabSpec.simple("full-cone", "full-cone")) as lab:
        serve_in_lab(lab)
        attacker = _attacker(lab, duration=5, mode=mode, match_id="m-1")
        # the "peer" address is site a's public IP; nobody there holds the key
        lone = lab.popen("b1", [sys.executable, "-c", LONE, lab.server_ip,
                                lab.site_public_ip("a"), "40000"])
        lines = lone.communicate(timeout=30)[0].strip().splitlines()
        out = attacker.communicate(timeout=20)[0]
    return json.loads(lines[-1]), out


def test_a_third_party_knowing_the_addresses_cannot_complete_the_handshake():
    """Reflected and truncated messages are no peer: nothing authentic ever arrives."""
    result, out = _lone_against("forge")
    assert result["ok"] is False, (result, out)
    assert result["reason"] == "timeout", (result, out)
    assert "'hello': 0" not in out          # the attacker did answer with forgeries


def test_a_fake_peer_with_a_guessed_key_fails_after_one_guess():
    """The attacker runs the real handshake (CPace) with a wrong key: one online guess, refused."""
    result, out = _lone_against("pake")
    assert result["ok"] is False, (result, out)
    assert result["reason"] == "auth-failed", (result, out)
    assert "key confirmation did not verify" in result["message"]
    assert "'hello': 0" not in out and "'sent': 0" not in out, out
