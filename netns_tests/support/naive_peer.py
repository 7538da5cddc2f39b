"""A naive UDP peer standing in for someone else's P2P program (plain sockets only).

It registers its local UDP port with the rendezvous server, learns the other peer's
port, then sends to (peer's public IP, that port) until it hears back from the peer's
IP: it assumes the NAT keeps the local port. Peer b starts sending 0.3 s after peer a,
as a second peer typically does, so a's first packets reach b's NAT first.
Exit 0 when it heard the peer (after a short linger so the peer hears it too), 1 if not.
Usage: python3 naive_peer.py ROLE RENDEZVOUS_URL KEY PEER_IP [TIMEOUT_S]
"""

import json
import socket
import sys
import time
import urllib.error
import urllib.request

role, url, key, peer_ip = sys.argv[1:5]
timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 6.0
deadline = time.monotonic() + timeout
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", 0))
port = sock.getsockname()[1]
req = urllib.request.Request(url + "/register", method="POST",
                             data=json.dumps({"key": key, "role": role, "port": port}).encode(),
                             headers={"Content-Type": "application/json"})
urllib.request.urlopen(req, timeout=5).read()
peer_port = None
while peer_port is None and time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(f"{url}/peer?key={key}&role={role}", timeout=5) as resp:
            peer_port = json.load(resp)["port"]
    except urllib.error.HTTPError:
        time.sleep(0.1)
if peer_port is None:
    print(f"{role}: the peer never registered", file=sys.stderr)
    sys.exit(1)
print(f"{role}: local port {port}, sending to {peer_ip}:{peer_port}", flush=True)
if role == "b":
    time.sleep(0.3)
heard_at = None
sent = 0
while time.monotonic() < deadline and sent < 200:       # bounded: 200 sends, TIMEOUT s
    sock.sendto(f"hello {key} from {role}".encode(), (peer_ip, peer_port))
    sent += 1
    next_send = time.monotonic() + 0.05
    while (left := next_send - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data, addr = sock.recvfrom(2048)
        except (socket.timeout, ConnectionRefusedError):
            continue
        if addr[0] == peer_ip and key.encode() in data and heard_at is None:
            heard_at = time.monotonic()
            print(f"{role}: heard the peer from {addr[0]}:{addr[1]} after {sent} sends",
                  flush=True)
    if heard_at is not None and time.monotonic() - heard_at > 0.5:
        sys.exit(0)
if heard_at is None:
    print(f"{role}: never heard the peer ({sent} sends)", file=sys.stderr)
sys.exit(0 if heard_at is not None else 1)
