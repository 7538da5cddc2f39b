"""Added delay and jitter (``--delay``/``--jitter``) need the kernel's ``sch_netem``.

:func:`netem_steps` (pure) adds a netem qdisc on both ends of every site's link to the
internet router, so each direction of that link is delayed by ``delay_ms`` +- ``jitter_ms``
(site to server: one link; site to site: two). :func:`check_netem` tries such a qdisc in
a throwaway network namespace (``unshare --net``, gone with the process) and raises
LabUnavailable, exit 2, when the kernel has no netem.
"""

from __future__ import annotations

import shutil
import subprocess

from ... import sysdeps
from ...errors import LabUnavailable
from stunturn_diag.sansio.lab.topology import INET, Topology


def _netem_args(delay_ms: float, jitter_ms: float) -> list[str]:
    args = ["netem", "delay", f"{delay_ms:g}ms"]
    if jitter_ms:
        args.append(f"{jitter_ms:g}ms")
    return args


def netem_steps(topology: Topology, delay_ms: float,
                jitter_ms: float) -> list[tuple[str, list[str]]]:
    """``(node, argv)``: the ``tc`` commands that delay each site's internet link both
    ways (pure; run inside the node's namespace)."""
    if not delay_ms and not jitter_ms:
        return []
    args = _netem_args(delay_ms, jitter_ms)
    steps = []
    for name, site in topology.sites.items():
        edge = site.cgnat_node or site.nat_node
        for node, dev in ((INET, f"s-{name}"), (edge, "wan0")):
            steps.append((node, ["tc", "qdisc", "add", "dev", dev, "root", *args]))
    return steps


def check_netem() -> None:
    """Raise LabUnavailable unless a netem qdisc can be added here."""
    for tool in ("tc", "unshare"):
        if shutil.which(tool) is None:
            raise LabUnavailable(f"--delay/--jitter need the '{tool}' command",
                                 hint=f"apt-get install {sysdeps.tool(tool).package}")
    try:
        proc = subprocess.run(["unshare", "--net", "tc", "qdisc", "add", "dev", "lo", "root",
                               *_netem_args(1, 0)], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabUnavailable(f"cannot test for sch_netem: {exc}") from None
    if proc.returncode != 0:
        said = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise LabUnavailable("--delay/--jitter need the kernel's sch_netem, which this kernel "
                             f"lacks (tc said: {said})",
                             hint="use a kernel with CONFIG_NET_SCH_NETEM (`modprobe sch_netem`), "
                             "or drop --delay/--jitter; loss (--loss) works without it")
