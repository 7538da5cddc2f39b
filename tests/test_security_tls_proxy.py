"""Security: the key in clear, and deployment behind a reverse proxy (issue 10, 1).

Real certificates made for the test (trustme), a real HTTPS server on loopback, the real
client (SignalingClient); the proxy is played by a socket from a trusted loopback address.
"""

from __future__ import annotations

import socket
import ssl
import struct

import pytest

from securitylib import call, rv
from stunturn_diag.commands._common import tls_settings
from stunturn_diag.errors import ConfigError, SignalingTlsError
from stunturn_diag.signaling import SignalingClient, TlsOptions
from stunturn_server.config import ServerConfig, TlsConfig
from stunturn_server.runner import start_server
from stunturn_server.sansio.proxy import V2_SIGNATURE
from testlib import in_background, wait_for

trustme = pytest.importorskip("trustme")

KEY = "tls-pairing-key-1"
PROXY_IP = "127.0.0.50"


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def cert_files(ca, tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path, ca_path = d / "cert.pem", d / "key.pem", d / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    ca.cert_pem.write_to_path(str(ca_path))
    return str(cert_path), str(key_path), str(ca_path)


@pytest.fixture
def tls_server(cert_files):
    cert, key, _ = cert_files
    config = ServerConfig(http_port=0, stun_enabled=False, tls=TlsConfig(cert=cert, key=key),
                          trusted_proxies=(f"{PROXY_IP}/32",))
    with start_server(config) as handle:
        yield handle


def test_https_pairing_with_a_verified_certificate(tls_server, cert_files):
    assert tls_server.http_url.startswith("https://127.0.0.1:")
    tls = TlsOptions(ca_file=cert_files[2])
    initiator = SignalingClient(tls_server.http_url, tls=tls)
    thread, result = in_background(initiator.initiate, rv(KEY), "127.0.0.1", "udp", timeout=10)
    receiver = SignalingClient(tls_server.http_url, tls=tls)
    wait_for(lambda: receiver.health()["waiting"] == 1, what="the initiator over TLS")
    answer = receiver.checkin(rv(KEY))
    thread.join(20)
    assert answer["role"] == "receiver" and result["value"]["match_id"] == answer["match_id"]


def test_unverifiable_certificate_is_refused_by_default(tls_server):
    with pytest.raises(SignalingTlsError, match="did not verify") as caught:
        SignalingClient(tls_server.http_url).health()  # the system store does not know our CA
    assert "--ca-file" in str(caught.value)


def test_insecure_skips_verification_and_warns(tls_server, capsys):
    tls = tls_settings(None, True)
    assert "not verified" in capsys.readouterr().err
    assert SignalingClient(tls_server.http_url, tls=tls).health()["ok"] is True


def test_plain_http_to_the_tls_port_gets_nothing(tls_server):
    sock = socket.create_connection(tls_server.http_address, timeout=10)
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        try:
            data = sock.recv(4096)
        except ConnectionResetError:
            data = b""
        assert b"ok" not in data  # a TLS alert, a close or a reset: never the JSON in clear
    finally:
        sock.close()


def test_bad_ca_file_and_bad_certificate_are_config_errors(tmp_path, cert_files):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(ConfigError, match="CA file"):
        SignalingClient("https://127.0.0.1:1", tls=TlsOptions(ca_file=str(junk)))
    with pytest.raises(ConfigError, match="TLS certificate"):
        start_server(ServerConfig(http_port=0, stun_enabled=False,
                                  tls=TlsConfig(cert=str(junk), key=cert_files[1])))


def _tls_request(address, path: str, *, prefix: bytes = b"", source: str = PROXY_IP, ca_file: str,
                 headers: str = "") -> bytes:
    """Act as a TLS-passthrough proxy (HAProxy send-proxy): PROXY header, then TLS, then HTTP."""
    context = ssl.create_default_context(cafile=ca_file)
    raw = socket.create_connection(address, timeout=10, source_address=(source, 0))
    try:
        raw.sendall(prefix)
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{headers}\r\n"
                        .encode())
            data = b""
            while chunk := tls.recv(4096):
                data += chunk
            return data
    finally:
        raw.close()


