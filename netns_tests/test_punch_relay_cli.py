"""`punch --forward` / `--listen` in the lab, as the README runs them: a real local
service behind the receiver's NAT, a real local client behind the initiator's NAT,
bytes both ways over the punched TCP stream and the punched UDP channel; and a
peer that vanishes is reported as lost. A sniffer on the core router (between the
sites) checks that the relayed bytes are ciphertext on the wire (issue 10).

Lab: site a behind plain masquerade (port-restricted), site b behind a full cone.
The receiver runs without ``--protocol`` (it prepares both; the initiator picks).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from stunturn_diag.lab import Lab, LabSpec
from stunturn_diag.lab.pair_runner import HTTP_PORT, serve_in_lab
from stunturn_diag.sansio.punch.wire import MAGIC, VERSION

pytestmark = pytest.mark.netns

KEY = "relay-lab-key-42"
#: plaintext the local client sends (TCP); must never appear between the sites
MARKER = b"PLAINTEXT-MARKER-0xC0FFEE-must-not-be-on-the-wire|"

#: in clear on the wire (the header, magic and version): proves the sniffer reads the payloads
CONTROL = MAGIC + bytes([VERSION])

#: on the router: read every IP packet (also fragments) between the two sites' public IPs
#: as it arrives (an AF_PACKET socket for ETH_P_IP sees received packets, once each, as
#: GRO merged them) until a line on stdin (or 90 s), then drain what is queued and
#: print how much it saw, which needles it found and how many packets the kernel dropped
#: for this socket (PACKET_STATISTICS). The receive buffer (64 MiB, SO_RCVBUFFORCE) holds
#: all the traffic of a test even if the sniffer is not scheduled at all while it flows:
#: a busy machine delays the sniffer but cannot make it miss a packet (the default
#: ~208 KiB buffer held only a few 64 KiB GRO segments and dropped many under load).
SNIFFER = r"""
import json, select, socket, struct, sys, time
a, b = sys.argv[1], sys.argv[2]
needles = [bytes.fromhex(h) for h in sys.argv[3:]]
pair = {socket.inet_aton(a), socket.inet_aton(b)}
SOL_PACKET, PACKET_STATISTICS, ETH_P_IP, SO_RCVBUFFORCE = 263, 6, 0x0800, 33   # <linux/...>
sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))  # all interfaces
sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
sock.setblocking(False)
seen = {"packets": 0, "bytes": 0, "found": [], "truncated": 0}
def look(pkt, ifname):
    if ifname == "lo" or len(pkt) < 20 or {pkt[12:16], pkt[16:20]} != pair:
        return
    total = struct.unpack("!H", pkt[2:4])[0]
    seen["truncated"] += len(pkt) < total
    data = pkt[(pkt[0] & 0x0F) * 4:total]   # UDP/TCP segment or a later IP fragment of one
    seen["packets"] += 1
    seen["bytes"] += len(data)
    seen["found"] += [n.hex() for n in needles if n in data and n.hex() not in seen["found"]]
def drain():
    while True:
        try:
            pkt, addr = sock.recvfrom(1 << 17)
        except BlockingIOError:
            return
        look(pkt, addr[0])
print("ready", flush=True)
end = time.monotonic() + 90             # bounded: the test says stop, or 90 s pass
while time.monotonic() < end:
    readable, _, _ = select.select([sock, sys.stdin], [], [], max(0.0, end - time.monotonic()))
    if sock in readable:
        drain()
    if sys.stdin in readable:
        break
