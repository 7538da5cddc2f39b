"""Where ``stunturn-diag lab up`` remembers a lab for later ``exec``/``down`` calls."""

from __future__ import annotations

import json
import os
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
