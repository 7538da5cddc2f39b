"""IPv6 in the lab (issue 14): every v6 behaviour of the catalogue, probed for real.

Each test builds its own lab (unique namespace prefix, always torn down) with a dual-stack
site, runs our server with both families (``serve V4 --alt-ip V4 --ip6 V6 --alt-ip6 V6``)
and the probe CLI on the LAN host: the ``ipv6`` block must equal the ground truth
``lab.expected(site)["ipv6"]`` and the IPv4 verdicts ``lab.expected(site)`` as before.
"""

from __future__ import annotations

import json
import sys
from ipaddress import ip_address

import pytest

from stunturn_diag.lab import Lab, LabSpec
from stunturn_diag.lab.pair_runner import serve_in_lab
from stunturn_diag.sansio.lab.v6 import V6_CATALOGUE

pytestmark = pytest.mark.netns

PORT = 8080


def serve_dual(lab: Lab) -> str:
    """Our server with both families on the lab's server host; its URL over IPv4."""
    proc = serve_in_lab(lab, http_port=PORT, extra=dual_stack_options(lab)).proc
    assert proc.poll() is None
    return f"http://{lab.server_ip}:{PORT}"


def dual_stack_options(lab: Lab) -> tuple[str, ...]:
    return ("--ip6", lab.server_ip6, "--alt-ip6", lab.server_alt_ip6)


def probe(lab: Lab, host: str, *args: str) -> tuple[int, dict]:
    r = lab.exec(host, [sys.executable, "-m", "stunturn_diag", "probe", *args, "--json"], timeout=90)
    assert r.stdout.strip(), f"no JSON output (exit {r.returncode}): {r.stderr[-2000:]}"
    return r.returncode, json.loads(r.stdout)


def mismatches(expected: dict, got: dict) -> dict:
    bad = {key: (expected[key], got.get(key)) for key in ("nat", "reachable")
           if key in expected and expected[key] != got.get(key)}
    for proto in ("udp", "tcp"):
        for key, value in expected[proto].items():
            if (got.get(proto) or {}).get(key) != value:
                bad[f"{proto}.{key}"] = (value, (got.get(proto) or {}).get(key))
    return bad


@pytest.mark.parametrize("name", list(V6_CATALOGUE))
def test_ipv6_verdicts_equal_ground_truth(name):
    with Lab(LabSpec.simple(V6_CATALOGUE[name], None)) as lab:
        url = serve_dual(lab)
        truth = lab.expected("a")
        for run in range(2):   # leftover conntrack state / learnt permits must not change it
            rc, got = probe(lab, "a1", url)
            six = got["ipv6"]
            assert six["reachable"] is True and six["status"] == "diagnosed", six["undetermined"]
            assert mismatches(truth["ipv6"], six) == {}, f"run {run}: {six['undetermined']}"
            assert six["public_ip"] == lab.site_public_ip6("a")
            assert six["local_ip"] == lab.host_ip6("a1")
            # the simultaneous open really ran over IPv6: a hop-limited SYN to the server's
            # IPv6 alternate, whose SYN the AF_INET6 watch saw (hop limit as IPv4's TTL: same path)
            so = six["tcp"]["evidence"]["simultaneous_open"]["detail"]
            assert so["via"] == "bpf-raw-socket" and so["local"]["ip"] == lab.host_ip6("a1"), so
            assert ip_address(so["server_source"]["ip"]) == ip_address(lab.server_alt_ip6), so
            assert so["ttl"] == got["tcp"]["evidence"]["simultaneous_open"]["detail"]["ttl"], so
            assert mismatches({k: truth[k] for k in ("nat", "udp", "tcp")}, got) == {}, f"run {run} (IPv4)"
            assert rc == 0 and got["status"] == "diagnosed", got["undetermined"]
            assert got["public_ip"] == lab.site_public_ip("a")
            if six["nat"] is False and six["udp"]["filtering"] != "endpoint-independent":
                assert six["verdict"].startswith(f"no NAT, but {six['udp']['filtering']} filtering")


def test_site_without_ipv6_gets_one_line_and_no_error():
    """Site a is dual-stack, site b has no IPv6 (its hosts hold link-local addresses
    only): b1's probe diagnoses IPv4 (exit 0) and says in one line why IPv6 was not."""
    with Lab(LabSpec.simple("port-restricted+v6=apdf", "full-cone")) as lab:
        url = serve_dual(lab)
        rc, got = probe(lab, "b1", url)
        assert rc == 0 and got["status"] == "diagnosed"
        assert got["ipv6"]["reachable"] is False and "no IPv6 route" in got["ipv6"]["reason"]
        text = lab.exec("b1", [sys.executable, "-m", "stunturn_diag", "probe", url], timeout=90)
        assert text.returncode == 0, text.stderr[-1000:]
        assert [line for line in text.stdout.splitlines() if "IPv6" in line] == [
            f"IPv6: not diagnosed - {got['ipv6']['reason']}"]