drain()
seen["dropped"] = struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))[1]
print(json.dumps(seen), flush=True)
"""
SERVICE_PORT = 9000
LISTEN_PORT = 2222

#: a local echo service (bounded lifetime): TCP echoes the stream until EOF, UDP
#: answers each datagram with b"echo:" + datagram
ECHO = r"""
import socket, sys, time
proto, port = sys.argv[1], int(sys.argv[2])
end = time.monotonic() + 60
if proto == "tcp":
    srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port)); srv.listen(1); print("ready", flush=True)
    srv.settimeout(60); conn, _ = srv.accept(); conn.settimeout(30)
    while True:
        data = conn.recv(65536)
        if not data:
            break
        conn.sendall(data)
    conn.close()
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", port))
    print("ready", flush=True)
    while time.monotonic() < end:
        s.settimeout(max(0.01, end - time.monotonic()))
        try:
            data, src = s.recvfrom(65535)
        except socket.timeout:
            break
        s.sendto(b"echo:" + data, src)
"""

#: the local client on the initiator's host; prints one JSON line
CLIENT = r"""
import hashlib, json, os, socket, sys, threading
proto, port, MARKER = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3])
out = {}
if proto == "tcp":
    blob = MARKER * 50 + os.urandom(300_000)
    c = socket.create_connection(("127.0.0.1", port), timeout=20)
    def send():
        c.sendall(blob); c.shutdown(socket.SHUT_WR)
    t = threading.Thread(target=send); t.start()
    got = b""
    while True:
        chunk = c.recv(65536)
        if not chunk:
            break
        got += chunk
    t.join(20)
    out.update(sent=hashlib.sha256(blob).hexdigest(), got=hashlib.sha256(got).hexdigest(),
               length=len(got))
else:
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); c.settimeout(0.3)
    replies = {}
    for size in (1, 700, 1400, 4000, 20000):
        payload = bytes([size % 251]) * size
        for _ in range(20):                 # datagrams: resend until answered (bounded)
            c.sendto(payload, ("127.0.0.1", port))
            try:
                reply = c.recv(65535)
            except socket.timeout:
                continue
            replies[str(size)] = reply == b"echo:" + payload
            break
    out["replies"] = replies
