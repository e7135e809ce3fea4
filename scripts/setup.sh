#!/usr/bin/env bash
# Create .venv (Python 3.11) and install hookserve, every dependency at the version its lock file pins
# (requirements/*.lock, written by scripts/lock.sh; torch is pinned in pyproject.toml). Idempotent.
#   scripts/setup.sh          what serving needs (scripts/serve.sh)
#   scripts/setup.sh dev      plus the test, lint and load-test tools (scripts/test.sh)
#   scripts/setup.sh kserve   .venv-kserve: KServe's SDK for tests/test_kserve_sdk.py (it pins packages
#                             the project's venv does not share)
#   scripts/setup.sh triton   .venv-triton: tritonclient[grpc] for tests/test_grpc_live.py (its stubs and
#                             hookserve's both register the `inference` proto package: one process each)
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-serve}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
# A client in a venv of its own (its packages clash with the project's): side_venv DIR PACKAGE...
side_venv() {
  local dir="$1"; shift
  if [ ! -f "$dir/.installed" ]; then
    "$PYTHON" -m venv "$dir"
    "$dir/bin/python" -m pip install --quiet --upgrade pip
    "$dir/bin/python" -m pip install --quiet "$@"
    touch "$dir/.installed"
  fi
}
case "$mode" in
  kserve) side_venv .venv-kserve "kserve==0.21.0" "numpy>=1.26"; exit 0 ;;
  triton) side_venv .venv-triton "tritonclient[grpc]==2.67.0" "numpy>=1.26"; exit 0 ;;
esac
case "$mode" in
  serve) target="."; lock=requirements/serve.lock ;;
  dev) target=".[dev]"; lock=requirements/dev.lock ;;
  *) echo "usage: $0 [serve|dev|kserve|triton]" >&2; exit 2 ;;
esac
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=".venv/.hookserve-installed-$mode"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ "$lock" -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -c "$lock" -e "$target"
  touch "$stamp"
  if [ "$mode" = dev ]; then touch .venv/.hookserve-installed-serve; fi  # dev includes serve
fi
