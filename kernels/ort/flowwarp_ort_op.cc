// ONNX Runtime CPU custom op edgeseg::FlowWarp (version 1): Y[N,C,H,W] = FlowWarp(X[N,C,h,w], FLOW[N,2,H,W]).
//
// Loaded with SessionOptions.register_custom_ops_library(path). Written against the C API only and
// linked to nothing from ONNX Runtime: RegisterCustomOps receives OrtApiBase and asks it for API version 17
// (everything used here exists since ONNX Runtime 1.17), so one build loads into any later runtime.
//
// Speed: the output is split into tiles of whole rows, run on the session's intra-op thread pool
// (KernelContext_ParallelFor). Per tile, the four bilinear taps of every pixel are computed once into
// flat arrays; then every channel is a branch-free gather-multiply-add over those arrays, which compilers
// vectorise (AVX2/AVX-512 gathers on x86, chosen at run time by function multi-versioning).
#include <onnxruntime_c_api.h>

#include <climits>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "flowwarp_core.h"

#if defined(_WIN32)
#define EDGESEG_EXPORT __declspec(dllexport)
#else
#define EDGESEG_EXPORT __attribute__((visibility("default")))
#endif

// Clones of the hot loops for AVX-512 and AVX2+FMA machines, picked by the loader (ifunc); the default
// clone runs anywhere, so one build is safe to copy between x86 machines.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define EDGESEG_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define EDGESEG_MULTIVERSION
#endif

namespace {

constexpr uint32_t kApiVersion = 17;  // KernelComputeV2 (1.16) and KernelContext_ParallelFor (1.17)
constexpr int64_t kTilePixels = 2048;  // output pixels whose taps are computed once and reused for all channels
const OrtApi* g_api = nullptr;

// ---- IEEE half <-> float (round to nearest even), for float16 tensors ----
inline float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else if (exp == 0) {
    const float f = float(mant) * (1.0f / 16777216.0f);  // subnormal: mant * 2^-24
    return sign ? -f : f;
  } else {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t float_to_half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint16_t sign = uint16_t((x >> 16) & 0x8000u);
  const uint32_t a = x & 0x7fffffffu;
  if (a >= 0x7f800000u) return sign | 0x7c00u | (a > 0x7f800000u ? 0x200u : 0u);  // Inf, NaN
  if (a >= 0x477ff000u) return sign | 0x7c00u;                                     // rounds past 65504
  if (a < 0x38800000u) {                                                           // half subnormal or zero
    float m;
    std::memcpy(&m, &a, 4);
    return sign | uint16_t(__builtin_nearbyintf(m * 16777216.0f));
  }
  return sign | uint16_t((a + 0xfffu + ((a >> 13) & 1u) - 0x38000000u) >> 13);
}

struct F32 {
  using T = float;
  static float load(float v) { return v; }
  static float store(float v) { return v; }
};
struct F16 {
  using T = uint16_t;
  static float load(uint16_t v) { return half_to_float(v); }
  static uint16_t store(float v) { return float_to_half(v); }
};

struct Job {
  const void* x;
  const void* flow;
  void* y;
  int64_t C;
  int h, w, H, W;
  bool align_corners;
  int rows_per_tile, tiles_per_image;
};

// One tile: rows [y0, y1) of image n, all channels.
template <class E>
inline void run_tile(const Job& j, size_t item) {
  using T = typename E::T;
  const int64_t n = int64_t(item) / j.tiles_per_image;
  const int y0 = int(int64_t(item) % j.tiles_per_image) * j.rows_per_tile;
  const int y1 = y0 + j.rows_per_tile < j.H ? y0 + j.rows_per_tile : j.H;
  const int64_t HW = int64_t(j.H) * j.W, hw = int64_t(j.h) * j.w, P = int64_t(y1 - y0) * j.W;

  std::unique_ptr<int32_t[]> idx(new int32_t[4 * P]);
  std::unique_ptr<float[]> wt(new float[4 * P]);
  int32_t *i0 = idx.get(), *i1 = i0 + P, *i2 = i1 + P, *i3 = i2 + P;
  float *w0 = wt.get(), *w1 = w0 + P, *w2 = w1 + P, *w3 = w2 + P;

  const T* fx = static_cast<const T*>(j.flow) + n * 2 * HW + int64_t(y0) * j.W;
  const T* fy = fx + HW;
  for (int y = y0, p = 0; y < y1; ++y) {
    for (int x = 0; x < j.W; ++x, ++p) {
      edgeseg::Taps t;
      edgeseg::flowwarp_taps(x, y, j.W, j.H, E::load(fx[p]), E::load(fy[p]), j.w, j.h, j.align_corners, t);
      i0[p] = t.idx[0]; i1[p] = t.idx[1]; i2[p] = t.idx[2]; i3[p] = t.idx[3];
      w0[p] = t.w[0]; w1[p] = t.w[1]; w2[p] = t.w[2]; w3[p] = t.w[3];
    }
  }
  const T* x = static_cast<const T*>(j.x) + n * j.C * hw;
  T* out = static_cast<T*>(j.y) + n * j.C * HW + int64_t(y0) * j.W;
  for (int64_t c = 0; c < j.C; ++c, x += hw, out += HW) {
    for (int64_t p = 0; p < P; ++p) {
      out[p] = E::store(E::load(x[i0[p]]) * w0[p] + E::load(x[i1[p]]) * w1[p] +
                        E::load(x[i2[p]]) * w2[p] + E::load(x[i3[p]]) * w3[p]);
    }
  }
}

EDGESEG_MULTIVERSION void tile_f32(void* job, size_t item) { run_tile<F32>(*static_cast<const Job*>(job), item); }
EDGESEG_MULTIVERSION void tile_f16(void* job, size_t item) { run_tile<F16>(*static_cast<const Job*>(job), item); }

std::string dims_str(const std::vector<int64_t>& d) {
  std::string s = "[";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? "," : "") + std::to_string(d[i]);
  return s + "]";
}

