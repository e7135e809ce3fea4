#!/usr/bin/env bash
# Run the images that scripts/build_image.sh built and check them as a user would:
#   hookserve:cpu  /health 200, the README's prediction, /metrics, uid 10001 under tini as PID 1, a
#                  read-only root filesystem with only /tmp writable (as in deploy/kubernetes), the image's
#                  HEALTHCHECK, and SIGTERM: drains and exits 0 within the image's 8 s grace;
#   hookserve-loadtests:latest  locust 2.47.0 with numpy and scikit-learn, uid 1000 (skipped, saying so, when
#                  that image was not built: scripts/build_image.sh builds it with --loadtests or --all);
#   the compose files, rendered by the compose engine at hand (docker compose / podman-compose config).
#
#   scripts/smoke_image.sh [--image hookserve:cpu] [--skip-loadtests]
#
# Engine: docker when a daemon answers, else podman (runc as runtime when present: crun refuses cgroups in
# hybrid mode in some sandboxes; ulimits raised for the same sandboxes). The container shares the host's
# network and listens on 127.0.0.1 only. Exit status 0 only when every check passed; any failed check, or
# any step that could not run, exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=hookserve:cpu
LOADTESTS=1
while [ $# -gt 0 ]; do
  case "$1" in
    --image) IMAGE="$2"; shift 2 ;;
    --skip-loadtests) LOADTESTS=0; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
STORAGE_DRIVER="${STORAGE_DRIVER:-vfs}"
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  ENGINE=(docker)
  RUN_FLAGS=()
else
  ENGINE=(podman --storage-driver "$STORAGE_DRIVER")
  if command -v runc >/dev/null 2>&1; then ENGINE+=(--runtime "$(command -v runc)"); fi
  RUN_FLAGS=(--ulimit nofile=20000:20000 --ulimit nproc=32768:32768)
fi
PORT="${PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
NAME="hookserve-smoke-$$"
FAILED=0
say() { printf '[smoke] %s\n' "$*"; }
check() {  # check DESCRIPTION COMMAND...
  local what="$1"; shift
  if "$@"; then say "ok    $what"; else say "FAIL  $what"; FAILED=1; fi
}
cleanup() { "${ENGINE[@]}" rm -f "$NAME" >/dev/null 2>&1 || true; }
trap cleanup EXIT
# A step outside check() that fails stops the script (set -e): say which, so it is not a silent exit.
trap 'say "FAIL  line $LINENO: $BASH_COMMAND"' ERR
image_mb() {  # image_mb IMAGE: its size in MB; fails when the engine has no such image
  local bytes
  bytes=$("${ENGINE[@]}" image inspect --format '{{.Size}}' "$1" 2>/dev/null) && [ -n "$bytes" ] || return 1
  echo $((bytes / 1000000))
}

if ! size_mb=$(image_mb "$IMAGE"); then
  say "FAIL  no image $IMAGE for ${ENGINE[*]}: build it with scripts/build_image.sh"; exit 1
fi
say "engine: ${ENGINE[*]}; image $IMAGE: $size_mb MB"
check "image has a HEALTHCHECK" test -n "$("${ENGINE[@]}" image inspect --format '{{.Config.Healthcheck}}' "$IMAGE" \
  | grep -v '<nil>')"

started=$(date +%s.%N)
"${ENGINE[@]}" run -d --name "$NAME" --network host "${RUN_FLAGS[@]}" \
  --read-only --tmpfs /tmp:rw,size=256m,mode=1777 \
  -e HOOKSERVE_SERVER__HOST=127.0.0.1 -e HOOKSERVE_SERVER__PORT="$PORT" "$IMAGE" >/dev/null
BASE="http://127.0.0.1:$PORT"
ready=0
for _ in $(seq 1 360); do
  if curl -fsS -o /dev/null "$BASE/health" 2>/dev/null; then ready=1; break; fi
  if [ "$("${ENGINE[@]}" inspect --format '{{.State.Running}}' "$NAME")" != true ]; then break; fi
  sleep 0.5
done
if [ "$ready" != 1 ]; then
  "${ENGINE[@]}" logs "$NAME" 2>&1 | tail -n 40
  say "FAIL  /health never answered 200"; exit 1
fi
say "ok    /health 200 after $(python3 -c "print(round($(date +%s.%N) - $started, 1))") s (read-only root, /tmp tmpfs)"

body='{"instances": [[[0,0,5,13,9,1,0,0],[0,0,13,15,10,15,5,0],[0,3,15,2,0,11,8,0],[0,4,12,0,0,8,8,0],[0,5,8,0,0,9,8,0],[0,4,11,0,1,12,7,0],[0,2,14,5,10,12,0,0],[0,0,6,13,10,0,0,0]]]}'
answer=$(curl -fsS -X POST "$BASE/v1/models/digits-cnn:predict" -H 'Content-Type: application/json' -d "$body")
check "README prediction is label 0: $(echo "$answer" | cut -c1-90)" \
  python3 -c "import json,sys; assert json.loads(sys.argv[1])['predictions'][0]['label'] == '0'" "$answer"
