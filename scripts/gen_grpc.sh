#!/usr/bin/env bash
# Regenerate the gRPC stubs of the Open Inference Protocol V2 (service/grpc/proto/grpc_predict_v2_pb2*.py
# and .pyi) from the vendored grpc_predict_v2.proto, and the messages of Triton's repository methods
# (triton_repository_pb2*.py) and of its streaming answer (triton_stream_pb2*.py), with grpcio-tools
# (a dev extra). Run it after changing a .proto or the pinned grpcio-tools; tests/test_grpc.py fails
# while the committed stubs differ from what this writes.
#   scripts/gen_grpc.sh           regenerate in place
#   scripts/gen_grpc.sh OUT_DIR   write the stubs under OUT_DIR (same relative paths) instead
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
out="${1:-.}"
mkdir -p "$out"
# Relative to the repository root, so the generated *_grpc.py imports `service.grpc.proto...`.
"$PYTHON" -m grpc_tools.protoc -I . --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
    service/grpc/proto/grpc_predict_v2.proto
"$PYTHON" -m grpc_tools.protoc -I . --python_out="$out" --pyi_out="$out" \
    service/grpc/proto/triton_repository.proto service/grpc/proto/triton_stream.proto
