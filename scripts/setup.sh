#!/usr/bin/env bash
# Installs what stunturn-diag and its test suite need on a fresh Debian machine
# (run as root): kernel NAT tooling, third-party STUN peers (coturn, stun-client) and the
# Python package itself with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    need=()
    for pkg_cmd in nftables:nft iproute2:ip procps:sysctl util-linux:setpriv coturn:turnutils_stunclient stun-client:stun; do
        command -v "${pkg_cmd#*:}" >/dev/null || need+=("${pkg_cmd%%:*}")
    done
    if [ "${#need[@]}" -gt 0 ]; then
        echo "setup: apt-get install ${need[*]}" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
else
    echo "setup: not root or no apt-get: install nftables iproute2 procps util-linux coturn stun-client yourself" >&2
fi
log=$(mktemp)
if ! python3 -m pip install -q --disable-pip-version-check -e '.[test]' >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "setup: pip install failed (see above)" >&2
    exit 1
fi
rm -f "$log"
python3 -c 'import stunturn_diag, stunturn_server'
command -v stunturn-diag >/dev/null || echo "setup: stunturn-diag is not on PATH; use: python3 -m stunturn_diag" >&2
echo "setup: ok" >&2
