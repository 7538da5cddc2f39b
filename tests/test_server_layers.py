"""The server's layers (docs/ARCHITECTURE.md; tests/test_architecture.py holds the pure core in
server/sansio/ to no I/O): route modules that share server/http.py and never import one
another, no import cycle anywhere (late imports and typing-only imports count too), and
probe-assist registered only when the configuration enables it."""

from __future__ import annotations

from pathlib import Path

import pytest

from stunturn_server.app import create_app
from stunturn_server.config import ProbeAssistConfig, ServerConfig

from test_architecture import ROOT, _imports

SERVER = ROOT / "server"
PACKAGE = "stunturn_server"
#: the modules holding a blueprint's routes
ROUTES = {"api", "probe_assist", "relay_api"}


def _modules() -> dict[str, Path]:
    """Every server module (not its packages: an edge to one would only be its ``__init__``)."""
    out = {}
    for path in SERVER.rglob("*.py"):
        if path.name != "__init__.py":
            out[".".join([PACKAGE, *path.relative_to(SERVER).with_suffix("").parts])] = path
    return out


MODULES = _modules()


def _ours(name: str) -> set[str]:
    """The server modules ``name`` imports anywhere in its file (a function's late import and
    an ``if TYPE_CHECKING:`` import count too)."""
    return {mod for _, mod in _imports(MODULES[name]) if mod in MODULES and mod != name}


def test_no_import_cycles_in_the_server():
    graph = {name: _ours(name) for name in MODULES}
    state: dict[str, int] = {}   # 1: on the current path, 2: done

    def visit(path: list[str]) -> None:
        state[path[-1]] = 1
        for dep in sorted(graph[path[-1]]):
            if state.get(dep) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(dep):] + [dep]))
            if dep not in state:
                visit(path + [dep])
        state[path[-1]] = 2

    for name in sorted(graph):
        if name not in state:
            visit([name])


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