metrics=$(curl -fsS "$BASE/metrics")
check "/metrics counts the prediction" python3 -c "
import sys
lines = [l for l in sys.argv[1].splitlines() if l.startswith('hookserve_requests_total{')
         and 'model=\"digits-cnn\"' in l and 'code=\"200\"' in l]
assert lines and sum(float(l.rsplit(' ', 1)[1]) for l in lines) == 1.0, lines" "$metrics"
check "runs as uid 10001" test "$("${ENGINE[@]}" exec "$NAME" id -u)" = 10001
check "PID 1 is tini" sh -c "${ENGINE[*]} exec $NAME cat /proc/1/cmdline | tr '\\0' ' ' | grep -q '^/usr/bin/tini -- hookserve'"
check "root filesystem is read-only" sh -c "! ${ENGINE[*]} exec $NAME touch /app/x 2>/dev/null"
if [ "${ENGINE[0]}" = podman ]; then
  check "podman healthcheck run passes" "${ENGINE[@]}" healthcheck run "$NAME"
else
  check "docker health status turns healthy" sh -c "for i in \$(seq 1 30); do \
    [ \"\$(docker inspect --format '{{.State.Health.Status}}' $NAME)\" = healthy ] && exit 0; sleep 1; done; exit 1"
fi
rss=$("${ENGINE[@]}" exec "$NAME" python -c "
import glob
kb = 0
for path in glob.glob('/proc/[0-9]*/status'):
    try:
        kb += int(next(l for l in open(path) if l.startswith('VmRSS')).split()[1])
    except (OSError, StopIteration):
        pass
print(kb // 1024)") || rss="unknown"
say "info  resident memory of the container's processes (sum of RSS, shared pages counted per process): ${rss} MB"

stop_started=$(date +%s.%N)
"${ENGINE[@]}" kill --signal TERM "$NAME" >/dev/null
code=$(timeout 40 "${ENGINE[@]}" wait "$NAME" | tail -n1) || code="none within 40 s"
stop_s=$(python3 -c "print(round($(date +%s.%N) - $stop_started, 1))")
check "SIGTERM: exit code $code after ${stop_s} s (grace 8 s)" \
  python3 -c "import sys; sys.exit(not (sys.argv[1] == '0' and float(sys.argv[2]) <= 10))" "$code" "$stop_s"
"${ENGINE[@]}" logs "$NAME" 2>&1 | tail -n 3 | sed 's/^/[smoke]       log: /'

LT=hookserve-loadtests:latest
if [ "$LOADTESTS" = 0 ]; then
  say "skip  $LT: --skip-loadtests"
elif ! lt_mb=$(image_mb "$LT"); then
  say "skip  $LT: not built (scripts/build_image.sh --loadtests builds it)"
else
  say "image $LT: $lt_mb MB"
  check "locust 2.47.0" sh -c "${ENGINE[*]} run --rm --network host ${RUN_FLAGS[*]} $LT --version 2>&1 | grep -q '2.47.0'"
  check "numpy and scikit-learn as in requirements/serve.lock, uid 1000" sh -c "${ENGINE[*]} run --rm --network host \
    ${RUN_FLAGS[*]} --entrypoint python $LT -c 'import os, numpy, sklearn; print(os.getuid(), numpy.__version__, sklearn.__version__)' \
    | grep -qx \"1000 $(sed -n 's/^numpy==//p' requirements/serve.lock) $(sed -n 's/^scikit-learn==//p' requirements/serve.lock)\""
fi

if command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
  check "docker compose config" sh -c "docker compose -f docker-compose.yml -f docker-compose.gpu.yml config -q"
else
  # podman-compose >= 1.1 (pip install podman-compose); Debian 12's 1.0.3 has no "config" command.
  PC="${PODMAN_COMPOSE:-podman-compose}"
  if command -v "$PC" >/dev/null 2>&1 && "$PC" config --help >/dev/null 2>&1; then
    check "podman-compose config ($("$PC" --version 2>&1 | head -n1))" sh -c "$PC -f docker-compose.yml config >/dev/null \
      && $PC -f docker-compose.yml -f docker-compose.gpu.yml config >/dev/null"
  else
    say "skip  compose config: no docker compose, and no podman-compose with a config command"
  fi
fi

if [ "$FAILED" = 0 ]; then say "all checks passed"; else say "some checks FAILED"; fi
exit "$FAILED"
