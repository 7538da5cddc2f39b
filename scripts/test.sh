#!/usr/bin/env bash
# Runs the whole test suite from the project's virtualenv (made by scripts/setup.sh):
# unit tests, interop tests with third-party STUN tools and (as root) the netns tests
# against real kernel NAT. Tests are parallel-safe; -n 2 matches the two cores of the
# reference machine. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${STUNTURN_VENV:-$PWD/.venv}
if [ ! -x "$venv/bin/python" ]; then
    echo "test: no virtualenv at $venv; run: bash scripts/setup.sh" >&2
    exit 2
fi
export PATH="$venv/bin:$PATH"
exec "$venv/bin/python" -m pytest -q -n 2 -p no:cacheprovider tests netns_tests "$@"
