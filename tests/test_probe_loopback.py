"""`probe` end to end on loopback against the real server (127.0.0.1 + alternate 127.0.0.2):
no NAT, so every verdict is known; JSON schema, human report, CLI exit codes."""

from __future__ import annotations

import json
import os
import socket

import pytest
from click.testing import CliRunner

from stunturn_diag.cli import main
from stunturn_diag.probe import EXIT_DIAGNOSED, EXIT_UNREACHABLE, run_probe
from stunturn_diag.sansio.probe.report import render
from stunturn_server.config import ServerConfig
from stunturn_server.runner import start_server


@pytest.fixture(scope="module")
def server():
    handle = start_server(ServerConfig(http_port=0, stun_port=0, alt_port=0, alt_ip="127.0.0.2"))
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def result(server):
    return run_probe(server.http_url)


def test_no_nat_verdicts(result):
    j = result.to_json()
    assert j["nat"] is False and j["public_ip"] == "127.0.0.1" and j["status"] == "diagnosed"
    assert j["udp"]["reachable"] is True
    assert j["udp"]["mapping"] == "no-nat" and j["udp"]["filtering"] == "endpoint-independent"
    assert j["udp"]["port_preservation"] is True
    # questions that do not arise without a NAT are null and marked not applicable
    for key in ("port_allocation", "hairpin", "mapping_moves_on_unsolicited"):
        assert j["udp"][key] is None and j["udp"]["evidence"][key]["applicable"] is False
    assert j["tcp"]["reachable"] is True and j["tcp"]["mapping"] == "no-nat"
    assert j["tcp"]["filtering"] == "endpoint-independent" and j["tcp"]["unsolicited_syn"] == "pass"
    assert j["undetermined"] == [] and result.exit_code == EXIT_DIAGNOSED


def test_json_schema_is_stable(result):
    j = json.loads(json.dumps(result.to_json()))
    assert j["schema"] == "stunturn-diag/probe" and j["schema_version"] == 1
    for key in ("status", "exit_code", "nat", "public_ip", "local_ip", "elapsed_ms", "server", "udp", "tcp",
                "nat_layers", "undetermined", "skipped", "failed", "notes", "timings", "probes"):
        assert key in j
    for key in ("reachable", "mapping", "filtering", "port_preservation", "port_allocation",
                "port_allocation_delta", "predicted_next_port", "hairpin", "mapping_moves_on_unsolicited",
                "mapped_address", "classic_label", "evidence"):
        assert key in j["udp"]
    for key in ("reachable", "mapping", "port_preservation", "port_allocation", "filtering",
                "unsolicited_syn", "simultaneous_open", "evidence"):
        assert key in j["tcp"]
    names = {p["probe"] for p in j["probes"]}
    assert {"map.primary", "map.alt_ip", "map.alt_both", "filt.change_both", "filt.change_port",
            "hair.a_to_b", "unsol.after"} <= names
    assert j["timings"]["udp_ms"] > 0 and j["elapsed_ms"] >= j["timings"]["udp_ms"]


def test_profile_is_compact(result):
    prof = result.profile()
    assert prof["udp"]["mapping"] == "no-nat" and len(json.dumps(prof)) < 2048


def test_report_names_rfc_terms_and_meaning(result):
    text = render(result)
    assert "Mapping behaviour (RFC 4787 4.1, RFC 5780 4.3): no-nat" in text
    assert "What this means" in text and "status: diagnosed" in text


def test_stun_mode_uses_other_address(server):
    primary = next(e for e in server.stun_endpoints if e["role"] == "primary")
    r = run_probe(stun=f"{primary['ip']}:{primary['port']}", tcp=True)
    j = r.to_json()
    assert j["server"]["endpoints"]["source"] == "other-address"
    assert j["udp"]["filtering"] == "endpoint-independent" and j["udp"]["mapping"] == "no-nat"
    assert j["tcp"]["reachable"] is None and any(s["test"] == "tcp" for s in j["skipped"])
    assert r.exit_code == EXIT_DIAGNOSED


