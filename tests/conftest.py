"""Fixtures shared by the tests in tests/ (netns_tests/ has its own conftest.py).

Plain helper functions live in ``tests/testlib.py``; this file being here puts
tests/ on sys.path (pytest's rootdir-relative "prepend" import mode), so test
modules import them with ``from testlib import ...``. The test kit
(``stunturn_testkit/`` at the checkout's top, never installed) comes through
pyproject's ``pythonpath = ["."]``.
"""

from __future__ import annotations

import pytest

from stunturn_server.config import ServerConfig
from stunturn_server.stun.service import start_stun_service
from testlib import A1, A2


@pytest.fixture(autouse=True)
def _private_cache_dir(tmp_path, monkeypatch):
    """``punch`` caches NAT profiles under $XDG_CACHE_HOME: each test gets its own, empty
    one (never the user's, never another test's)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


@pytest.fixture
def service():
    """Our STUN responder on loopback: 127.0.0.1 primary, 127.0.0.2 alternate, free ports."""
    svc = start_stun_service(ServerConfig(stun_host=A1, alt_ip=A2, stun_port=0, alt_port=0))
    yield svc
    svc.stop()
