#!/usr/bin/env bash
# Set up (first run only), then lint and run the whole test suite with pytest (starts its own servers on 127.0.0.1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
bash scripts/setup.sh kserve
bash scripts/setup.sh triton
bash scripts/install_debian.sh prometheus haproxy
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest "$@"