def test_lifetime_probes_run_in_parallel(server):
    r = run_probe(server.http_url, tcp=False, lifetime=2)
    life = r.to_json()["udp"]["binding_lifetime"]
    assert life == {"min_s": 2.0, "max_s": None}  # no NAT: nothing ever expires


def test_cli_json_and_exit_code(server):
    out = CliRunner().invoke(main, ["probe", server.http_url, "--json", "--no-tcp"])
    assert out.exit_code == 0, out.output
    j = json.loads(out.stdout)
    assert j["udp"]["mapping"] == "no-nat" and j["tcp"]["mapping"] is None


def _closed_port(kind=socket.SOCK_STREAM) -> int:
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_cli_server_unreachable_exit_code():
    out = CliRunner().invoke(main, ["probe", f"http://127.0.0.1:{_closed_port()}", "--json"])
    assert out.exit_code == EXIT_UNREACHABLE
    j = json.loads(out.stdout)
    assert j["status"] == "unreachable" and j["notes"]


def test_cli_usage_errors():
    assert CliRunner().invoke(main, ["probe"]).exit_code == 2
    out = CliRunner().invoke(main, ["probe", "--stun", "host:notaport"])
    assert out.exit_code == 1 and "bad --stun address" in out.output


def test_without_root_tcp_simopen_and_pcap_are_skipped_with_reasons(server, monkeypatch, tmp_path):
    from stunturn_diag.probe import pcap, tcp_runner
    monkeypatch.setattr(tcp_runner, "has_raw_socket_capability", lambda: False)
    monkeypatch.setattr(pcap.os, "geteuid", lambda: 1000)
    r = run_probe(server.http_url, pcap=str(tmp_path / "x.pcap"))
    skipped = {s["test"]: s["reason"] for s in r.to_json()["skipped"]}
    assert "root" in skipped["pcap"] and "root" in skipped["tcp.simultaneous_open"]
    assert r.to_json()["udp"]["mapping"] == "no-nat"  # every UDP test still ran
    assert not (tmp_path / "x.pcap").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="capturing needs root")
def test_pcap_holds_the_probe_packets(server, tmp_path):
    import scapy.layers.inet  # noqa: F401
    from scapy.utils import rdpcap
    path = tmp_path / "probe.pcap"
    r = run_probe(server.http_url, tcp=False, pcap=str(path))
    assert not [s for s in r.to_json()["skipped"] if s["test"] == "pcap"]
    packets = rdpcap(str(path))
    ports = {p.sport for p in packets if p.haslayer("UDP")} | {p.dport for p in packets if p.haslayer("UDP")}
    primary = next(e for e in server.stun_endpoints if e["role"] == "primary")["port"]
    assert primary in ports and len(packets) >= 10


def _walk_finds_a_router(monkeypatch):
    """Loopback has no router for the low-TTL SYN to die at: the TTL walk (UDP) is made to
    report the server three hops away, so the simultaneous-open test really runs."""
    from stunturn_diag.probe import layers

    def walk(dest, local_ip, public, *, on_server_hop=None, **kw):
        on_server_hop(3)
        return {"hops": [], "server_hop": 3}
    monkeypatch.setattr(layers, "walk", walk)


@pytest.mark.skipif(os.geteuid() != 0, reason="the simultaneous-open test needs root")
def test_broken_scapy_makes_the_result_partial_with_the_reason(server, monkeypatch):
    """Scapy that cannot be imported: reported at once (no start timeout waited), as a failed
    test, and the status is partial (exit 3) although every core verdict is decided."""
    from stunturn_diag.probe import simopen_runner as simopen
    _walk_finds_a_router(monkeypatch)
    monkeypatch.setattr(simopen, "_scapy", {"error": "Scapy is not usable here (ImportError: broken)"})
    monkeypatch.setattr(simopen, "_loaded", __import__("threading").Event())
    simopen._loaded.set()
    j = run_probe(server.http_url).to_json()
    print("simultaneous-open phase:", j["timings"]["tcp_phases_ms"]["simultaneous_open"], "ms")
    assert j["status"] == "partial" and j["exit_code"] == 3
    assert j["tcp"]["simultaneous_open"] is None
    assert j["tcp"]["evidence"]["simultaneous_open"]["failed"] is True
    failed = {f["test"]: f["reason"] for f in j["failed"]}
    assert "ImportError" in failed["tcp.simultaneous_open"]
    assert {u["field"] for u in j["undetermined"]} == {"tcp.simultaneous_open"}
    assert "undetermined tcp.simultaneous_open: the test failed" in render(run_probe(server.http_url))


