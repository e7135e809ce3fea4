# syntax=docker/dockerfile:1
# hookserve image. CPU by default:
#   docker build -t hookserve:cpu .
# CUDA: the same image with PyTorch's CUDA wheel, which bundles the CUDA runtime; the host needs an
# NVIDIA driver and the NVIDIA Container Toolkit (docker-compose.gpu.yml builds it this way):
#   docker build -t hookserve:cuda --build-arg TORCH_INDEX_URL=https://pypi.org/simple .
# PYTHON_IMAGE may name any Debian-based Python 3.11 image, e.g. a CUDA base with Python 3.11 added.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first and on its own: the largest layer, rebuilt only when the version or the index changes.
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" torch==2.13.0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY models ./models
# The already-installed torch satisfies torch==2.13.0 (2.13.0+cpu included), so pip keeps the chosen build.
RUN pip install --no-cache-dir .

FROM ${PYTHON_IMAGE} AS runtime
# tini is PID 1: it forwards SIGTERM to hookserve (which drains and stops its worker processes) and reaps
# orphans. Without it, SIGTERM to PID 1 is ignored and `docker stop` waits for SIGKILL.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini=0.19.0-1+b3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 hookserve \
    && useradd --system --uid 10001 --gid hookserve --create-home --home-dir /home/hookserve \
        --shell /usr/sbin/nologin hookserve
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
# Configs are read relative to the working directory; checkpoints ship inside the installed package.
COPY configs ./configs
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOOKSERVE_SERVER__HOST=0.0.0.0 \
    HOOKSERVE_SERVER__PORT=8000 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
EXPOSE 8000
# /health answers 200 only once every model is loaded and warmed up; no curl in the image, so Python asks.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('HOOKSERVE_SERVER__PORT', '8000'), timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "hookserve"]
CMD ["serve", "--config", "configs/default.yaml"]
