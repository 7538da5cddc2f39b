"""The server's layers (docs/ARCHITECTURE.md): a pure core in server/sansio/ that does no I/O
and imports nothing above it, route modules that share server/http.py and never import one
another, no import cycle anywhere (late imports and typing-only imports count too), and
probe-assist registered only when the configuration enables it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from stunturn_server.app import create_app
from stunturn_server.config import ProbeAssistConfig, ServerConfig

SERVER = Path(__file__).resolve().parent.parent / "server"
PACKAGE = "stunturn_server"
#: what no pure module may import: sockets, clocks, threads, random sources, processes,
#: the environment, frameworks and clients that do I/O
IMPURE = {"socket", "select", "selectors", "time", "threading", "random", "secrets", "os",
          "subprocess", "asyncio", "ssl", "gevent", "flask", "werkzeug", "redis",
          "prometheus_client", "logging"}
#: the modules holding a blueprint's routes
ROUTES = {"api", "probe_assist", "relay_api"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in SERVER.rglob("*.py"):
        parts = list(path.relative_to(SERVER).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join([PACKAGE, *parts])] = path
    return out


MODULES = _modules()


def _imports(name: str) -> set[str]:
    """Every module ``name`` imports, anywhere in its file (a function's late import and an
    ``if TYPE_CHECKING:`` import too): top-level names for other packages, full names for ours."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            submodules = {f"{base}.{alias.name}" for alias in node.names} & MODULES.keys()
            found.update(submodules)
            if len(submodules) < len(node.names):  # names defined in ``base`` itself
                found.add(base)
    return found


def _ours(name: str) -> set[str]:
    return {m for m in _imports(name) if m in MODULES and m != name}


def test_the_pure_core_does_no_io():
    pure = [m for m in MODULES if m.startswith(f"{PACKAGE}.sansio")]
    assert len(pure) >= 7, pure
    for name in pure:
        imported = _imports(name)
        bad = {m for m in imported if m.split(".")[0] in IMPURE}
        assert not bad, f"{name} imports {sorted(bad)}"
        above = {m for m in _ours(name) if not m.startswith(f"{PACKAGE}.sansio")}
        assert not above, f"{name} (pure) imports {sorted(above)}, which are above it"


def test_no_import_cycles_in_the_server():
    graph = {name: _ours(name) for name in MODULES}
    state: dict[str, int] = {}   # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [name, dep] if dep in path else [name, dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, path + [name])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_route_modules_share_http_and_import_no_other_routes():
    for name in ROUTES:
        module = f"{PACKAGE}.{name}"
        ours = _ours(module)
        assert f"{PACKAGE}.http" in ours, f"{module} does not use the shared HTTP helpers"
        others = {f"{PACKAGE}.{r}" for r in ROUTES} - {module}
        assert not ours & others, f"{module} imports {sorted(ours & others)}"


def test_probe_assist_is_registered_only_when_enabled():
    on = create_app(ServerConfig(stun_enabled=False)).test_client()
    assert on.get("/v1/info").get_json()["probe_assist"] is True
    assert on.post("/v1/probe/tcp-connect", json={"port": 9}).status_code != 404
    off = create_app(ServerConfig(stun_enabled=False, probe_assist=ProbeAssistConfig(enabled=False)))
    client = off.test_client()
    assert client.get("/v1/info").get_json()["probe_assist"] is False
    for path in ("/v1/probe/tcp-connect", "/v1/probe/tcp-simopen"):
        response = client.post(path, json={"port": 9})
        assert response.status_code == 404 and response.get_json()["error"] == "not-found"
    assert "stunturn_probe_assist" not in off.extensions