@pytest.mark.skipif(os.geteuid() != 0, reason="the simultaneous-open test needs root")
def test_refused_raw_socket_makes_the_result_partial(server, monkeypatch):
    from stunturn_diag.probe import simopen_runner as simopen
    _walk_finds_a_router(monkeypatch)

    def refuse(dport, ipv6=False):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(simopen, "SynWatch", refuse)
    j = run_probe(server.http_url).to_json()
    assert j["status"] == "partial" and "raw sockets" in j["tcp"]["evidence"]["simultaneous_open"]["reason"]


@pytest.mark.skipif(os.geteuid() != 0, reason="simultaneous open and capture need root")
def test_simultaneous_open_and_pcap_run_without_libpcap(server, monkeypatch, tmp_path):
    """The SYN watch (BPF raw socket) decides the test on loopback (our SYN goes nowhere, the
    server's SYN arrives); --pcap writes what the BPF capture saw."""
    import scapy.layers.inet  # noqa: F401
    from scapy.utils import rdpcap
    _walk_finds_a_router(monkeypatch)
    r = run_probe(server.http_url, pcap=str(tmp_path / "p.pcap"))
    j = r.to_json()
    assert j["tcp"]["simultaneous_open"] is True, j["tcp"]["evidence"]["simultaneous_open"]
    assert j["status"] == "diagnosed" and j["failed"] == [] and r.exit_code == EXIT_DIAGNOSED
    ttl = j["tcp"]["evidence"]["simultaneous_open"]["detail"]["ttl"]
    packets = rdpcap(str(tmp_path / "p.pcap"))
    assert any(p.haslayer("TCP") and str(p["TCP"].flags) == "S" and p["IP"].ttl == ttl for p in packets)


@pytest.mark.skipif(os.geteuid() != 0, reason="capturing needs root")
def test_a_capture_that_cannot_start_is_a_failure_not_a_skip(server, monkeypatch, tmp_path):
    from stunturn_diag.probe import pcap

    def refuse(*a, **kw):
        raise OSError(19, "No such device")
    monkeypatch.setattr(pcap, "PacketCapture", refuse)
    j = run_probe(server.http_url, tcp=False, pcap=str(tmp_path / "p.pcap")).to_json()
    assert j["status"] == "partial" and j["exit_code"] == 3
    assert [f["test"] for f in j["failed"]] == ["pcap"] and "No such device" in j["failed"][0]["reason"]
    assert not [s for s in j["skipped"] if s["test"] == "pcap"]


def test_without_alternate_address_it_says_what_it_could_not_decide():
    handle = start_server(ServerConfig(http_port=0, stun_port=0, alt_port=0))
    try:
        r = run_probe(handle.http_url)
    finally:
        handle.stop()
    j = r.to_json()
    assert j["udp"]["mapping"] == "no-nat"  # decided from the primary alone
    assert j["udp"]["filtering"] is None and "alternate" in j["udp"]["evidence"]["filtering"]["reason"]
    assert {u["field"] for u in j["undetermined"]} >= {"udp.filtering"}
    assert j["status"] == "partial" and r.exit_code == 3
    assert any("alternate" in n for n in j["notes"])


def _cli(*args: str):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "stunturn_diag", "probe", *args], capture_output=True,
                          text=True, timeout=60)