print(json.dumps(out), flush=True)
"""


def _punch(lab, host: str, *args: str):
    env = dict(os.environ, STUNTURN_KEY=KEY, PYTHONUNBUFFERED="1")
    return lab.popen(host, [sys.executable, "-m", "stunturn_diag", "punch",
                            f"http://{lab.server_ip}:{HTTP_PORT}", *args], env=env)


def _wait_line(proc, needle: str, timeout: float = 40.0) -> list[str]:
    """Read stderr lines until one contains ``needle`` (bounded by ``timeout``)."""
    lines: list[str] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"never saw {needle!r}: {''.join(lines)}")


def _start_pair(lab, protocol: str, *receiver_args: str, turn=None):
    serve_in_lab(lab, turn=turn)
    service = lab.popen("b1", [sys.executable, "-c", ECHO, protocol, str(SERVICE_PORT)])
    assert service.stdout.readline().strip() == "ready"
    ini = _punch(lab, "a1", "--target-ip", lab.site_public_ip("b"), "--protocol", protocol,
                 "--listen", f"127.0.0.1:{LISTEN_PORT}")
    rec = _punch(lab, "b1", "--wait", "20", "--wait-interval", "0.05",
                 "--forward", f"127.0.0.1:{SERVICE_PORT}", *receiver_args)
    _wait_line(ini, "listening on 127.0.0.1")
    return ini, rec


def _client(lab, protocol: str) -> dict:
    result = lab.exec("a1", [sys.executable, "-c", CLIENT, protocol, str(LISTEN_PORT),
                             MARKER.hex()], timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _sniffer(lab, *needles: bytes):
    proc = lab.popen("inet", [sys.executable, "-c", SNIFFER, lab.site_public_ip("a"),
                              lab.site_public_ip("b"), *(n.hex() for n in needles)],
                     stdin=subprocess.PIPE)
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()[-500:]
    return proc


def _sniffed(proc) -> dict:
    out, err = proc.communicate("stop\n", timeout=30)
    return json.loads(out.strip().splitlines()[-1]) if out.strip() else {"error": err[-500:]}


#: on the router: the kernel counts the bytes (whole IP packets) it forwards each way
#: between the two sites' public IPs
WIRE_COUNTERS = """table ip wire {{
  counter a_to_b {{}}
  counter b_to_a {{}}
  chain forward {{
    type filter hook forward priority -10; policy accept;
    ip saddr {a} ip daddr {b} counter name "a_to_b"
    ip saddr {b} ip daddr {a} counter name "b_to_a"
  }}
}}
"""


def _count_forwarded(lab) -> None:
    lab.exec("inet", ["nft", "-f", "-"], check=True, input=WIRE_COUNTERS.format(
        a=lab.site_public_ip("a"), b=lab.site_public_ip("b")))


def _forwarded(lab) -> dict[str, int]:
    """Bytes the router forwarded each way, e.g. ``{"a_to_b": 310000, "b_to_a": 309000}``."""
    out = lab.exec("inet", ["nft", "-j", "list", "counters", "table", "ip", "wire"],
                   check=True).stdout
    return {item["counter"]["name"]: item["counter"]["bytes"]
            for item in json.loads(out)["nftables"] if "counter" in item}


def test_tcp_forward_and_listen_carry_a_stream_both_ways_and_end_cleanly():
    with Lab(LabSpec.simple("port-restricted", "full-cone")) as lab:
        _count_forwarded(lab)
        sniffer = _sniffer(lab, CONTROL, MARKER, MARKER[:16])
        ini, rec = _start_pair(lab, "tcp")
        got = _client(lab, "tcp")
        i_out, i_err = ini.communicate(timeout=30)
        r_out, r_err = rec.communicate(timeout=30)
        wire = _sniffed(sniffer)
        forwarded = _forwarded(lab)
    stream = 300_000 + 50 * len(MARKER)
    assert got["length"] == stream and got["got"] == got["sent"], got
    # the stream crossed the router both ways (the kernel's count: ciphertext is no
    # shorter than the plaintext) ...
    assert min(forwarded.values()) >= stream and len(forwarded) == 2, forwarded
    # ... and only as ciphertext: the sniffer read every packet (none dropped or cut)
    # and found the header in clear but no plaintext
    assert wire.get("dropped") == 0 and wire["truncated"] == 0, wire
    assert wire["bytes"] > 2 * stream and wire["found"] == [CONTROL.hex()], wire
    # the local client's half-close travels through; both relays end by themselves
    assert (ini.returncode, rec.returncode) == (0, 0), (i_err, r_err)
    assert "over tcp" in r_err and "forwarding to 127.0.0.1:9000" in r_err
    assert "Traceback" not in i_err + r_err


def test_udp_forward_and_listen_keep_datagrams_whole_and_a_lost_peer_is_reported():
    """Datagrams up to 20000 bytes cross whole (one frame each, IP fragments on the
    wire); then the initiator is killed without a goodbye and the receiver reports
    the lost peer after --peer-timeout."""
    with Lab(LabSpec.simple("port-restricted", "full-cone")) as lab:
        # the datagrams' plaintext: the echo prefix and runs of the client's filler bytes
        needles = (b"echo:\x01", bytes([700 % 251]) * 32, bytes([20000 % 251]) * 32)
        sniffer = _sniffer(lab, CONTROL, *needles)
        ini, rec = _start_pair(lab, "udp", "--peer-timeout", "2")
        got = _client(lab, "udp")
        wire = _sniffed(sniffer)
        ini.send_signal(signal.SIGKILL)     # no BYE: only keepalives stop
        ini.communicate(timeout=30)
        r_out, r_err = rec.communicate(timeout=30)
    assert got["replies"] == {"1": True, "700": True, "1400": True, "4000": True,
                              "20000": True}, got
    assert wire.get("dropped") == 0 and wire["truncated"] == 0, wire
    assert wire["bytes"] > 26_101 and wire["found"] == [CONTROL.hex()], wire
    assert rec.returncode == 1, r_err
    assert "went silent for 2s" in r_err and "Traceback" not in r_err, r_err
