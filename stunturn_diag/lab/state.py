"""Where ``stunturn-diag lab up`` remembers a lab for later ``exec``/``down`` calls, and the
lab's temporary folders (coturn's, miniupnpd's, the demo's), named after the lab so that
``lab down`` removes them too when the process that made them was killed."""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import LabError

PREFIX_FAMILY = "stl-"


def state_dir() -> Path:
    """``$STUNTURN_LAB_STATE_DIR``, else ``/run/stunturn-diag/labs`` (root) or
    ``$XDG_RUNTIME_DIR/stunturn-diag/labs``."""
    if os.environ.get("STUNTURN_LAB_STATE_DIR"):
        return Path(os.environ["STUNTURN_LAB_STATE_DIR"])
    base = Path("/run") if os.geteuid() == 0 else Path(os.environ.get("XDG_RUNTIME_DIR", "/tmp"))
    return base / "stunturn-diag" / "labs"


def save(name: str, data: dict) -> Path:
    path = state_dir() / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)
    return path


def load(name: str) -> dict:
    path = state_dir() / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise LabError(f"no lab called {name!r} is up",
                       hint="see `stunturn-diag lab status`") from None
    except (OSError, ValueError) as exc:
        raise LabError(f"lab state {path} is unreadable: {exc}",
                       hint=f"`stunturn-diag lab down {name}` removes it") from None


def forget(name: str) -> None:
    (state_dir() / f"{name}.json").unlink(missing_ok=True)


def known() -> list[str]:
    d = state_dir()
    if not d.is_dir():
        return []
    return sorted(p.stem for p in d.glob(f"{PREFIX_FAMILY}*.json"))


def new_workdir(name: str, what: str) -> Path:
    """A fresh temporary folder ``<tmp>/<lab name>-<what>-XXXX`` (mode 0700) for lab ``name``."""
    return Path(tempfile.mkdtemp(prefix=f"{name}-{what}-"))


def forget_workdirs(name: str) -> list[Path]:
    """Remove this user's leftover temporary folders of lab ``name``: what a ``kill -9`` of
    ``lab demo`` or a crashed runner left behind. Returns the folders removed."""
    if not name.startswith(PREFIX_FAMILY) or len(name) <= len(PREFIX_FAMILY):
        return []
    gone = []
    for path in Path(tempfile.gettempdir()).glob(glob.escape(name) + "-*"):
        try:
            if path.is_symlink() or not path.is_dir() or path.stat().st_uid != os.getuid():
                continue
        except OSError:
            continue
        shutil.rmtree(path, ignore_errors=True)
        gone.append(path)
    return gone
