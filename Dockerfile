# hookserve image. CPU by default:
#   docker build -t hookserve:cpu .
# CUDA: the same image with PyTorch's CUDA wheel, which bundles the CUDA runtime; the host needs an
# NVIDIA driver and the NVIDIA Container Toolkit (docker-compose.gpu.yml builds it this way):
#   docker build -t hookserve:cuda --build-arg TORCH_INDEX_URL=https://pypi.org/simple .
# Without docker (podman/buildah), without a registry, or without PyTorch's index: scripts/build_image.sh
# (docs/operate.md, "Building and running the image").
# PYTHON_IMAGE may name any Debian- or Ubuntu-based image with Python 3.11 as python3 and its venv module
# (python:3.11-slim-*, or a CUDA base with python3.11 and python3.11-venv added).
# Every dependency but torch is installed from requirements/serve.lock (scripts/lock.sh writes it), so
# rebuilding gives the same versions; torch is pinned in pyproject.toml, its build chosen by the index.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
# Where torch comes from: PyTorch's CPU index by default. A torch wheel in wheelhouse/ (e.g. a CPU wheel
# where that index cannot be reached) is preferred when it has the pinned version: 2.13.0+cpu sorts
# above 2.13.0, so with TORCH_INDEX_URL=https://pypi.org/simple pip takes the wheelhouse's CPU build.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# The CA bundle pip trusts; a build behind a TLS-intercepting proxy mounts the host's bundle over it.
ARG PIP_CERT=/etc/ssl/certs/ca-certificates.crt
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first and on its own: the largest layer, rebuilt only when the version or the index changes.
COPY wheelhouse/ /wheelhouse/
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" --find-links /wheelhouse torch==2.13.0
WORKDIR /src
COPY requirements/serve.lock ./requirements/
RUN pip install --no-cache-dir --find-links /wheelhouse -r requirements/serve.lock
COPY pyproject.toml README.md ./
COPY service ./service
COPY models ./models
# Dependencies are all in place (locked): install hookserve alone, then check nothing is missing.
RUN pip install --no-cache-dir --no-deps . && pip check

FROM ${PYTHON_IMAGE} AS runtime
# tini is PID 1: it forwards SIGTERM to hookserve (which drains and stops its worker processes) and reaps
# orphans. Without it, SIGTERM to PID 1 is ignored and `docker stop` waits for SIGKILL. Not pinned: the
# base image's release decides the version (0.19 on Debian bullseye, bookworm, trixie and Ubuntu 22.04+).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 hookserve \
    && useradd --system --uid 10001 --gid hookserve --create-home --home-dir /home/hookserve \
        --shell /usr/sbin/nologin hookserve
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
# Configs are read relative to the working directory; checkpoints ship inside the installed package.
COPY configs ./configs
# The drain on SIGTERM is 8 s here, inside the 10 s that `docker stop`, `docker run` and podman give
# before SIGKILL. Where the stop timeout is longer, set it back to the config's value: compose
# (stop_grace_period 40 s) and Kubernetes (terminationGracePeriodSeconds 30 s) set 20.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOOKSERVE_SERVER__HOST=0.0.0.0 \
    HOOKSERVE_SERVER__PORT=8000 \
    HOOKSERVE_SERVER__SHUTDOWN_GRACE_S=8 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
EXPOSE 8000 8001
# /health answers 200 only once every model is loaded and warmed up; no curl in the image, so Python asks.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('HOOKSERVE_SERVER__PORT', '8000'), timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "hookserve"]
CMD ["serve", "--config", "configs/default.yaml"]
