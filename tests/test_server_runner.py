"""Embedding (start_server / ServerHandle), STUN wiring, bind errors and the `serve` command."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import urllib.request

import pytest
from click.testing import CliRunner

from stunturn_diag.cli import main
from stunturn_diag.commands.serve import parse_listen
from stunturn_diag.errors import ConfigError
from stunturn_server.config import ServerConfig
from stunturn_server.runner import raise_nofile_limit, start_server
from stunturn_diag.stun_requests import fresh_binding_request


def get_json(url: str) -> dict:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as response:
        return json.load(response)


def taken_tcp_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_start_and_stop_is_clean_and_idempotent():
    handle = start_server(ServerConfig(http_port=0, stun_enabled=False))
    assert handle.running and handle.http_url.startswith("http://127.0.0.1:")
    assert get_json(handle.http_url + "/healthz")["ok"] is True
    assert handle.stun_endpoints == []
    handle.stop()
    handle.stop()
    assert not handle.running
    with pytest.raises(OSError):
        socket.create_connection(handle.http_address, timeout=2).close()


def test_context_manager_and_no_monkey_patching():
    with start_server(ServerConfig(http_port=0, stun_enabled=False)) as handle:
        get_json(handle.http_url + "/healthz")
        # the host program's stdlib stays unpatched
        assert socket.socket.__module__ == "socket"
        assert threading.Event.__module__ == "threading"
    assert not handle.running


def test_two_servers_side_by_side():
    with start_server(ServerConfig(http_port=0, stun_enabled=False)) as a, \
            start_server(ServerConfig(http_port=0, stun_enabled=False)) as b:
        assert a.http_url != b.http_url
        assert get_json(a.http_url + "/healthz")["ok"] and get_json(b.http_url + "/healthz")["ok"]


def test_http_port_taken_is_a_clear_error():
    blocker = taken_tcp_port()
    try:
        with pytest.raises(ConfigError, match="already uses this port"):
            start_server(ServerConfig(http_port=blocker.getsockname()[1], stun_enabled=False))
    finally:
        blocker.close()


def test_address_not_on_this_host_is_a_clear_error():
    with pytest.raises(ConfigError, match="no such address"):
        start_server(ServerConfig(http_host="192.0.2.1", http_port=0, stun_enabled=False))


def test_nofile_soft_limit_is_raised_to_hard():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft - 1 if soft > 256 else soft, hard))
    assert raise_nofile_limit() == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if hard != resource.RLIM_INFINITY:
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard


# --- with the STUN service ------------------------------------------------------------------

def test_stun_service_runs_beside_http_and_is_reported():
    pytest.importorskip("stunturn_server.stun.service")
    config = ServerConfig(http_port=0, stun_port=0, alt_port=0, alt_ip="127.0.0.2")
    with start_server(config) as handle:
        roles = {ep["role"]: ep for ep in handle.stun_endpoints}
        assert set(roles) == {"primary", "alt-port", "alt-ip", "alt-both"}
        assert all(ep["port"] > 0 for ep in roles.values())
        stun = get_json(handle.http_url + "/v1/info")["stun"]
        assert stun["primary"] == {"ip": "127.0.0.1", "port": roles["primary"]["port"]}
        assert stun["alt_both"] == {"ip": "127.0.0.2", "port": roles["alt-both"]["port"]}
        assert stun["behaviour_tests"] is True
        from stunturn_diag.sansio.stun import binding_request, decode, encode
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            udp.settimeout(5)
            udp.bind(("127.0.0.1", 0))
            request = fresh_binding_request()
            udp.sendto(encode(request), ("127.0.0.1", roles["primary"]["port"]))
            answer = decode(udp.recv(2048))
            assert answer.transaction_id == request.transaction_id
            assert answer.mapped_address == udp.getsockname()
        finally:
            udp.close()
        service = handle.stun_service
    assert not getattr(service, "running", False)


def test_stun_port_taken_is_a_clear_error_and_releases_http():
    pytest.importorskip("stunturn_server.stun.service")
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", 0))
    http = taken_tcp_port()
    http_port = http.getsockname()[1]
    http.close()
    try:
        with pytest.raises(ConfigError, match="STUN"):
            start_server(ServerConfig(http_port=http_port, stun_port=blocker.getsockname()[1]))
    finally:
        blocker.close()
    # the HTTP port was released again
    with start_server(ServerConfig(http_port=http_port, stun_enabled=False)):
        pass


def test_stun_service_module_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "stunturn_server.stun.service", None)
    with pytest.raises(ConfigError, match="--no-stun"):
        start_server(ServerConfig(http_port=0))


# --- the serve command ------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:8080", ("127.0.0.1", 8080)),
    ("0.0.0.0", ("0.0.0.0", 8080)),
    ("[::1]:9000", ("::1", 9000)),
    ("[::1]", ("::1", 8080)),
    ("::1", ("::1", 8080)),
    ("127.0.0.1:0", ("127.0.0.1", 0)),
])
def test_parse_listen(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["127.0.0.1:", "127.0.0.1:99999", ":8080", "[::1", "[::1]x", "a:b"])
def test_parse_listen_rejects(text):
    with pytest.raises(ConfigError):
        parse_listen(text)


@pytest.mark.parametrize("args, message", [
    (["localhost:0", "--no-stun"], "must be an IP address"),
    (["127.0.0.1:70000", "--no-stun"], "is not 0-65535"),
    (["127.0.0.1:0", "--alt-ip", "nope"], "alt_ip must be an IP address"),
    (["127.0.0.1:0", "--stun-port", "5000", "--alt-port", "5000"], "must differ"),
    (["127.0.0.1:0", "--wait-timeout", "0", "--no-stun"], "wait_timeout"),
    (["127.0.0.1:0", "--no-stun", "--max-waiters-per-ip", "0"], "--max-waiters-per-ip"),
    (["127.0.0.1:0", "--no-stun", "--max-waiters-per-ip", "600", "--max-connections-per-ip", "500"],
     "must be at least"),
    (["127.0.0.1:5000", "--stun-port", "5000", "--alt-port", "5001"], "also a STUN port"),
])
def test_serve_bad_options_are_clear_errors(args, message):
    result = CliRunner().invoke(main, ["serve", *args])
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output


def test_serve_port_taken_is_a_clear_error():
    blocker = taken_tcp_port()
    try:
        result = CliRunner().invoke(main, ["serve", f"127.0.0.1:{blocker.getsockname()[1]}", "--no-stun"])
    finally:
        blocker.close()
    assert result.exit_code == 1
    assert "cannot bind the HTTP server" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_serve_runs_and_stops_cleanly_on_signal(stop_signal):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "stunturn_diag", "serve", "127.0.0.1:0", "--no-stun",
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        listening = json.loads(line)
        assert get_json(listening["http_url"] + "/healthz")["ok"] is True
        proc.send_signal(stop_signal)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "stopped" in err


def test_idle_connection_is_dropped_after_the_io_timeout():
    with start_server(ServerConfig(http_port=0, stun_enabled=False, http_io_timeout=0.3)) as handle:
        raw = socket.create_connection(handle.http_address, timeout=10)
        try:
            raw.sendall(b"POST /v1/checkin HTTP/1.1\r\nHost: t\r\nContent-Length: 50\r\n\r\n{")
            data = raw.recv(4096)  # the server gives up on the unfinished body and closes
            while data:
                data = raw.recv(4096)
        finally:
            raw.close()
        assert get_json(handle.http_url + "/healthz")["ok"] is True


def test_ipv6_loopback():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        handle = start_server(ServerConfig(http_host="::1", http_port=0, stun_enabled=False))
    except ConfigError as exc:
        pytest.skip(f"::1 unavailable: {exc}")
    with handle:
        assert handle.http_url.startswith("http://[::1]:")
        from stunturn_diag.errors import NoInitiatorWaiting
        from stunturn_diag.signaling import SignalingClient
        with pytest.raises(NoInitiatorWaiting, match="::1"):
            SignalingClient(handle.http_url).checkin("ab" * 32)  # a rendezvous id (hex)


def test_embedding_in_a_monkey_patched_host():
    code = (
        "from gevent import monkey; monkey.patch_all()\n"
        "import json, urllib.request\n"
        "from stunturn_server.config import ServerConfig\n"
        "from stunturn_server.runner import start_server\n"
        "h = start_server(ServerConfig(http_port=0, stun_enabled=False))\n"
        "o = urllib.request.build_opener(urllib.request.ProxyHandler({}))\n"
        "print(json.load(o.open(h.http_url + '/healthz', timeout=10))['ok'])\n"
        "h.stop(); h.stop()\n"
        "import gevent; gevent.sleep(0); print('alive')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "alive"]


@pytest.mark.parametrize("fields", [
    {"max_waiters_per_ip": 0}, {"max_waiters_per_ip": True}, {"max_waiters_per_ip": 2.5},
    {"max_connections_per_ip": 0}, {"max_waiters_per_ip": 20, "max_connections_per_ip": 10},
    {"http_port": 3478}, {"http_port": 3479, "alt_ip": "127.0.0.2"},
    {"http_host": "0.0.0.0", "stun_host": "127.0.0.1", "http_port": 3478},
])
def test_config_rejects_bad_waiter_caps_and_http_on_a_stun_port(fields):
    with pytest.raises(ConfigError):
        ServerConfig(**fields)


def test_config_allows_the_same_port_on_other_hosts_or_without_stun():
    assert ServerConfig(http_port=3478, stun_enabled=False).http_port == 3478
    assert ServerConfig(http_host="127.0.0.1", stun_host="127.0.0.2", http_port=3478).stun_port == 3478
    assert ServerConfig(http_port=3479).max_waiters_per_ip == 256  # alt port unused without --alt-ip


@pytest.mark.parametrize("ip, source", [
    ("192.0.2.7", "192.0.2.7"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff::9", "2001:db8:1:2::/64"),
    ("::ffff:192.0.2.7", "192.0.2.7"),  # IPv4-mapped IPv6 counts as the IPv4 address
])
def test_waiter_cap_counts_ipv4_addresses_and_ipv6_slash_64s(ip, source):
    from stunturn_server.sansio.limits import source_of
    assert source_of(ip) == source


def test_serve_prints_ipv6_endpoints_in_brackets():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "stunturn_diag", "serve", "[::1]:0", "--stun-port", "0",
                             "--alt-port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        lines = [proc.stdout.readline() for _ in range(2)]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    if "Cannot assign" in err:
        pytest.skip("::1 unavailable")
    assert lines[0].startswith("signaling server: http://[::1]:"), (lines, err)
    assert lines[1].split()[:3] == ["STUN", "primary", "udp+tcp"] and lines[1].split()[3].startswith("[::1]:")


def _all_commands(group, prefix=()):
    for name, command in group.commands.items():
        yield (*prefix, name)
        if hasattr(command, "commands"):
            yield from _all_commands(command, (*prefix, name))


def test_every_command_is_built_and_its_help_is_clean():
    """All four commands exist (none is a placeholder) and every --help exits 0."""
    assert set(main.commands) == {"probe", "punch", "serve", "lab"}
    for path in [(), *_all_commands(main)]:
        result = CliRunner().invoke(main, [*path, "--help"], prog_name="stunturn-diag")
        assert result.exit_code == 0, (path, result.output)
        assert result.output.startswith("Usage: stunturn-diag") and "not built" not in result.output


def test_serve_raises_the_connection_cap_with_the_waiter_cap(monkeypatch):
    seen = {}
    monkeypatch.setattr("stunturn_server.runner.serve_forever", lambda config, on_ready: seen.update(
        waiters=config.max_waiters_per_ip, connections=config.max_connections_per_ip))
    assert CliRunner().invoke(main, ["serve", "127.0.0.1:0", "--no-stun", "--max-waiters-per-ip",
                                     "1000"]).exit_code == 0
    assert seen == {"waiters": 1000, "connections": 2000}
    assert CliRunner().invoke(main, ["serve", "127.0.0.1:0", "--no-stun"]).exit_code == 0
    assert seen == {"waiters": 256, "connections": 512}
