"""Helpers of the security suite (tests/test_security_*.py): raw requests from chosen loopback sources."""

from __future__ import annotations

import hashlib
import http.client
import json
import socket


def call(address, method: str, path: str, body=None, *, source: str = "127.0.0.1", headers=None,
         timeout: float = 20.0, tls=None, server_hostname: str | None = None):
    """One HTTP(S) request from ``source``; returns (status, response headers, parsed JSON or None)."""
    if tls is not None:
        conn = http.client.HTTPSConnection(server_hostname or address[0], address[1], timeout=timeout,
                                           source_address=(source, 0), context=tls)
        if server_hostname:  # connect to the address, verify the name
            conn._create_connection = lambda *a, **k: socket.create_connection(
                address, timeout, (source, 0))
    else:
        conn = http.client.HTTPConnection(*address, timeout=timeout, source_address=(source, 0))
    try:
        data = json.dumps(body).encode() if body is not None else None
        hdrs = {"Content-Type": "application/json"}
        hdrs.update(headers or {})
        conn.request(method, path, body=data, headers=hdrs)
        response = conn.getresponse()
        raw = response.read()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        return response.status, dict(response.getheaders()), parsed
    finally:
        conn.close()


def raw_exchange(address, payload: bytes, *, source: str = "127.0.0.1", timeout: float = 10.0) -> bytes:
    """Send ``payload`` on a fresh connection and read until the server closes it."""
    sock = socket.create_connection(address, timeout=timeout, source_address=(source, 0))
    try:
        sock.sendall(payload)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        sock.close()


def rv(key: str) -> str:
    """A stand-in rendezvous identifier per test key (64 hex digits, like the client's)."""
    return hashlib.sha256(key.encode()).hexdigest()
