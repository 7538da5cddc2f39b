#!/usr/bin/env bash
# Runs the whole test suite: unit tests, interop tests and (as root) the netns tests.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pytest -q tests netns_tests "$@"
