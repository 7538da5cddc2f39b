"""Test support for stunturn-diag's suites: never installed, never imported by the product.

The test suites (``tests/``, ``netns_tests/``: pytest's ``pythonpath = ["."]``) and the
benchmarks (each puts the checkout on ``sys.path``) import it from the checkout;
``setup.py`` installs only ``stunturn_diag`` and ``stunturn_server``.

- :mod:`.reflector` / :mod:`.nettool`: the lab's "echo my source address" server and
  its clients (``netns_tests/conftest.py``'s ``make_lab``);
- :mod:`.tcp_selftest`: a TCP punch peer that swaps candidates through files, and
  :func:`~.tcp_selftest.run_lab_pair` over the product's lab driver
  (:mod:`stunturn_diag.lab.pair_runner`);
- :mod:`.unprivileged`: run a command as an ordinary user;
- :mod:`.scapy_layers`: Scapy layers for the STUN attributes Scapy does not dissect.

A process that runs one of these modules in a lab host (``python -m stunturn_testkit.X``)
needs the checkout on its path: give it :func:`env`.
"""

from __future__ import annotations

import os
from pathlib import Path

#: the checkout this package lives in
ROOT = str(Path(__file__).resolve().parent.parent)


def env(base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    """``base`` (default: this process's environment) plus ``extra``, with the checkout
    first on ``PYTHONPATH``: for a child process that runs a test-kit module."""
    out = dict(os.environ if base is None else base, **extra)
    out["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, out.get("PYTHONPATH")) if p)
    return out