def test_real_process_exit_codes_without_traceback(server):
    """0 diagnosed, 3 partial, 4 unreachable (HTTP down, or no STUN answer at all): real CLI."""
    r = _cli(server.http_url, "--json", "--no-tcp")
    assert r.returncode == 0 and json.loads(r.stdout)["status"] == "diagnosed"
    down = _cli(f"http://127.0.0.1:{_closed_port()}")
    assert down.returncode == EXIT_UNREACHABLE and "Traceback" not in down.stderr
    assert down.stdout.startswith("Could not reach the server") and "Connection refused" in down.stdout
    silent = _cli("--stun", f"127.0.0.1:{_closed_port(socket.SOCK_DGRAM)}", "--json")
    assert silent.returncode == EXIT_UNREACHABLE and "Traceback" not in silent.stderr
    j = json.loads(silent.stdout)
    assert j["status"] == "unreachable" and j["udp"]["reachable"] is False
    assert "no answer" in j["udp"]["evidence"]["mapping"]["reason"]
    # a port-unreachable from the server itself is not a router hop of the TTL walk
    assert all(h["from"] is None for h in (j["nat_layers"] or {}).get("hops", []))


def test_json_keys_are_the_same_in_every_mode(server, result):
    """The documented keys are always present (null when undetermined or not run): full run,
    --stun (no TCP), and an unreachable server."""
    from stunturn_diag.sansio.probe.result import TCP_EXTRA_KEYS, TCP_VERDICT_KEYS, UDP_KEYS
    primary = next(e for e in server.stun_endpoints if e["role"] == "primary")
    docs = [result.to_json(), run_probe(stun=f"{primary['ip']}:{primary['port']}").to_json(),
            run_probe(f"http://127.0.0.1:{_closed_port()}").to_json()]
    top = {"schema", "schema_version", "status", "exit_code", "nat", "public_ip", "local_ip", "elapsed_ms",
           "server", "udp", "tcp", "nat_layers", "undetermined", "skipped", "failed", "notes", "timings", "probes",
           "port_mapping", "ipv6"}   # ipv6: issue 14, an added key (null from run_probe alone)
    for j in docs:
        assert set(j) == top
        assert set(UDP_KEYS) <= set(j["udp"]), set(UDP_KEYS) - set(j["udp"])
        assert {"reachable", "evidence", *TCP_VERDICT_KEYS, *TCP_EXTRA_KEYS} <= set(j["tcp"])
    assert [j["status"] for j in docs] == ["diagnosed", "diagnosed", "unreachable"]


# --- the punch profile (what `punch` runs before pairing) ---------------------------------

PUNCH_LEFT_OUT = {"udp.hairpin", "udp.mapping_moves_on_unsolicited", "tcp.simultaneous_open",
                  "nat_layers"}


def test_punch_profile_decides_what_punching_reads_and_leaves_the_rest_out(server, result):
    r = run_probe(server.http_url, punch_profile=True)
    j = r.to_json()
    assert j["status"] == "diagnosed" and j["undetermined"] == [] and j["failed"] == []
    for proto in ("udp", "tcp"):
        assert j[proto]["reachable"] is True and j[proto]["mapping"] == "no-nat"
        assert j[proto]["filtering"] == "endpoint-independent"
        assert j[proto]["port_allocation"] is None  # no NAT: not applicable, as in the full probe
    skipped = {s["test"]: s["reason"] for s in j["skipped"]}
    assert PUNCH_LEFT_OUT <= set(skipped) and "punch profile" in skipped["udp.hairpin"]
    assert j["udp"]["hairpin"] is None and "not tested" in j["udp"]["evidence"]["hairpin"]["reason"]
    assert j["nat_layers"] is None and j["tcp"]["simultaneous_open"] is None
    names = {p["probe"] for p in j["probes"]}
    assert {"map.primary", "map.alt_ip", "map.alt_both", "map.alt_port", "filt.change_both",
            "filt.change_port", "alloc.4"} <= names
    assert not {n for n in names if n.startswith(("hair.", "unsol."))}
    assert j["timings"]["packets"]["sent"] < result.to_json()["timings"]["packets"]["sent"]
    # the full probe still runs everything
    assert {"hair.a_to_b", "unsol.after"} <= {p["probe"] for p in result.to_json()["probes"]}


