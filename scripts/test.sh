#!/usr/bin/env bash
# Runs the whole test suite: unit tests, interop tests with third-party STUN tools and
# (as root) the netns tests against real kernel NAT. Tests are parallel-safe; -n 2
# matches the two cores of the reference machine. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pytest -q -n 2 tests netns_tests "$@"
