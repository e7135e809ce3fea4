#!/usr/bin/env bash
# Every GPU check in one unattended run, by section (all of them: about 13 minutes on an H100/H200):
#   smoke      end-to-end CUDA serving in bf16 and fp16 (benchmarks/cuda_smoke.py)        ~2.5 min
#   cost       the learned batch cost of resnet-bench (bf16) against a measured sweep      ~1 min
#   overload   resnet-bench (bf16) flooded with and without a 500 ms latency target         ~2 min
#   hooks      hook overhead with CUDA events, bf16 (benchmarks/hook_overhead.py)           ~2.5 min
#   precision  fp32/bf16/fp16 raw and served timings with agreement                        ~4.5 min
# Usage on a CUDA machine, from the repository root:
#   OUT=results/gpu SECTIONS="smoke cost overload" bash benchmarks/gpu_checks.sh   (default: all)
# Through the device tool (at most 8 files come back): carry .whl, OUT=$OUT, then tar the folder.
# Python packages the machine lacks are carried as wheels in .whl/ (installed to /tmp/site). The lent GPU
# machines have torch, numpy, yaml, requests, safetensors and prometheus-client but not LitServe/FastAPI/
# pydantic/orjson; fetch them for its Python 3.12 once, here:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     litserve==0.2.19 fastapi==0.165.0 uvicorn==0.54.0 pydantic==2.14.4 pydantic-core==2.50.5 orjson \
#     starlette==1.10.0 annotated-types typing-inspection annotated-doc pyzmq opentelemetry-api httptools
set -uo pipefail
OUT="${OUT:-benchmarks/results/gpu}"
SECTIONS="${SECTIONS:-smoke cost overload hooks precision}"
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
wants() { case " $SECTIONS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

if wants smoke; then
  echo "== end-to-end CUDA serving (bf16, fp16)"
  timeout 170 python3 -m benchmarks.cuda_smoke --out "$OUT" > "$OUT/cuda_smoke.log" 2>&1
  echo "rc=$?"; tail -n 30 "$OUT/cuda_smoke.log"
fi

if wants cost; then
  echo "== learned batch cost against a measured sweep (resnet-bench, bf16)"
  timeout 120 python3 -m benchmarks.cost_curve --model resnet-bench --device cuda --precision bf16 \
    --sizes 1,2,4,8,16,32,64,128,256 --json "$OUT/cost_curve.json" > "$OUT/cost_curve.md" 2>&1
  echo "rc=$?"; cat "$OUT/cost_curve.md"
fi

if wants overload; then
  echo "== overload with and without a 500 ms latency target (resnet-bench, bf16, CUDA)"
  timeout 200 python3 -m benchmarks.overload --model resnet-bench --device cuda --precision bf16 --instances 8 \
    --connections 256 --processes 4 --duration 15 --target-ms 500 --priority-share 0.1 \
    --json "$OUT/overload.json" > "$OUT/overload.md" 2>&1
  echo "rc=$?"; cat "$OUT/overload.md"
fi

if wants hooks; then
  echo "== hook overhead (CUDA events, bf16)"
  timeout 150 python3 -m benchmarks.hook_overhead --device cuda --precision bf16 --rounds 5 --round-seconds 0.3 \
    --json "$OUT/hook_overhead_cuda_bf16.json" > "$OUT/hook_overhead_cuda_bf16.md" 2>&1
  echo "rc=$?"; tail -n 25 "$OUT/hook_overhead_cuda_bf16.md"
fi

if wants precision; then
  echo "== mixed precision, raw and served"
  timeout 280 python3 -m benchmarks.gpu_precision --out "$OUT" --budget-s 230 > "$OUT/gpu_precision_log.txt" 2>&1
  echo "rc=$?"; cat "$OUT/gpu_precision.md" 2>/dev/null | head -n 60
fi
