#!/usr/bin/env bash
# Install the Debian packages named on the command line that are not installed yet; do nothing when all are.
#
#   scripts/install_debian.sh prometheus haproxy
#
# CI (scripts/test.sh) runs it before the test suite: `prometheus` gives the real Prometheus server and
# promtool (tests/test_ops_static.py, tests/test_ops_live.py), `haproxy` the balancer of the local
# multi-replica stack (benchmarks/replicas.py, tests/test_replicas_live.py). `apt-get update` runs once, and
# only when something is missing. The packages' services are not started (containers have no systemd, and
# the tests start their own servers). Uses sudo when not run as root.
set -euo pipefail

if [ $# -eq 0 ]; then
    echo "usage: $0 PACKAGE..." >&2
    exit 2
fi

installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

MISSING=()
for package in "$@"; do
    if installed "$package"; then
        echo "$package already installed: $(dpkg-query -W -f='${Version}' "$package")"
    else
        MISSING+=("$package")
    fi
done
if [ ${#MISSING[@]} -eq 0 ]; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
# policy-rc.d exit code 101 stops the packages' postinst from starting their services.
POLICY=/usr/sbin/policy-rc.d
CREATED_POLICY=0
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
    $SUDO chmod +x "$POLICY"
    CREATED_POLICY=1
fi
cleanup() {
    if [ "$CREATED_POLICY" -eq 1 ]; then
        $SUDO rm -f "$POLICY"
    fi
}
trap cleanup EXIT

echo "installing ${MISSING[*]}"
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${MISSING[@]}"
for package in "${MISSING[@]}"; do
    installed "$package" || { echo "$package did not install" >&2; exit 1; }
    echo "$package installed: $(dpkg-query -W -f='${Version}' "$package")"
done
