"""Lab management across CLI invocations: up, exec, status, catalogue (``lab`` command)."""

from __future__ import annotations

import subprocess

from ..errors import LabError
from . import state
from stunturn_diag.sansio.lab.catalogue import CATALOGUE
from .runner import Lab, check_prerequisites, list_namespaces, PREFIX_FAMILY
from stunturn_diag.sansio.lab.spec import LabSpec


def up(spec: LabSpec) -> Lab:
    """Build a lab that outlives this process (remembered in the state dir)."""
    lab = Lab(spec)
    lab.up()
    try:
        lab.save_state()
    except OSError as exc:
        lab.down()
        raise LabError(f"cannot save lab state under {state.state_dir()}: {exc}") from None
    return lab


def exec_in(name: str, node: str, argv: list[str]) -> int:
    """Run ``argv`` inside ``node`` of lab ``name`` with this terminal; its exit status."""
    check_prerequisites()
    if not argv:
        raise LabError("nothing to run", hint="stunturn-diag lab exec NAME NODE -- CMD ...")
    lab = Lab.attach(name)
    netns = lab.netns(node)
    if netns not in list_namespaces():
        raise LabError(f"lab {name} is not up (namespace {netns} is missing)",
                       hint=f"`stunturn-diag lab down {name}` forgets it")
    try:
        return subprocess.run(lab.command(node, argv), check=False).returncode
    except OSError as exc:
        raise LabError(f"cannot run {argv[0]!r} in {node}: {exc}") from None


def status() -> dict:
    """Labs we remember, plus stray namespaces of our ``stl-`` family (e.g. after a crash)."""
    check_prerequisites()
    namespaces = [n for n in list_namespaces() if n.startswith(PREFIX_FAMILY)]
    labs = []
    for name in state.known():
        try:
            lab = Lab.attach(name)
        except LabError as exc:
            labs.append({"name": name, "error": str(exc)})
            continue
        info = lab.describe()
        mine = [lab.netns(n) for n in lab.node_names]
        info["up"] = all(n in namespaces for n in mine)
        labs.append(info)
    known = {ns for info in labs for ns in info.get("nodes", {}).values()}
    return {"labs": labs, "stray_namespaces": sorted(set(namespaces) - known)}


def catalogue() -> list[dict]:
    """Every catalogue entry with its settings and ground truth."""
    return [{"name": name, "description": nat.description, "settings": nat.to_dict(),
             "expected": nat.expected} for name, nat in CATALOGUE.items()]
