#!/usr/bin/env bash
# Build hookserve's images with whatever engine this machine has:
#   docker (when a daemon answers), else buildah, else podman (both daemonless, as root or rootless).
#
#   scripts/build_image.sh                        # hookserve:cpu
#   scripts/build_image.sh --cuda                 # hookserve:cuda (PyTorch's CUDA wheel from PyPI)
#   scripts/build_image.sh --loadtests            # hookserve-loadtests:latest (compose "load" profile)
#   scripts/build_image.sh --all                  # both images
#   scripts/build_image.sh --wheels /opt/wheels --torch-index-url https://pypi.org/simple
#                                                 # torch from a local wheel folder (e.g. a CPU wheel where
#                                                 # PyTorch's own index cannot be reached)
#   scripts/build_image.sh --bootstrap-base       # build FROM a Debian bookworm + Python 3.11 base made here
#                                                 # with debootstrap (no image registry needed)
#
# The base image (PYTHON_IMAGE, default python:3.11-slim-bookworm) is used when the engine has it or can
# pull it; otherwise (no registry answers) the script falls back to --bootstrap-base by itself.
# With buildah/podman: storage driver vfs (works in containers without overlay support; override with
# STORAGE_DRIVER), --isolation chroot, --format docker (the OCI format drops HEALTHCHECK), and the host's
# CA bundle mounted over the build's, so pip trusts what the host trusts (TLS-intercepting proxies).
# Then smoke-test the image: scripts/smoke_image.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

ENGINE="${ENGINE:-auto}"
TARGETS=(service)
FLAVOUR=cpu
TORCH_INDEX_URL=""
WHEELS=""
BASE="${PYTHON_IMAGE:-python:3.11-slim-bookworm}"
BOOTSTRAP=auto
BOOTSTRAP_TAG="localhost/hookserve-python:3.11-bookworm"
SUITE="${DEBIAN_SUITE:-bookworm}"
STORAGE_DRIVER="${STORAGE_DRIVER:-vfs}"
HOST_CA="${HOST_CA:-/etc/ssl/certs/ca-certificates.crt}"

usage() { sed -n '2,21p' "$0"; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --engine) ENGINE="$2"; shift 2 ;;
    --cuda) FLAVOUR=cuda; shift ;;
    --loadtests) TARGETS=(loadtests); shift ;;
    --all) TARGETS=(service loadtests); shift ;;
    --wheels) WHEELS="$2"; shift 2 ;;
    --torch-index-url) TORCH_INDEX_URL="$2"; shift 2 ;;
    --base) BASE="$2"; BOOTSTRAP=no; shift 2 ;;
    --bootstrap-base) BOOTSTRAP=yes; shift ;;
    -h|--help) usage 0 ;;
    *) echo "unknown option $1" >&2; usage 2 ;;
  esac
done
if [ "$FLAVOUR" = cuda ] && [ -z "$TORCH_INDEX_URL" ]; then TORCH_INDEX_URL=https://pypi.org/simple; fi

log() { printf '[build_image] %s\n' "$*" >&2; }

# --- the engine --------------------------------------------------------------------------------------
if [ "$ENGINE" = auto ]; then
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then ENGINE=docker
  elif command -v buildah >/dev/null 2>&1; then ENGINE=buildah
  elif command -v podman >/dev/null 2>&1; then ENGINE=podman
  else
    echo "no image engine: install docker, or buildah/podman (Debian: apt-get install buildah podman)" >&2
    exit 1
  fi
fi
log "engine: $ENGINE"
case "$ENGINE" in
  docker) has_image() { docker image inspect "$1" >/dev/null 2>&1; }
          pull_image() { docker pull -q "$1" >/dev/null 2>&1; } ;;
  buildah) has_image() { buildah --storage-driver "$STORAGE_DRIVER" inspect --type image "$1" >/dev/null 2>&1; }
           pull_image() { timeout 60 buildah --storage-driver "$STORAGE_DRIVER" pull -q "$1" >/dev/null 2>&1; } ;;
  podman) has_image() { podman --storage-driver "$STORAGE_DRIVER" image exists "$1"; }
          pull_image() { timeout 60 podman --storage-driver "$STORAGE_DRIVER" pull -q "$1" >/dev/null 2>&1; } ;;
  *) echo "unknown engine $ENGINE (docker, buildah, podman)" >&2; exit 2 ;;
esac