OrtStatus* invalid(const std::string& msg) { return g_api->CreateStatus(ORT_INVALID_ARGUMENT, ("FlowWarp: " + msg).c_str()); }

#define RETURN_IF_ERROR(expr)           \
  do {                                  \
    if (OrtStatus* _s = (expr)) return _s; \
  } while (0)

OrtStatus* tensor_info(const OrtValue* v, ONNXTensorElementDataType* type, std::vector<int64_t>* dims) {
  OrtTensorTypeAndShapeInfo* info = nullptr;
  RETURN_IF_ERROR(g_api->GetTensorTypeAndShape(v, &info));
  size_t rank = 0;
  OrtStatus* s = g_api->GetTensorElementType(info, type);
  if (!s) s = g_api->GetDimensionsCount(info, &rank);
  if (!s) {
    dims->resize(rank);
    s = g_api->GetDimensions(info, dims->data(), rank);
  }
  g_api->ReleaseTensorTypeAndShapeInfo(info);
  return s;
}

struct Kernel {
  bool align_corners;
  ONNXTensorElementDataType type;
};

OrtStatus* compute(const Kernel& k, OrtKernelContext* ctx) {
  const OrtValue *xv = nullptr, *fv = nullptr;
  RETURN_IF_ERROR(g_api->KernelContext_GetInput(ctx, 0, &xv));
  RETURN_IF_ERROR(g_api->KernelContext_GetInput(ctx, 1, &fv));
  ONNXTensorElementDataType xt, ft;
  std::vector<int64_t> xd, fd;
  RETURN_IF_ERROR(tensor_info(xv, &xt, &xd));
  RETURN_IF_ERROR(tensor_info(fv, &ft, &fd));
  if (xt != ft) return invalid("X and FLOW must have the same element type (float32 or float16)");
  if (xd.size() != 4) return invalid("X must be [N,C,h,w], got " + dims_str(xd));
  if (fd.size() != 4 || fd[1] != 2) return invalid("FLOW must be [N,2,H,W], got " + dims_str(fd));
  if (xd[0] != fd[0]) return invalid("X " + dims_str(xd) + " and FLOW " + dims_str(fd) + " have different batch sizes");
  const int64_t N = xd[0], C = xd[1], h = xd[2], w = xd[3], H = fd[2], W = fd[3];
  if (H > INT_MAX || W > INT_MAX || h * w > INT32_MAX || H * W > INT32_MAX)
    return invalid("spatial size too large: X " + dims_str(xd) + ", FLOW " + dims_str(fd));

  const int64_t yd[4] = {N, C, H, W};
  OrtValue* yv = nullptr;
  RETURN_IF_ERROR(g_api->KernelContext_GetOutput(ctx, 0, yd, 4, &yv));
  if (N * C * H * W == 0) return nullptr;  // empty output, as torch
  if (h * w == 0) return invalid("X " + dims_str(xd) + " has an empty spatial size; there is nothing to sample");

  Job j{};
  RETURN_IF_ERROR(g_api->GetTensorMutableData(const_cast<OrtValue*>(xv), const_cast<void**>(&j.x)));
  RETURN_IF_ERROR(g_api->GetTensorMutableData(const_cast<OrtValue*>(fv), const_cast<void**>(&j.flow)));
  RETURN_IF_ERROR(g_api->GetTensorMutableData(yv, &j.y));
  j.C = C; j.h = int(h); j.w = int(w); j.H = int(H); j.W = int(W);
  j.align_corners = k.align_corners;
  j.rows_per_tile = int(W >= kTilePixels ? 1 : kTilePixels / W);
  j.tiles_per_image = int((H + j.rows_per_tile - 1) / j.rows_per_tile);
  return g_api->KernelContext_ParallelFor(ctx, xt == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT ? tile_f32 : tile_f16,
                                          size_t(N) * j.tiles_per_image, 0, &j);
}

