#!/usr/bin/env bash
# Installs what stunturn-diag and its test suite need on a fresh Debian machine:
# the system tools (as root, with apt-get), then the Python package with its test
# extras into a virtualenv of its own (default: .venv in the project; STUNTURN_VENV
# overrides). Nothing is taken from packages installed by hand: the virtualenv does
# not see the system's site-packages, and pip picks the newest releases that
# pyproject.toml allows.
#
#   bash scripts/setup.sh            # create or update .venv
#   bash scripts/setup.sh --fresh    # delete .venv first (CI does this every run)
#
# Then run `.venv/bin/stunturn-diag ...` or `source .venv/bin/activate`.
set -euo pipefail
cd "$(dirname "$0")/.."
fresh=0
for arg in "$@"; do
    case "$arg" in
        --fresh) fresh=1 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "setup: unknown option $arg (known: --fresh)" >&2; exit 2 ;;
    esac
done

# Debian package : a command it provides (the check that it is installed). One per line:
# every program the code and the tests run, as listed in stunturn_diag/sysdeps.py
# (tests/test_system_deps.py checks that both lists match and scans the code for programs
# it runs). An empty command: a package setup.sh itself needs (sysdeps.SETUP_PACKAGES).
# libpcap is NOT needed: the probe filters packets with its own classic-BPF programs.
# miniupnpd-nftables ships only the daemon (no service unit, no debconf question: it
# "Breaks" the miniupnpd package that has them), so nothing starts on install; the lab
# starts it per +portmap site inside a namespace (its binary is /usr/sbin/miniupnpd).
# haproxy's Debian service starts on install with /etc/haproxy/haproxy.cfg, which has no
# frontend (it binds no port, only its stats socket); it is stopped and disabled all the
# same: the test of two serve instances behind one address runs `haproxy -db` with a
# config of its own.
APT_PACKAGES=(
    nftables:nft
    iproute2:ip
    procps:sysctl
    iproute2:ss
    iproute2:tc
    util-linux:setpriv
    util-linux:unshare
    coturn:turnserver
    coturn:turnutils_stunclient
    coturn:turnutils_natdiscovery
    stun-client:stun
    miniupnpd-nftables:miniupnpd
    redis-server:redis-server
    haproxy:haproxy
    openssl:openssl
    python3-venv:
)

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    need=()
    for pkg_cmd in "${APT_PACKAGES[@]}"; do
        pkg=${pkg_cmd%%:*} cmd=${pkg_cmd#*:}
        if [[ " ${need[*]-} " == *" $pkg "* ]]; then
            continue  # already wanted for another of its commands
        elif [ -n "$cmd" ]; then
            command -v "$cmd" >/dev/null || need+=("$pkg")
        elif [ "$pkg" = python3-venv ]; then
            python3 -c 'import ensurepip, venv' 2>/dev/null || need+=("$pkg")
        fi
    done
    if [ "${#need[@]}" -gt 0 ] || [ "${STUNTURN_APT_UPDATE:-0}" = 1 ]; then
        echo "setup: apt-get update" >&2
        apt-get update -qq
    fi
    if [ "${#need[@]}" -gt 0 ]; then
        echo "setup: apt-get install ${need[*]}" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
        if [[ " ${need[*]} " == *" redis-server "* ]]; then
            # tests start their own redis-server on a free port: no system service left running
            { systemctl disable --now redis-server || service redis-server stop; } >/dev/null 2>&1 || true
        fi
        if [[ " ${need[*]} " == *" haproxy "* ]]; then
            # tests start their own haproxy (foreground, own config): no system service left running
            { systemctl disable --now haproxy || service haproxy stop; } >/dev/null 2>&1 || true
        fi
    fi
else
    names=()
    for pkg_cmd in "${APT_PACKAGES[@]}"; do
        [[ " ${names[*]-} " == *" ${pkg_cmd%%:*} "* ]] || names+=("${pkg_cmd%%:*}")
    done
    echo "setup: not root or no apt-get: install ${names[*]} yourself" >&2
fi

venv=${STUNTURN_VENV:-$PWD/.venv}
if [ "$fresh" -eq 1 ] && [ -e "$venv" ]; then
    echo "setup: removing $venv (--fresh)" >&2
    rm -rf "$venv"
fi
if [ ! -x "$venv/bin/python" ]; then
    echo "setup: creating the virtualenv $venv" >&2
    python3 -m venv "$venv"
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
echo "setup: pip install -e '.[test]' into $venv" >&2
if ! "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade -e '.[test]' >"$log" 2>&1; then
    cat "$log" >&2
    echo "setup: pip install failed (see above)" >&2
    exit 1
fi
"$venv/bin/python" -c 'import stunturn_diag, stunturn_server'
"$venv/bin/python" -m pip list --disable-pip-version-check --format=freeze 2>/dev/null \
    | grep -iE '^(scapy|flask|click|gevent|pytest)==' | tr '\n' ' ' >&2 || true
echo >&2
echo "setup: ok; run $venv/bin/stunturn-diag (or: source $venv/bin/activate)" >&2
