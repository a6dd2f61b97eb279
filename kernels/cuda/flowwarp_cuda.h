// CUDA FlowWarp (DESIGN.md): Y[N,C,H,W] = FlowWarp(X[N,C,h,w], FLOW[N,2,H,W]), contiguous NCHW, on `stream`.
// Used by the TensorRT plugin; one pass: base grid + flow offset + bilinear sample of the low-resolution
// X into the high-resolution Y. Returns the launch's error (cudaErrorInvalidValue for a bad shape).
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

namespace edgeseg {

cudaError_t flowwarp_cuda(const float* x, const float* flow, float* y, int64_t N, int64_t C, int64_t h, int64_t w,
                          int64_t H, int64_t W, bool align_corners, cudaStream_t stream);
cudaError_t flowwarp_cuda(const __half* x, const __half* flow, __half* y, int64_t N, int64_t C, int64_t h, int64_t w,
                          int64_t H, int64_t W, bool align_corners, cudaStream_t stream);

}  // namespace edgeseg