// One OrtCustomOp per element type; both are registered as edgeseg::FlowWarp and ORT picks by input type.
struct FlowWarpOp : OrtCustomOp {
  ONNXTensorElementDataType type;

  explicit FlowWarpOp(ONNXTensorElementDataType t) : OrtCustomOp{}, type(t) {
    version = kApiVersion;
    GetName = [](const OrtCustomOp*) { return "FlowWarp"; };
    GetExecutionProviderType = [](const OrtCustomOp*) -> const char* { return nullptr; };  // CPU
    GetInputTypeCount = [](const OrtCustomOp*) -> size_t { return 2; };
    GetInputType = [](const OrtCustomOp* op, size_t) { return static_cast<const FlowWarpOp*>(op)->type; };
    GetOutputTypeCount = [](const OrtCustomOp*) -> size_t { return 1; };
    GetOutputType = [](const OrtCustomOp* op, size_t) { return static_cast<const FlowWarpOp*>(op)->type; };
    GetInputCharacteristic = [](const OrtCustomOp*, size_t) { return INPUT_OUTPUT_REQUIRED; };
    GetOutputCharacteristic = [](const OrtCustomOp*, size_t) { return INPUT_OUTPUT_REQUIRED; };
    GetInputMemoryType = [](const OrtCustomOp*, size_t) { return OrtMemTypeDefault; };
    GetVariadicInputMinArity = [](const OrtCustomOp*) { return 1; };
    GetVariadicInputHomogeneity = [](const OrtCustomOp*) { return 1; };
    GetVariadicOutputMinArity = [](const OrtCustomOp*) { return 1; };
    GetVariadicOutputHomogeneity = [](const OrtCustomOp*) { return 1; };
    KernelDestroy = [](void* k) { delete static_cast<Kernel*>(k); };
    CreateKernelV2 = [](const OrtCustomOp* op, const OrtApi*, const OrtKernelInfo* info, void** out) -> OrtStatusPtr {
      int64_t align = 1;  // attribute default
      if (OrtStatus* s = g_api->KernelInfoGetAttribute_int64(info, "align_corners", &align)) g_api->ReleaseStatus(s);
      if (align != 0 && align != 1) return invalid("attribute align_corners must be 0 or 1, got " + std::to_string(align));
      *out = new Kernel{align == 1, static_cast<const FlowWarpOp*>(op)->type};
      return nullptr;
    };
    KernelComputeV2 = [](void* k, OrtKernelContext* ctx) -> OrtStatusPtr { return compute(*static_cast<Kernel*>(k), ctx); };
    GetStartVersion = [](const OrtCustomOp*) { return 1; };
    GetEndVersion = [](const OrtCustomOp*) { return 1; };
  }
};

const FlowWarpOp g_op_f32(ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
const FlowWarpOp g_op_f16(ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16);

// Domains must outlive every session that uses them: keep them until the library is unloaded.
struct DomainList {
  std::mutex mutex;
  std::vector<OrtCustomOpDomain*> domains;
  ~DomainList() {
    for (OrtCustomOpDomain* d : domains) g_api->ReleaseCustomOpDomain(d);
  }
} g_domains;

}  // namespace

extern "C" EDGESEG_EXPORT OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* base) {
  const OrtApi* api = base->GetApi(kApiVersion);
  if (!api) return base->GetApi(1)->CreateStatus(ORT_FAIL, "edgeseg FlowWarp needs ONNX Runtime 1.17 or newer");
  g_api = api;
  OrtCustomOpDomain* domain = nullptr;
  RETURN_IF_ERROR(api->CreateCustomOpDomain("edgeseg", &domain));
  {
    std::lock_guard<std::mutex> lock(g_domains.mutex);
    g_domains.domains.push_back(domain);
  }
  RETURN_IF_ERROR(api->CustomOpDomain_Add(domain, &g_op_f32));
  RETURN_IF_ERROR(api->CustomOpDomain_Add(domain, &g_op_f16));
  return api->AddCustomOpDomain(options, domain);
}
