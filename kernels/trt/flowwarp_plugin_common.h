// What the two TensorRT plugin flavours (IPluginV3 for TensorRT >= 10, IPluginV2DynamicExt for 8.x) share:
// the registered identity, the align_corners attribute and the launch of the CUDA kernel.
//
// Identity: TensorRT's ONNX parser imports a node it has no importer for (our `edgeseg::FlowWarp`) through
// its fallback plugin importer, which asks the plugin registry for the creator named by the node's op type,
// version = node attribute `plugin_version` (default "1"), namespace = `plugin_namespace` (default "").
// The exported node carries neither attribute, so the creator registers as ("FlowWarp", "1", "").
#pragma once

#include <NvInferRuntime.h>

#include <cstdint>
#include <cstdio>
#include <cstring>

#include "flowwarp_cuda.h"

namespace edgeseg {
namespace trt {

constexpr char const* kPluginName = "FlowWarp";
constexpr char const* kPluginVersion = "1";
constexpr char const* kAlignCorners = "align_corners";

inline void report(char const* what) { std::fprintf(stderr, "edgeseg FlowWarp plugin: %s\n", what); }

// align_corners from a field collection; the ONNX parser may pass the ONNX int attribute as any integer type.
// Returns false (and reports) for a value other than 0 or 1.
inline bool parse_align_corners(nvinfer1::PluginFieldCollection const* fc, int32_t& align) {
  align = 1;
  for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i) {
    nvinfer1::PluginField const& f = fc->fields[i];
    if (f.name == nullptr || std::strcmp(f.name, kAlignCorners) != 0 || f.data == nullptr || f.length < 1) continue;
    switch (f.type) {
      case nvinfer1::PluginFieldType::kINT8: align = *static_cast<int8_t const*>(f.data); break;
      case nvinfer1::PluginFieldType::kINT16: align = *static_cast<int16_t const*>(f.data); break;
      case nvinfer1::PluginFieldType::kINT32: align = *static_cast<int32_t const*>(f.data); break;
#if NV_TENSORRT_MAJOR >= 10
      case nvinfer1::PluginFieldType::kINT64: align = int32_t(*static_cast<int64_t const*>(f.data)); break;
#endif
      default: report("attribute align_corners must be an integer"); return false;
    }
  }
  if (align != 0 && align != 1) {
    report("attribute align_corners must be 0 or 1");
    return false;
  }
  return true;
}

// X [N,C,h,w] and FLOW [N,2,H,W] of one type, output of that type; fp32 or fp16, linear (NCHW) only.
inline bool supported(int32_t pos, nvinfer1::PluginTensorDesc const* inOut) {
  nvinfer1::PluginTensorDesc const& d = inOut[pos];
  if (d.format != nvinfer1::TensorFormat::kLINEAR) return false;
  if (pos == 0) return d.type == nvinfer1::DataType::kFLOAT || d.type == nvinfer1::DataType::kHALF;
  return d.type == inOut[0].type;
}

// Output dims [N, C, H, W] from X [N,C,h,w] and FLOW [N,2,H,W]; false for inputs of another rank.
inline bool output_dims(nvinfer1::DimsExprs const* in, int32_t nbInputs, nvinfer1::DimsExprs& out) {
  if (nbInputs != 2 || in[0].nbDims != 4 || in[1].nbDims != 4) {
    report("needs X [N,C,h,w] and FLOW [N,2,H,W]");
    return false;
  }
  out.nbDims = 4;
  out.d[0] = in[0].d[0];
  out.d[1] = in[0].d[1];
  out.d[2] = in[1].d[2];
  out.d[3] = in[1].d[3];
  return true;
}

// Static shape checks where dimensions are known (-1 = dynamic): FLOW's channel count and the batch sizes.
inline bool check_shapes(nvinfer1::Dims const& x, nvinfer1::Dims const& flow) {
  if (x.nbDims != 4 || flow.nbDims != 4) return report("needs X [N,C,h,w] and FLOW [N,2,H,W]"), false;
  if (flow.d[1] != -1 && flow.d[1] != 2) return report("FLOW must be [N,2,H,W]"), false;
  if (x.d[0] != -1 && flow.d[0] != -1 && x.d[0] != flow.d[0]) return report("X and FLOW batch sizes differ"), false;
  return true;
}

inline int32_t enqueue(nvinfer1::PluginTensorDesc const* in, void const* const* inputs, void* const* outputs,
                       bool align_corners, cudaStream_t stream) {
  nvinfer1::Dims const& x = in[0].dims;
  nvinfer1::Dims const& f = in[1].dims;
  if (!check_shapes(x, f)) return -1;
  cudaError_t err;
  if (in[0].type == nvinfer1::DataType::kHALF) {
    err = flowwarp_cuda(static_cast<__half const*>(inputs[0]), static_cast<__half const*>(inputs[1]),
                        static_cast<__half*>(outputs[0]), x.d[0], x.d[1], x.d[2], x.d[3], f.d[2], f.d[3], align_corners, stream);
  } else {
    err = flowwarp_cuda(static_cast<float const*>(inputs[0]), static_cast<float const*>(inputs[1]),
                        static_cast<float*>(outputs[0]), x.d[0], x.d[1], x.d[2], x.d[3], f.d[2], f.d[3], align_corners, stream);
  }
  if (err != cudaSuccess) {
    report(cudaGetErrorString(err));
    return -1;
  }
  return 0;
}

}  // namespace trt
}  // namespace edgeseg
