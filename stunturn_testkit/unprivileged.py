"""Run a command as an ordinary user (needs root): the suites' unprivileged runs."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

#: run argv as uid/gid 65534 with no capability but CAP_DAC_READ_SEARCH: that one only
#: lets the interpreter and the checkout be read wherever they live (pyenv under a
#: 0700 /root, a CI clone under a 0700 temp folder); it grants nothing on the network
#: (no binding below 1024, no raw sockets, no CAP_NET_ADMIN)
UNPRIVILEGED_PREFIX = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                       "--inh-caps=-all,+dac_read_search", "--ambient-caps=+dac_read_search",
                       "--bounding-set=-all,+dac_read_search"]

KEY = "unprivileged-lab-key"


def unprivileged_argv(argv: list[str]) -> list[str]:
    """``argv`` wrapped to run as an ordinary user (nobody, no network capability); needs root."""
    return [*UNPRIVILEGED_PREFIX, *argv]


@dataclass
class PairRun:
    """Both peers' exit status, stdout and stderr."""

    i_rc: int
    r_rc: int
    i_out: str
    r_out: str
    i_err: str
    r_err: str

    @property
    def ok(self) -> bool:
        return (self.i_rc, self.r_rc) == (0, 0)

    def reasons(self) -> list[str]:
        """Each failed side's last stderr line (its one-line error)."""
        out = []
        for side, rc, err in (("initiator", self.i_rc, self.i_err),
                              ("receiver", self.r_rc, self.r_err)):
            if rc:
                lines = err.strip().splitlines() or [""]
                out.append(f"{side} rc={rc}: {lines[-1]}")
        return out


def punch_two_masquerades(protocol: str, nat: str = "port-restricted", *,
                          icmp_ratelimit_ms: int | None = None) -> PairRun:
    """`stunturn-diag punch` as nobody on both sides of two ``nat`` sites (a fresh lab,
    the real server, a real signaling round); each side relays one line to the other.
    ``icmp_ratelimit_ms``: the core router's ``net.ipv4.icmp_ratelimit`` (0: an ICMP
    Time Exceeded for every priming packet; Linux's default 1000 answers a burst of a
    few, then about one a second per destination)."""
    from stunturn_diag.lab import Lab, LabSpec
    from stunturn_diag.lab.pair_runner import HTTP_PORT, serve_in_lab
    from stunturn_diag.sansio.lab.topology import INET

    with Lab(LabSpec.simple(nat, nat)) as lab:
        if icmp_ratelimit_ms is not None:
            lab.exec(INET, ["sysctl", "-qw", f"net.ipv4.icmp_ratelimit={icmp_ratelimit_ms}"],
                     check=True)
        serve_in_lab(lab)
        env = dict(os.environ, STUNTURN_KEY=KEY)
        url = f"http://{lab.server_ip}:{HTTP_PORT}"

        def punch(host, *args):
            return lab.popen(host, unprivileged_argv([sys.executable, "-m", "stunturn_diag",
                                                      "punch", url, *args]),
                             env=env, stdin=subprocess.PIPE)
        ini = punch("a1", "--target-ip", lab.site_public_ip("b"), "--protocol", protocol)
        rec = punch("b1", "--wait", "15", "--wait-interval", "0.05")
        for proc, text in ((ini, "hello from a1\n"), (rec, "hello from b1\n")):
            proc.stdin.write(text)
            proc.stdin.close()
            proc.stdin = None
        r_out, r_err = rec.communicate(timeout=60)
        i_out, i_err = ini.communicate(timeout=60)
    return PairRun(ini.returncode, rec.returncode, i_out, r_out, i_err, r_err)
