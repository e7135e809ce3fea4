#!/usr/bin/env bash
# Every GPU check in one unattended run (about 9 minutes on an H100/H200): hook overhead with CUDA events,
# fp32/bf16/fp16 raw and served timings with agreement, and an end-to-end CUDA serving check.
# Usage on a CUDA machine, from the repository root: OUT=results/gpu bash benchmarks/gpu_checks.sh
# (through the device tool, which returns at most 8 files: carry .whl, then
#  OUT=/tmp/gpu bash benchmarks/gpu_checks.sh; tar czf "$OUT/gpu.tgz" -C /tmp gpu)
# Python packages the machine lacks are carried as wheels in .whl/ (installed to /tmp/site). The lent GPU
# machines have torch, numpy, yaml, requests and prometheus-client but not LitServe/FastAPI/pydantic; fetch
# them for its Python 3.12 once, here:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     litserve==0.2.19 fastapi==0.165.0 uvicorn==0.54.0 pydantic==2.14.4 pydantic-core==2.50.5 \
#     starlette==1.10.0 annotated-types typing-inspection annotated-doc pyzmq opentelemetry-api
set -uo pipefail
OUT="${OUT:-benchmarks/results/gpu}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.csv" 2>&1
python3 -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name())" \
  > "$OUT/versions.txt" 2>&1
cat "$OUT/nvidia-smi.csv" "$OUT/versions.txt"

echo "== hook overhead (CUDA events, bf16)"
timeout 150 python3 -m benchmarks.hook_overhead --device cuda --precision bf16 --rounds 5 --round-seconds 0.3 \
  --json "$OUT/hook_overhead_cuda_bf16.json" > "$OUT/hook_overhead_cuda_bf16.md" 2>&1
echo "rc=$?"; tail -n 25 "$OUT/hook_overhead_cuda_bf16.md"

echo "== end-to-end CUDA serving (bf16, fp16)"
timeout 150 python3 -m benchmarks.cuda_smoke --out "$OUT" > "$OUT/cuda_smoke.log" 2>&1
echo "rc=$?"; tail -n 40 "$OUT/cuda_smoke.log"

echo "== mixed precision, raw and served"
timeout 280 python3 -m benchmarks.gpu_precision --out "$OUT" --budget-s 230 > "$OUT/gpu_precision_log.txt" 2>&1
echo "rc=$?"; cat "$OUT/gpu_precision.md" 2>/dev/null | head -n 60
