#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU: builds the CUDA FlowWarp kernel, checks it against
# torch.nn.functional.grid_sample (fp32/fp16, odd sizes), times it against torch's grid_sample and a device copy,
# runs the shipped model on ONNX Runtime's CUDA provider (fp32/fp16) beside PyTorch CUDA eager, and writes one
# Markdown table. Needs nothing from the network; about 3 minutes.
#   bash bench/gpu_check.sh [OUT.md]        (default bench/results/gpu_check.md)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench/results/gpu_check.md}"
build="$(mktemp -d)"
trap 'rm -rf "$build"' EXIT
nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv,noheader
arch="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)"
nvcc -O3 -std=c++14 -shared -Xcompiler -fPIC -arch="sm_${arch}" -Ikernels/cuda -Ikernels/common \
  kernels/cuda/flowwarp_cuda.cu kernels/cuda/flowwarp_capi.cu -o "$build/libedgeseg_flowwarp_capi.so"
timeout 420 python3 bench/gpu_check.py --library "$build/libedgeseg_flowwarp_capi.so" --out "$out"