# --- the base image ----------------------------------------------------------------------------------
debian_mirror() {
  # The mirror this host's apt uses (DEBIAN_MIRROR overrides): the bootstrap reaches what apt reaches.
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  local uri
  uri=$(grep -h -m1 -E '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | head -n1)
  [ -n "$uri" ] || uri=$(grep -h -m1 -E '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | head -n1)
  [ -n "$uri" ] || { echo "no Debian mirror found in apt's sources: set DEBIAN_MIRROR" >&2; exit 1; }
  echo "$uri"
}

bootstrap_base() {
  # Debian $SUITE (minbase) with python3 (3.11 on bookworm), its venv module and CA certificates,
  # imported as $BOOTSTRAP_TAG. Needs root and debootstrap (apt-get install debootstrap).
  if has_image "$BOOTSTRAP_TAG"; then log "base: $BOOTSTRAP_TAG (bootstrapped earlier)"; return; fi
  command -v debootstrap >/dev/null 2>&1 || { echo "debootstrap missing (apt-get install debootstrap)" >&2; exit 1; }
  local rootfs mirror started
  rootfs=$(mktemp -d /var/tmp/hookserve-rootfs.XXXXXX)
  mirror=$(debian_mirror)
  started=$SECONDS
  log "bootstrapping Debian $SUITE + python3 into $rootfs ..."
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates "$SUITE" "$rootfs" "$mirror" \
    >"$rootfs.log" 2>&1 || { tail -n 30 "$rootfs.log" >&2; exit 1; }
  # apt inside the image uses the same mirror; trim caches.
  echo "deb $mirror $SUITE main" >"$rootfs/etc/apt/sources.list"
  rm -rf "$rootfs/var/cache/apt/archives/"*.deb "$rootfs/var/lib/apt/lists/"*
  chmod 755 "$rootfs"  # mktemp made it 0700: as the image's /, that would lock out non-root users
  "$rootfs/usr/bin/python3" --version >/dev/null 2>&1 || chroot "$rootfs" python3 --version >&2
  case "$ENGINE" in
    docker) tar -C "$rootfs" -c . | docker import --change 'CMD ["python3"]' - "$BOOTSTRAP_TAG" >/dev/null ;;
    *) tar -C "$rootfs" -c . | podman --storage-driver "$STORAGE_DRIVER" import --change 'CMD ["python3"]' - \
         "$BOOTSTRAP_TAG" >/dev/null ;;
  esac
  rm -rf "$rootfs" "$rootfs.log"
  log "base: $BOOTSTRAP_TAG bootstrapped in $((SECONDS - started)) s"
}

if [ "$BOOTSTRAP" = yes ]; then
  bootstrap_base; BASE="$BOOTSTRAP_TAG"
elif has_image "$BASE" || pull_image "$BASE"; then
  log "base: $BASE"
elif [ "$BOOTSTRAP" = auto ]; then
  log "base $BASE: not present and no registry answers; bootstrapping one"
  bootstrap_base; BASE="$BOOTSTRAP_TAG"
else
  echo "base image $BASE not available" >&2; exit 1
fi

# --- wheels ------------------------------------------------------------------------------------------
rm -f wheelhouse/*.whl
if [ -n "$WHEELS" ]; then
  cp "$WHEELS"/*.whl wheelhouse/
  log "wheelhouse: $(cd wheelhouse && ls -- *.whl | tr '\n' ' ')"
fi
trap 'rm -f wheelhouse/*.whl' EXIT

# --- build -------------------------------------------------------------------------------------------
build() {  # build TAG CONTEXT DOCKERFILE [--build-arg ...]
  local tag="$1" context="$2" file="$3"; shift 3
  local args=(--build-arg "PYTHON_IMAGE=$BASE" "$@")
  local started=$SECONDS
  log "building $tag ..."
  case "$ENGINE" in
    docker) docker build -t "$tag" -f "$file" "${args[@]}" "$context" ;;
    buildah|podman)
      local extra=(--isolation chroot --format docker)
      # Cache every step as a layer, except on vfs, where each layer is a full copy of the file system
      # (a 1.5 GB copy per Dockerfile line): there one commit at the end is minutes faster.
      if [ "$STORAGE_DRIVER" != vfs ]; then extra+=(--layers); fi
      if [ -f "$HOST_CA" ]; then extra+=(-v "$HOST_CA:/etc/ssl/certs/ca-certificates.crt:ro"); fi
      if [ "$ENGINE" = buildah ]; then
        buildah --storage-driver "$STORAGE_DRIVER" bud "${extra[@]}" -t "$tag" -f "$file" "${args[@]}" "$context"
      else
        podman --storage-driver "$STORAGE_DRIVER" build "${extra[@]}" -t "$tag" -f "$file" "${args[@]}" "$context"
      fi ;;
  esac
  log "built $tag in $((SECONDS - started)) s"
}

for target in "${TARGETS[@]}"; do
  case "$target" in
    service)
      args=()
      if [ -n "$TORCH_INDEX_URL" ]; then args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL"); fi
      build "hookserve:$FLAVOUR" . Dockerfile "${args[@]}" ;;
    loadtests)
      build hookserve-loadtests:latest loadtests loadtests/Dockerfile ;;
  esac
done