def test_punch_profile_uses_the_callers_server_info():
    """Given the /v1/info answer, the probe asks no more: with a URL where nothing listens it
    still diagnoses UDP from the STUN endpoints that answer named."""
    from stunturn_diag.signaling import SignalingClient

    handle = start_server(ServerConfig(http_port=0, stun_port=0, alt_port=0, alt_ip="127.0.0.2"))
    try:
        info = SignalingClient(handle.http_url).info()
        url = f"http://127.0.0.1:{_closed_port()}"
        j = run_probe(url, tcp=False, punch_profile=True, info=info).to_json()
    finally:
        handle.stop()
    assert j["status"] == "diagnosed" and j["udp"]["mapping"] == "no-nat"
    assert j["udp"]["filtering"] == "endpoint-independent"
    assert run_probe(url, tcp=False, punch_profile=True).to_json()["status"] == "unreachable"


@pytest.mark.parametrize("kw", [{"lifetime": 5}, {"pcap": "x.pcap"}])
def test_punch_profile_refuses_what_it_does_not_run(kw):
    from stunturn_diag.errors import ProbeError
    with pytest.raises(ProbeError, match="punch profile"):
        run_probe("http://127.0.0.1:9", punch_profile=True, **kw)


def test_tcp_connect_back_wait_is_rtt_derived_with_a_lower_floor_for_the_punch_profile(server):
    """The server's connect-back timeout: 8 RTT, floored at 100 ms for the full probe and the
    punch profile (loopback's RTT is far below it); both decide filtering."""
    from stunturn_diag.sansio.probe.endpoints import from_info
    from stunturn_diag.probe.tcp_runner import alloc_test, connect_back_ms, run_tcp_rest
    from stunturn_diag.sansio.probe.evidence import TcpEvidence
    from stunturn_diag.sansio.probe.tcp_classify import classify_tcp_filtering
    from stunturn_diag.signaling import SignalingClient

    assert connect_back_ms(0.0001) == 100 and connect_back_ms(0.0001, 100) == 100
    assert connect_back_ms(0.05, 100) == 400 and connect_back_ms(None, 100) == 400
    assert connect_back_ms(1.0) == 2000  # the server's upper bound
    client = SignalingClient(server.http_url)
    ep = from_info(client.info())
    for punch_profile, floor in ((True, 100), (False, 100)):
        bodies: list[dict] = []

        def assist(body):
            bodies.append(body)
            return client.post("/v1/probe/tcp-connect", body)
        run = TcpEvidence()
        held = alloc_test(run, ep, "127.0.0.1")
        run_tcp_rest(run, ep, "127.0.0.1", assist=assist, punch_profile=punch_profile, held=held)
        assert [b["timeout_ms"] for b in bodies] == [floor]
        assert classify_tcp_filtering(run.assist)[0].value.value == "endpoint-independent"
        why = {s["test"]: s["reason"] for s in run.skipped}["tcp.simultaneous_open"]
        assert ("punch profile" in why) is punch_profile


def test_the_second_filtering_round_stays_within_the_servers_timeout_bound(server):
    """Silence on a lossy path is asked again with twice the timeout; from a high-RTT path
    (1.5 s connect-back) that must still be a request the server accepts (<= 2000 ms)."""
    from stunturn_diag.sansio.probe.endpoints import from_info
    from stunturn_diag.probe.tcp_runner import _filtering_test
    from stunturn_diag.sansio.probe.evidence import TcpEvidence
    from stunturn_diag.signaling import SignalingClient
    from stunturn_server.sansio.validation import connect_back_request

    ep = from_info(SignalingClient(server.http_url).info())
    bodies: list[dict] = []

    def silent_server(body):  # what a NAT dropping every SYN looks like to the client
        bodies.append(body)
        return {"results": [{"from": f, "outcome": "timeout", "attempts": []} for f in body["from"]]}
    run = TcpEvidence()
    _filtering_test(run, ep, "127.0.0.1", silent_server, 3.0, 1500, loss_seen=lambda: True)
    assert [b["timeout_ms"] for b in bodies] == [1500, 2000]
    for body in bodies:
        connect_back_request(body)  # the server's own validation: no BadRequest
