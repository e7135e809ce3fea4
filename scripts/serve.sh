#!/usr/bin/env bash
# Set up (first run only) and serve the default models: http://127.0.0.1:8000 (override with --port/--config).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/hookserve serve "$@"
