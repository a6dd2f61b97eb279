// CUDA FlowWarp kernel, fp32 and fp16 (arithmetic in fp32 for both, as PyTorch's half grid sampler).
//
// A thread takes VEC adjacent output pixels of one row (2 when W is even: paired flow loads and paired
// 8-/4-byte output stores as float2/half2) and a chunk of channels: it computes each pixel's four bilinear
// taps once (flowwarp_core.h, shared with the CPU op) and reuses them for every channel of the chunk.
// Consecutive threads write consecutive pixels, so stores coalesce; X is read through the read-only cache.
// Channel chunks (blockIdx.y) keep the GPU busy when H*W is small (SFNet's 1/32 -> 1/16 stage).
#include "flowwarp_core.h"
#include "flowwarp_cuda.h"

namespace edgeseg {
namespace {

constexpr int kThreads = 256;
constexpr int kChannelsPerChunk = 32;

template <typename T> struct Pair;
template <> struct Pair<float> {
  using P = float2;
  static __device__ __forceinline__ float lo(P p) { return p.x; }
  static __device__ __forceinline__ float hi(P p) { return p.y; }
  static __device__ __forceinline__ P make(float a, float b) { return make_float2(a, b); }
};
template <> struct Pair<__half> {
  using P = __half2;
  static __device__ __forceinline__ float lo(P p) { return __low2float(p); }
  static __device__ __forceinline__ float hi(P p) { return __high2float(p); }
  static __device__ __forceinline__ P make(float a, float b) { return __floats2half2_rn(a, b); }
};

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(__half* p, float v) { *p = __float2half_rn(v); }

template <typename T>
__device__ __forceinline__ float sample(const T* __restrict__ plane, const Taps& t) {
  return to_float(plane[t.idx[0]]) * t.w[0] + to_float(plane[t.idx[1]]) * t.w[1] +
         to_float(plane[t.idx[2]]) * t.w[2] + to_float(plane[t.idx[3]]) * t.w[3];
}

// One thread: pixels (row, col .. col+VEC-1) of image blockIdx.z, channels of chunk blockIdx.y.
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) flowwarp_kernel(const T* __restrict__ x, const T* __restrict__ flow,
                                                            T* __restrict__ y, int64_t groups_per_image, int C, int h,
                                                            int w, int H, int W, bool align_corners) {
  const int64_t g = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (g >= groups_per_image) return;
  const int64_t n = blockIdx.z, pix = g * VEC;  // first pixel of the group in the H*W plane
  const int64_t HW = int64_t(H) * W, hw = int64_t(h) * w;
  const int row = int(pix / W), col = int(pix - int64_t(row) * W);
  const T* fx = flow + n * 2 * HW + pix;
  const T* fy = fx + HW;

  Taps t0, t1;
  if (VEC == 2) {
    const typename Pair<T>::P px = *reinterpret_cast<const typename Pair<T>::P*>(fx);
    const typename Pair<T>::P py = *reinterpret_cast<const typename Pair<T>::P*>(fy);
    flowwarp_taps(col, row, W, H, Pair<T>::lo(px), Pair<T>::lo(py), w, h, align_corners, t0);
    flowwarp_taps(col + 1, row, W, H, Pair<T>::hi(px), Pair<T>::hi(py), w, h, align_corners, t1);
  } else {
    flowwarp_taps(col, row, W, H, to_float(*fx), to_float(*fy), w, h, align_corners, t0);
  }

  const int c0 = blockIdx.y * kChannelsPerChunk;
  const int c1 = min(C, c0 + kChannelsPerChunk);
  const T* plane = x + (n * C + c0) * hw;
  T* out = y + (n * C + c0) * HW + pix;
#pragma unroll 4
  for (int c = c0; c < c1; ++c, plane += hw, out += HW) {
    if (VEC == 2) {
      *reinterpret_cast<typename Pair<T>::P*>(out) = Pair<T>::make(sample(plane, t0), sample(plane, t1));
    } else {
      store(out, sample(plane, t0));
    }
  }
}

template <typename T>
cudaError_t launch(const T* x, const T* flow, T* y, int64_t N, int64_t C, int64_t h, int64_t w, int64_t H, int64_t W,
                   bool align_corners, cudaStream_t stream) {
  if (N < 0 || C < 0 || h < 0 || w < 0 || H < 0 || W < 0) return cudaErrorInvalidValue;
  if (N * C * H * W == 0) return cudaSuccess;  // empty output
  if (h * w == 0 || h * w > INT32_MAX || H * W > INT32_MAX || C > INT32_MAX) return cudaErrorInvalidValue;
  const int64_t chunks = (C + kChannelsPerChunk - 1) / kChannelsPerChunk;
  if (chunks > 65535 || N > 65535) return cudaErrorInvalidValue;
  // Pairs need W even (a pair never straddles rows) and 2-element alignment of every pair's address.
  const bool pairs = W % 2 == 0 && reinterpret_cast<uintptr_t>(flow) % (2 * sizeof(T)) == 0 &&
                     reinterpret_cast<uintptr_t>(y) % (2 * sizeof(T)) == 0;
  const int vec = pairs ? 2 : 1;
  const int64_t groups = H * W / vec;
  const dim3 grid(unsigned((groups + kThreads - 1) / kThreads), unsigned(chunks), unsigned(N));
  if (pairs) {
    flowwarp_kernel<T, 2><<<grid, kThreads, 0, stream>>>(x, flow, y, groups, int(C), int(h), int(w), int(H), int(W), align_corners);
  } else {
    flowwarp_kernel<T, 1><<<grid, kThreads, 0, stream>>>(x, flow, y, groups, int(C), int(h), int(w), int(H), int(W), align_corners);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t flowwarp_cuda(const float* x, const float* flow, float* y, int64_t N, int64_t C, int64_t h, int64_t w,
                          int64_t H, int64_t W, bool align_corners, cudaStream_t stream) {
  return launch(x, flow, y, N, C, h, w, H, W, align_corners, stream);
}

cudaError_t flowwarp_cuda(const __half* x, const __half* flow, __half* y, int64_t N, int64_t C, int64_t h, int64_t w,
                          int64_t H, int64_t W, bool align_corners, cudaStream_t stream) {
  return launch(x, flow, y, N, C, h, w, H, W, align_corners, stream);
}

}  // namespace edgeseg