def test_pairing_matches_a_receiver_by_its_ipv6_address():
    """The initiator (a1, over IPv4) names the receiver's IPv4 and IPv6 addresses; the
    receiver (b1) checks in over IPv6 and is matched by its IPv6 address."""
    with Lab(LabSpec.simple("port-restricted+v6=apdf", "symmetric-random+v6=apdf")) as lab:
        url = serve_dual(lab)
        rid = "cd" * 32
        targets = [lab.site_public_ip("b"), lab.site_public_ip6("b")]
        initiator = lab.popen("a1", [sys.executable, "-c", (
            "import json,sys;from stunturn_diag.signaling import SignalingClient;"
            f"print(json.dumps(SignalingClient({url!r}).initiate({rid!r}, {targets!r}, 'udp', timeout=20)))")])
        url6 = f"http://[{lab.server_ip6}]:{PORT}"
        check = ("import json,sys,time;from stunturn_diag.signaling import SignalingClient;"
                 "from stunturn_diag.errors import SignalingError\n"
                 "for _ in range(100):\n"
                 f"  try: print(json.dumps(SignalingClient({url6!r}).checkin({rid!r}))); break\n"
                 "  except SignalingError as exc: print(exc, file=sys.stderr); time.sleep(0.1)\n")
        rr = lab.exec("b1", [sys.executable, "-c", check], timeout=30)
        assert rr.stdout.strip(), rr.stderr[-2000:] + (initiator.poll() is not None and
                                                        initiator.communicate()[1] or "")
        receiver = json.loads(rr.stdout)
        out, err = initiator.communicate(timeout=30)
        answer = json.loads(out)
        assert receiver["role"] == "receiver" and answer["role"] == "initiator", err
        assert answer["peer"]["observed"]["ip"] == lab.host_ip6("b1")
        assert receiver["peer"]["observed"]["ip"] == lab.site_public_ip("a")
        assert answer["match_id"] == receiver["match_id"]


def test_ipv6_stun_responder_names_its_ipv6_alternate():
    """RFC 5780 over IPv6: with --stun [V6]:3478 the probe learns the alternate from
    OTHER-ADDRESS (an IPv6 address) and gets the firewall's UDP verdicts right."""
    with Lab(LabSpec.simple("port-restricted+v6=adf", None)) as lab:
        serve_dual(lab)
        rc, got = probe(lab, "a1", "--stun", f"[{lab.server_ip6}]:3478")
        assert got["server"]["endpoints"]["source"] == "other-address"
        assert got["server"]["endpoints"]["alt_both"] == {"ip": lab.server_alt_ip6, "port": 3479}
        truth = lab.expected("a")["ipv6"]
        assert {k: got["udp"][k] for k in ("mapping", "filtering")} == \
            {k: truth["udp"][k] for k in ("mapping", "filtering")}
        assert rc == 0 and got["ipv6"]["public_ip"] == lab.host_ip6("a1")   # the block mirrors it


HOP_WALK = """
import errno, json, sys
from stunturn_diag.probe.layers import tcp_server_hop
out = {}
for dest, local in ((sys.argv[1], sys.argv[2]), (sys.argv[3], sys.argv[4])):
    seen = {}
    hop = tcp_server_hop((dest, 3478), local, rtt=0.1, max_hops=4, outcomes=seen)
    out[dest] = {"hop": hop, "unreachable": sorted(t for t, e in seen.items() if e == errno.EHOSTUNREACH)}
print(json.dumps(out))
"""


def test_tcp_hop_walk_sees_each_lower_hop_limit_die_over_both_families():
    """The TCP hop walk (the simultaneous-open TTL over IPv6, and over IPv4 where UDP is
    blocked): a1 -> gateway -> internet router -> server is 3 hops over both families, and
    the connects with TTL / hop limit 1 and 2 fail on the time exceeded, not left pending
    (Linux takes an ICMPv6 error in SYN-SENT for a soft error unless IPV6_RECVERR is set:
    the connect would fail only when the retransmitted SYN dies, ~1 s later)."""
    with Lab(LabSpec.simple("port-restricted+v6=adf", None)) as lab:
        serve_dual(lab)
        r = lab.exec("a1", [sys.executable, "-c", HOP_WALK, lab.server_ip6, lab.host_ip6("a1"),
                            lab.server_ip, lab.host_ip("a1")], timeout=30)
        assert r.returncode == 0, r.stderr[-2000:]
        got = json.loads(r.stdout)
        assert got == {lab.server_ip6: {"hop": 3, "unreachable": [1, 2]},
                       lab.server_ip: {"hop": 3, "unreachable": [1, 2]}}, got
