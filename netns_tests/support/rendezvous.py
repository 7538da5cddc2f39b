"""A tiny HTTP rendezvous server standing in for someone else's P2P backend.

Plain standard library, no stunturn_diag: peers POST /register {"key", "role", "port"}
and GET /peer?key=K&role=R for the other role's port (404 until it registered).
Usage: python3 rendezvous.py HOST PORT
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

PEERS = {}
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    def _send(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        with LOCK:
            PEERS[(body["key"], body["role"])] = {"port": body["port"],
                                                  "ip": self.client_address[0]}
        self._send(200, {"ok": True})

    def do_GET(self):
        query = parse_qs(urlparse(self.path).query)
        key, role = query["key"][0], query["role"][0]
        other = "b" if role == "a" else "a"
        with LOCK:
            found = PEERS.get((key, other))
        self._send(200, found) if found else self._send(404, {"error": "not yet"})

    def log_message(self, *args):
        sys.stderr.write("rendezvous: " + (args[0] % args[1:]) + "\n")


server = ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Handler)
print(f"listening on {sys.argv[1]}:{sys.argv[2]}", flush=True)
server.serve_forever()
