"""`stunturn-diag punch` on loopback: JSON output, stdin relay, --forward / --listen."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from testlib import serve_subprocess
from click.testing import CliRunner

from stunturn_diag.cli import main

KEY = "cli-test-key-1"


@pytest.fixture
def server():
    with serve_subprocess() as url:
        yield url


def cli(url, *args, stdin=subprocess.DEVNULL, key=KEY):
    env = dict(os.environ)
    env.pop("STUNTURN_KEY", None)
    if key:
        env["STUNTURN_KEY"] = key
    return subprocess.Popen([sys.executable, "-m", "stunturn_diag", "punch", url, *args],
                            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def finish(*procs, timeout=30):
    out = []
    for p in procs:
        try:
            out.append(p.communicate(timeout=timeout))
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


def test_json_on_both_sides(server):
    ini = cli(server, "--target-ip", "127.0.0.1", "--json")
    rec = cli(server, "--wait", "5", "--wait-interval", "0.05", "--json", "--protocol", "udp")
    (i_out, i_err), (r_out, r_err) = finish(ini, rec)
    assert (ini.returncode, rec.returncode) == (0, 0), (i_err, r_err)
    i, r = json.loads(i_out), json.loads(r_out)
    for d in (i, r):
        assert d["ok"] is True and d["protocol"] == "udp" and d["strategy"] == "lan"
        assert isinstance(d["connect_ms"], float)
    assert i["peer"] == r["local"] and r["peer"] == i["local"]
    assert "waiting for the receiver" in i_err       # progress goes to stderr


def test_receiver_alone_fails_fast_with_json_and_exit_1(server):
    (out, err), = finish(cli(server, "--json"))
    d = json.loads(out)
    assert d["ok"] is False and d["reason"] == "no-initiator"


def test_receiver_alone_without_json_is_a_clean_error(server):
    p = cli(server)
    (out, err), = finish(p)
    assert p.returncode == 1 and "no initiator" in err and "Traceback" not in err, (out, err)


def test_stdin_is_relayed_both_ways(server):
    ini = cli(server, "--target-ip", "127.0.0.1", stdin=subprocess.PIPE)
    rec = cli(server, "--wait", "5", "--wait-interval", "0.05", stdin=subprocess.PIPE)
    for proc, text in ((ini, "line from initiator\n"), (rec, "line from receiver\n")):
        proc.stdin.write(text)
        proc.stdin.close()
        proc.stdin = None
    (i_out, i_err), (r_out, r_err) = finish(ini, rec)
    assert i_out == "line from receiver\n" and r_out == "line from initiator\n", (i_err, r_err)


def _udp_echo(stop):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(0.1)

    def run():
        while not stop.is_set():
            try:
                data, src = s.recvfrom(2048)
            except socket.timeout:
                continue
            s.sendto(b"echo:" + data, src)
        s.close()
    threading.Thread(target=run, daemon=True).start()
    return s.getsockname()


def _tcp_echo(stop):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(0.1)

    def run():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except socket.timeout:
                continue
            with conn:
                conn.settimeout(5)
                data = conn.recv(1024)
                conn.sendall(b"echo:" + data)
        srv.close()
    threading.Thread(target=run, daemon=True).start()
    return srv.getsockname()


def _listening_address(proc, timeout=20.0) -> tuple[str, int]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        line = proc.stderr.readline()
        if "listening on" in line:
            host, port = line.strip().rsplit(" ", 1)[1].rsplit(":", 1)
            return host, int(port)
        if not line and proc.poll() is not None:
            break
    raise AssertionError("the initiator never listened")


@pytest.mark.parametrize("protocol", ["udp", "tcp"])
def test_forward_a_local_service_through_listen(server, protocol):
    stop = threading.Event()
    service = (_udp_echo if protocol == "udp" else _tcp_echo)(stop)
    rec = cli(server, "--wait", "10", "--wait-interval", "0.05", "--protocol", protocol,
              "--forward", f"{service[0]}:{service[1]}")
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    ini = cli(server, "--target-ip", "127.0.0.1", "--protocol", protocol,
              "--listen", f"127.0.0.1:{port}")
    try:
        addr = _listening_address(ini)
        if protocol == "udp":
            c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            c.settimeout(0.2)
            reply = None
            for _ in range(25):                      # datagrams: retry until answered
                c.sendto(b"hi", addr)
                try:
                    reply = c.recv(100)
                    break
                except socket.timeout:
                    continue
        else:
            c = socket.create_connection(addr, timeout=10)
            c.sendall(b"hi")
            reply = c.recv(100)
        c.close()
        assert reply == b"echo:hi"
    finally:
        stop.set()
        for p in (ini, rec):
            if p.poll() is None:
                p.terminate()
        finish(ini, rec, timeout=10)


def test_key_is_required_and_options_exclude_each_other():
    runner = CliRunner(env={"STUNTURN_KEY": None})
    res = runner.invoke(main, ["punch", "http://127.0.0.1:9"])
    assert res.exit_code == 2 and "--key" in res.output
    res = runner.invoke(main, ["punch", "http://127.0.0.1:9", "--key", "k" * 10, "--json",
                               "--forward", "127.0.0.1:22"])
    assert res.exit_code == 2 and "exclude" in res.output
    res = runner.invoke(main, ["punch", "http://127.0.0.1:9", "--key", "k" * 10,
                               "--forward", "nonsense"])
    assert res.exit_code == 1 and "HOST:PORT" in res.output


def test_forward_udp_to_an_unusable_address_is_a_clean_config_error():
    from stunturn_diag.errors import ConfigError
    from stunturn_diag.punch import relay
    from stunturn_diag.punch.channel import UdpChannel

    peer = object.__new__(UdpChannel)            # forward() fails before it touches the channel
    with pytest.raises(ConfigError, match="cannot connect to the local service"):
        relay.forward(peer, ("255.255.255.255", 9))   # UDP connect: EACCES, nothing is sent


@pytest.mark.parametrize("text,expected", [("0.0.0.0", ("0.0.0.0", 0)),
                                           ("127.0.0.1:4000", ("127.0.0.1", 4000)),
                                           ("::1", ("::1", 0)), ("[::]:4000", ("::", 4000)),
                                           ("[::1]", ("::1", 0))])
def test_bind_accepts_ip_and_optional_port(text, expected):
    from stunturn_diag.punch.relay import parse_bind
    assert parse_bind(text) == expected


@pytest.mark.parametrize("text", ["127.0.0.1:abc", "127.0.0.1:99999", "nonsense", "[::1]x",
                                  "host.example:80", "1.2.3.4:"])
def test_bad_bind_is_a_clean_usage_error(text):
    runner = CliRunner()
    res = runner.invoke(main, ["punch", "http://127.0.0.1:9", "--key", "k" * 10,
                               "--target-ip", "127.0.0.1", "--bind", text])
    assert res.exit_code == 1 and "--bind wants IP or IP:PORT" in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)


@pytest.mark.parametrize("flags,probes", [((), True), (("--probe",), True),
                                          (("--no-probe",), False),
                                          (("--no-cache",), True)])
def test_the_probe_runs_by_default_and_no_probe_skips_it(server, flags, probes):
    p = cli(server, "--json", *flags)
    (out, err), = finish(p)
    assert p.returncode == 1 and json.loads(out)["reason"] == "no-initiator", (out, err)
    assert ("probing this NAT" in err) is probes, err


def test_no_cache_probes_again_where_the_default_reuses(server, tmp_path):
    """Loopback has a network to name only where the host has a default gateway."""
    from stunturn_diag.punch.profile_cache import default_gateway

    if None in default_gateway():
        pytest.skip("no default gateway with a known MAC: nothing to key the cache on")
    runs = []
    for flags in ((), (), ("--no-cache",)):
        p = cli(server, "--json", *flags)
        (_out, err), = finish(p)
        runs.append(err)
    assert "probing this NAT" in runs[0]
    assert "from the cache" in runs[1] and "probing this NAT" not in runs[1]
    assert "probing this NAT" in runs[2]
