"""What the default NAT probe adds before pairing, per NAT type (needs root).

For each NAT type of the *measured* side: one lab (that NAT on site b, a port-restricted
site a), the real server, ``--repeat`` pairs per mode (over UDP; TCP when b blocks UDP).
The receiver (b1, both transports prepared, as by default) is timed from its
``receive()`` call to the match (the check-in's answer); the initiator (a1) from its
``initiate()`` call to the start of its long-poll.
Modes: ``no-probe`` (``--no-probe``), ``probe`` (fresh cache: the quick probe runs),
``cached`` (the profile from the previous run). Prints the median per mode and the
difference to ``no-probe`` (what the default adds), and a JSON summary with ``--json``.

    sudo python3 benchmarks/bench_punch_defaults.py [--repeat 5] [--nats port-restricted,...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

#: runs in a lab host: one side of a pair through the library; prints its timings as JSON
PEER = r"""
import json, sys, time
from stunturn_diag.errors import StunturnError
from stunturn_diag.punch import api
role, url, key, target, mode, protocol = sys.argv[1:7]
marks = {}
t0 = time.monotonic()
def say(m):
    for word in ("waiting for the receiver", "matched"):
        if m.startswith(word) and word not in marks:
            marks[word] = round((time.monotonic() - t0) * 1000, 1)
            if word.startswith("waiting"):
                print(json.dumps({"waiting": True}), flush=True)
opts = dict(probe=mode != "no-probe", cache=True, punch_timeout=5.0, progress=say)
try:
    if role == "initiator":
        r = api.initiate(url, key, target, protocol=protocol, pair_timeout=30, **opts)
    else:
        r = api.receive(url, key, wait=10, wait_interval=0.02, **opts)
    ok = True; r.close()
except StunturnError as e:
    ok = e.reason
print(json.dumps({"ok": ok, **marks}), flush=True)
"""

MODES = ("no-probe", "probe", "cached")


def one_pair(lab, url: str, mode: str, caches: dict, protocol: str) -> tuple[dict, dict]:
    target = lab.site_public_ip("b")

    def start(host: str, role: str) -> subprocess.Popen:
        env = dict(os.environ, XDG_CACHE_HOME=caches[host], PYTHONUNBUFFERED="1")
        return lab.popen(host, [sys.executable, "-c", PEER, role, url, "bench-key-0123",
                                target, mode, protocol], env=env)

    ini = start("a1", "initiator")
    first = ini.stdout.readline()          # the initiator long-polls before the receiver starts
    if "waiting" not in first:
        raise RuntimeError(f"initiator: {first!r} {ini.stderr.read()[-400:]}")
    rec = start("b1", "receiver")
    r_out, _ = rec.communicate(timeout=60)
    i_out, _ = ini.communicate(timeout=60)
    return json.loads(i_out.strip().splitlines()[-1]), json.loads(r_out.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--nats", default="port-restricted,symmetric-sequential,udp-blocked")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_punch_defaults needs root (it builds network namespaces)", file=sys.stderr)
        return 2
    from stunturn_diag.lab import Lab, LabSpec
    from stunturn_diag.lab.pair_runner import HTTP_PORT, serve_in_lab

    summary = []
    for nat in args.nats.split(","):
        with Lab(LabSpec.simple("port-restricted", nat)) as lab, \
                tempfile.TemporaryDirectory() as tmp:
            serve_in_lab(lab)
            url = f"http://{lab.server_ip}:{HTTP_PORT}"
            figures: dict = {m: {"receiver_to_match_ms": [], "initiator_to_long_poll_ms": [],
                                 "results": []} for m in MODES}
            for i in range(args.repeat):
                for mode in MODES:
                    # "probe" starts from an empty cache; "cached" reuses what "probe" stored
                    if mode != "cached":
                        caches = {h: os.path.join(tmp, f"{h}-{mode}-{i}") for h in ("a1", "b1")}
                    ini, rec = one_pair(lab, url, mode, caches,
                                        "tcp" if nat == "udp-blocked" else "udp")
                    figures[mode]["receiver_to_match_ms"].append(rec.get("matched"))
                    figures[mode]["initiator_to_long_poll_ms"].append(
                        ini.get("waiting for the receiver"))
                    figures[mode]["results"].append((ini["ok"], rec["ok"]))
        base = {}
        for mode in MODES:
            row = {"nat": nat, "mode": mode, "results": sorted({str(r) for r in
                                                                figures[mode]["results"]})}
            for name in ("receiver_to_match_ms", "initiator_to_long_poll_ms"):
                values = [v for v in figures[mode][name] if v is not None]
                med = round(statistics.median(values), 1) if values else None
                row[name] = med
                if mode == "no-probe":
                    base[name] = med
                elif med is not None and base.get(name) is not None:
                    row[name.replace("_ms", "_added_ms")] = round(med - base[name], 1)
            summary.append(row)
            print(f"{nat:22s} {mode:9s} receiver->match {row['receiver_to_match_ms']!s:>7} ms "
                  f"(+{row.get('receiver_to_match_added_ms', 0)})  initiator->long-poll "
                  f"{row['initiator_to_long_poll_ms']!s:>7} ms "
                  f"(+{row.get('initiator_to_long_poll_added_ms', 0)})  {row['results']}",
                  flush=True)
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
