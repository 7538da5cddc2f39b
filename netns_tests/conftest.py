"""netns tests: real kernel NAT in network namespaces.

They need root (CAP_NET_ADMIN), ``ip`` and ``nft``. Locally without those they
skip with a one-line reason; under CI (``CI`` set) a missing prerequisite is a
failure, never a skip.
"""

from __future__ import annotations

import os
import shutil

import pytest


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "netns tests need root (ip netns, nftables)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"netns tests need the '{tool}' command (apt-get install iproute2 nftables)"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _missing()
    if reason is None:
        return
    in_ci = bool(os.environ.get("CI"))
    for item in items:
        if "netns_tests" not in str(item.fspath):
            continue
        if in_ci:
            item.add_marker(pytest.mark.usefixtures("_ci_requires_netns"))
        else:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def _ci_requires_netns():
    pytest.fail(f"CI must run the netns tests: {_missing()}")