def _observed_by_checkin(address, *, prefix=b"", source=PROXY_IP, ca_file, headers="") -> str:
    """The server's view of the client: the 404 message names the IP it saw."""
    context = ssl.create_default_context(cafile=ca_file)
    raw = socket.create_connection(address, timeout=10, source_address=(source, 0))
    body = b'{"rendezvous": "%s"}' % rv("nobody-has-this-key").encode()
    try:
        raw.sendall(prefix)
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"POST /v1/checkin HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                        b"Content-Type: application/json\r\n" + headers.encode()
                        + b"Content-Length: %d\r\n\r\n" % len(body) + body)
            data = b""
            while chunk := tls.recv(4096):
                data += chunk
    finally:
        raw.close()
    text = data.decode()
    assert " 404 " in text.split("\r\n", 1)[0], text
    return text.split("your IP ", 1)[1].split(";", 1)[0]


def test_proxy_protocol_v1_and_v2_name_the_client_before_tls(tls_server, cert_files):
    ca = cert_files[2]
    v1 = b"PROXY TCP4 198.51.100.7 127.0.0.1 4711 443\r\n"
    assert _observed_by_checkin(tls_server.http_address, prefix=v1, ca_file=ca) == "198.51.100.7"
    body = socket.inet_aton("203.0.113.9") + socket.inet_aton("127.0.0.1") + struct.pack("!HH", 999, 443)
    v2 = V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, len(body)) + body
    assert _observed_by_checkin(tls_server.http_address, prefix=v2, ca_file=ca) == "203.0.113.9"


def test_forwarded_headers_only_from_trusted_proxies(tls_server, cert_files):
    ca = cert_files[2]
    forged = "X-Forwarded-For: 1.2.3.4, 198.51.100.8\r\n"
    # from the trusted proxy: the rightmost untrusted hop
    assert _observed_by_checkin(tls_server.http_address, ca_file=ca, headers=forged) == "198.51.100.8"
    # from anyone else the header is ignored: the TCP peer is the client
    assert _observed_by_checkin(tls_server.http_address, ca_file=ca, headers=forged,
                                source="127.0.0.51") == "127.0.0.51"
    # and a PROXY header from an untrusted peer is not believed either (it is just bad HTTP/TLS)
    v1 = b"PROXY TCP4 198.51.100.7 127.0.0.1 4711 443\r\n"
    with pytest.raises((ssl.SSLError, OSError)):
        _observed_by_checkin(tls_server.http_address, prefix=v1, source="127.0.0.52", ca_file=ca)


def test_malformed_proxy_header_from_the_proxy_is_dropped(tls_server, cert_files):
    with pytest.raises((ssl.SSLError, OSError)):
        _tls_request(tls_server.http_address, "/healthz", prefix=b"PROXY TCP4 bad\r\n",
                     ca_file=cert_files[2])
    assert _tls_request(tls_server.http_address, "/healthz", ca_file=cert_files[2]).startswith(
        b"HTTP/1.1 200")


def test_plain_http_behind_a_proxy_uses_x_forwarded_for():
    config = ServerConfig(http_port=0, stun_enabled=False, trusted_proxies=(f"{PROXY_IP}/32",))
    with start_server(config) as server:
        status, _, body = call(server.http_address, "POST", "/v1/checkin",
                               {"rendezvous": rv("nobody-has-this-key")}, source=PROXY_IP,
                               headers={"X-Forwarded-For": "198.51.100.9"})
        assert status == 404 and "your IP 198.51.100.9;" in body["message"]


def test_punch_cli_pairs_over_https_with_ca_file(cert_files):
    """End to end: `serve --tls-cert/--tls-key` in its own process, both `punch` sides verify it."""
    import json
    import os
    import subprocess
    import sys

    from testlib import serve_subprocess

    cert, key, ca_file = cert_files
    with serve_subprocess("--tls-cert", cert, "--tls-key", key) as url:
        assert url.startswith("https://")
        env = dict(os.environ, STUNTURN_KEY="tls-cli-key-123")

        def punch(*args):
            return subprocess.Popen([sys.executable, "-m", "stunturn_diag", "punch", url, "--json",
                                     "--ca-file", ca_file, *args], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=env)
        procs = [punch("--target-ip", "127.0.0.1"), punch("--wait", "10", "--protocol", "udp")]
        outs = []
        for p in procs:
            try:
                outs.append(p.communicate(timeout=40))
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        assert [p.returncode for p in procs] == [0, 0], outs
        assert all(json.loads(out)["ok"] for out, _ in outs)
        # without the CA the client refuses the server, naming the option to use
        bad = subprocess.run([sys.executable, "-m", "stunturn_diag", "punch", url, "--json"],
                             capture_output=True, text=True, env=env, timeout=40)
        assert bad.returncode == 1 and json.loads(bad.stdout)["reason"] == "signaling-tls", bad.stdout
        assert "--ca-file" in json.loads(bad.stdout)["message"]
