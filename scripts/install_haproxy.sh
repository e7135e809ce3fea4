#!/usr/bin/env bash
# Install HAProxy (Debian package `haproxy`, 2.6 on bookworm) when it is missing. CI runs this before the
# test suite: the local multi-replica stack (benchmarks/replicas.py, tests/test_replicas_live.py) puts it
# in front of the replicas. The package's service is not started (tests start their own HAProxy).
set -euo pipefail

if command -v haproxy >/dev/null 2>&1; then
    echo "haproxy already installed: $(haproxy -v 2>&1 | head -n1)"
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
$SUDO apt-get install -y -qq --no-install-recommends haproxy

haproxy -v 2>&1 | head -n1
