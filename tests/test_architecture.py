"""The layering rule of docs/ARCHITECTURE.md, enforced.

Pure (sans-IO) code lives under ``stunturn_diag/sansio/`` and ``server/sansio/``: no
sockets, clocks, threads, randomness, processes or frameworks there, and no imports of
the I/O layers around it. Test support is not in the installed packages.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SANSIO_DIRS = [ROOT / "stunturn_diag" / "sansio", ROOT / "server" / "sansio"]

#: Modules a pure core must never import (top-level names).
FORBIDDEN = {"socket", "select", "selectors", "time", "threading", "random", "secrets", "os",
             "subprocess", "signal", "asyncio", "gevent", "flask", "werkzeug", "redis",
             "scapy", "urllib.request", "http.client", "ifaddr", "multiprocessing"}
#: Project modules outside sansio/ that a pure core may use: shared vocabulary only (and the
#: package's version string, which the STUN responder's SOFTWARE names).
ALLOWED_PROJECT = {"stunturn_diag.errors", "stunturn_diag.behaviour", "stunturn_diag.__version__"}


def _sansio_files() -> list[Path]:
    return sorted(p for d in SANSIO_DIRS if d.exists() for p in d.rglob("*.py"))


def _module_of(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("").parts
    parts = ["stunturn_server" if rel[0] == "server" else rel[0], *rel[1:]]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports, anywhere in the file, as absolute names."""
    tree = ast.parse(path.read_text(), str(path))
    here = _module_of(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.append((node.lineno, mod))
            found += [(node.lineno, f"{mod}.{a.name}") for a in node.names]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id == "__import__"):
            found.append((node.lineno, "__import__"))
    return found


def test_there_are_pure_cores():
    files = _sansio_files()
    assert len(files) > 20, files


@pytest.mark.parametrize("path", _sansio_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_pure_core_imports_no_io(path):
    bad = []
    for line, mod in _imports(path):
        top = mod.split(".")[0]
        if mod == "__import__" or top in FORBIDDEN or any(mod == f or mod.startswith(f + ".")
                                                          for f in FORBIDDEN):
            bad.append(f"line {line}: {mod}")
        elif top in ("stunturn_diag", "stunturn_server", "server"):
            own = mod.startswith("stunturn_diag.sansio") or mod.startswith("stunturn_server.sansio")
            allowed = any(mod == a or mod.startswith(a + ".") for a in ALLOWED_PROJECT)
            if not (own or allowed or mod in ("stunturn_diag", "stunturn_server")):
                bad.append(f"line {line}: {mod} (an I/O layer; pass what it gives in)")
    assert not bad, f"{path.relative_to(ROOT)} is under sansio/ but imports: " + "; ".join(bad)


def test_the_rule_catches_a_violation(tmp_path, monkeypatch):
    """The checker itself: a pure module importing time is caught."""
    pkg = ROOT / "stunturn_diag" / "sansio"
    probe = pkg / "_rule_probe_tmp.py"
    probe.write_text("import time\nfrom stunturn_diag.punch import api\n")
    try:
        mods = [m for _, m in _imports(probe)]
    finally:
        probe.unlink()
    assert "time" in mods and "stunturn_diag.punch.api" in mods


def _kit_references(path: Path) -> list[str]:
    """Imports of the test kit, and ``python -m stunturn_testkit...`` module names, in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    found = [f"line {line}: import {mod}" for line, mod in _imports(path)
             if mod.split(".")[0] == "stunturn_testkit"]
    found += [f"line {node.lineno}: {node.value!r}" for node in ast.walk(tree)
              if isinstance(node, ast.Constant) and isinstance(node.value, str)
              and re.fullmatch(r"stunturn_testkit(\.\w+)*", node.value)]
    return found


def test_the_product_never_uses_the_test_kit():
    """stunturn_testkit/ is not installed: nothing installed may import it or run it."""
    bad = {str(p.relative_to(ROOT)): refs for d in ("stunturn_diag", "server")
           for p in sorted((ROOT / d).rglob("*.py")) if (refs := _kit_references(p))}
    assert bad == {}


def test_the_test_kit_is_not_installed(monkeypatch):
    """setup.py's package list (what ``pip install .`` ships) has no test kit in it."""
    import runpy

    import setuptools

    captured: dict = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kw: captured.update(kw))
    monkeypatch.chdir(ROOT)
    runpy.run_path(str(ROOT / "setup.py"))
    tops = {name.split(".")[0] for name in captured["packages"]}
    assert tops == {"stunturn_diag", "stunturn_server"}, captured["packages"]
    assert (ROOT / "stunturn_testkit" / "__init__.py").exists()
