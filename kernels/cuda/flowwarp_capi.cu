// C entry points of the CUDA FlowWarp for callers without C++ linkage (the GPU check loads them with ctypes and
// passes device pointers of torch tensors). Returns the cudaError_t as an int (0 = success).
#include "flowwarp_cuda.h"

extern "C" int edgeseg_flowwarp_f32(const void* x, const void* flow, void* y, int64_t N, int64_t C, int64_t h,
                                    int64_t w, int64_t H, int64_t W, int align_corners, void* stream) {
  return int(edgeseg::flowwarp_cuda(static_cast<const float*>(x), static_cast<const float*>(flow),
                                    static_cast<float*>(y), N, C, h, w, H, W, align_corners != 0,
                                    static_cast<cudaStream_t>(stream)));
}

extern "C" int edgeseg_flowwarp_f16(const void* x, const void* flow, void* y, int64_t N, int64_t C, int64_t h,
                                    int64_t w, int64_t H, int64_t W, int align_corners, void* stream) {
  return int(edgeseg::flowwarp_cuda(static_cast<const __half*>(x), static_cast<const __half*>(flow),
                                    static_cast<__half*>(y), N, C, h, w, H, W, align_corners != 0,
                                    static_cast<cudaStream_t>(stream)));
}
