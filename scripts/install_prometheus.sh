#!/usr/bin/env bash
# Install a real Prometheus server and promtool (Debian package `prometheus`) when either is missing.
# CI runs this before the test suite: tests/test_ops_static.py and tests/test_ops_live.py need both.
# The package's systemd unit is not started (containers have no systemd, and tests start their own server).
set -euo pipefail

if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
    echo "prometheus and promtool already installed: $(promtool --version 2>&1 | head -n1)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
# policy-rc.d exit code 101 stops the package's postinst from starting the service.
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

$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends prometheus

promtool --version 2>&1 | head -n1
prometheus --version 2>&1 | head -n1
