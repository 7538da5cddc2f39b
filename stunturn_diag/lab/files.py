"""Reading lab spec and matrix plan files (``.toml`` or JSON); parsing is pure
(:func:`stunturn_diag.sansio.lab.spec.parse_document`)."""

from __future__ import annotations

from pathlib import Path

from stunturn_diag.errors import ConfigError
from stunturn_diag.sansio.lab.spec import LabSpec, parse_document


def read_file(path: str | Path, what: str) -> dict:
    """The table in a ``.toml`` file, else the JSON document (ConfigError naming ``what``)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    return parse_document(text, str(path), what)


def load_spec(path: str | Path) -> LabSpec:
    """A :class:`LabSpec` from a ``.json`` or ``.toml`` spec file."""
    return LabSpec.from_dict(read_file(path, "lab spec"))
