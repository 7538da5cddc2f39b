"""Who owns a lab that ``lab run`` / ``lab matrix`` built, for ``lab down --all --mine``.

Before a runner creates a lab's first namespace it records the lab in the lab state
dir (:mod:`stunturn_diag.lab.state`) with an owner: its PID, that process's start
time (``/proc/PID/stat``, so a reused PID is not mistaken for it), the invoking user
(``SUDO_UID`` under sudo, else the uid) and the run family (``$STUNTURN_LAB_FAMILY``,
e.g. a CI job id; empty by default). A lab is *reapable* by a caller only when the
owner was the same user and family and its process is gone: a lab of a live run,
of another user or family, or without an owner (``lab up``, the Python API) is
never touched.
"""

from __future__ import annotations

import os

from ...errors import LabError
from .. import state

FAMILY_ENV = "STUNTURN_LAB_FAMILY"


def start_time(pid: int) -> int | None:
    """Field 22 of ``/proc/PID/stat`` (clock ticks since boot), None if there is no
    such (living, non-zombie) process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            fields = fh.read().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None
    if not fields or fields[0] == "Z":
        return None
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def invoking_uid() -> int:
    """The user behind this process: ``SUDO_UID`` when run through sudo, else the uid."""
    sudo = os.environ.get("SUDO_UID", "")
    return int(sudo) if sudo.isdigit() else os.getuid()


def me() -> dict:
    """This process as an owner record."""
    pid = os.getpid()
    return {"pid": pid, "start": start_time(pid), "uid": invoking_uid(),
            "family": os.environ.get(FAMILY_ENV, "")}


def same_owner_family(owner: dict, caller: dict) -> bool:
    """Pure: ``owner`` was recorded by the caller's user and run family."""
    return (owner.get("uid") == caller.get("uid")
            and (owner.get("family") or "") == (caller.get("family") or ""))


def reapable(owner: object, caller: dict, owner_alive: bool) -> bool:
    """Pure: may ``caller`` remove a lab recorded with ``owner``?"""
    return (isinstance(owner, dict) and isinstance(owner.get("pid"), int)
            and same_owner_family(owner, caller) and not owner_alive)


def alive(owner: dict) -> bool:
    """The owner's process still runs (same PID and start time)."""
    pid = owner.get("pid")
    return isinstance(pid, int) and pid > 0 and start_time(pid) == owner.get("start")


def claim(name: str, spec: dict, owner: dict | None = None) -> None:
    """Record lab ``name`` as ours before building it."""
    try:
        state.save(name, {"name": name, "spec": spec, "owner": owner or me()})
    except OSError as exc:
        raise LabError(f"cannot record lab {name} under {state.state_dir()}: {exc}",
                       hint="set STUNTURN_LAB_STATE_DIR to a writable folder") from None


def release(name: str) -> None:
    state.forget(name)


def reapable_labs(caller: dict | None = None) -> list[str]:
    """Names of recorded labs the caller may remove (its own runs' dead leftovers)."""
    caller = caller or me()
    names = []
    for name in state.known():
        try:
            owner = state.load(name).get("owner")
        except LabError:
            continue
        if isinstance(owner, dict) and reapable(owner, caller, alive(owner)):
            names.append(name)
    return names


def down_mine() -> list[str]:
    """``lab down --all --mine``: remove the labs of this user's (and family's) runs whose
    runner is gone (``kill -9``, a crash); returns the namespaces removed."""
    from ..runner import check_prerequisites, down

    check_prerequisites()
    gone: list[str] = []
    for name in reapable_labs():
        gone += down(name)
    return gone
