#!/usr/bin/env bash
# Regenerate the lock files with pip-tools (pip-compile, a dev extra). Run after changing a dependency in
# pyproject.toml or loadtests/requirements.in; CI installs from them (scripts/setup.sh), so do the images
# (Dockerfile, loadtests/Dockerfile).
#   requirements/serve.lock      what serving needs (pyproject dependencies)
#   requirements/dev.lock        plus the dev extras (tests, lint, load tests); constrained by serve.lock
#   loadtests/requirements.lock  the Locust image; constrained by serve.lock (same numpy, scikit-learn)
# torch is left out of every lock (listed as "unsafe"): pyproject pins it exactly (torch==2.13.0) and which
# build (CPU, CUDA) is installed is the installer's choice of index. Its own dependencies are locked as the
# CPU build declares them; the CUDA build pins its nvidia-* packages itself.
# Locks are resolved for Python 3.11 on Linux x86_64, the platform the images and CI use.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP_COMPILE="${HOOKSERVE_PIP_COMPILE:-.venv/bin/pip-compile}"  # not PIP_*: pip reads those as its options
common=(--quiet --strip-extras --no-emit-find-links --no-emit-index-url --no-emit-trusted-host
        --unsafe-package torch --unsafe-package pip --unsafe-package setuptools --newline LF)
export CUSTOM_COMPILE_COMMAND="scripts/lock.sh"
"$PIP_COMPILE" "${common[@]}" --output-file requirements/serve.lock pyproject.toml
"$PIP_COMPILE" "${common[@]}" --extra dev -c requirements/serve.lock --output-file requirements/dev.lock pyproject.toml
"$PIP_COMPILE" "${common[@]}" -c requirements/serve.lock --output-file loadtests/requirements.lock \
    loadtests/requirements.in
