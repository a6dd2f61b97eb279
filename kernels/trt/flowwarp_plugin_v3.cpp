// FlowWarp TensorRT plugin, IPluginV3 (TensorRT >= 10): ("FlowWarp", "1", "") in the plugin registry.
// Loading the library registers the creator (REGISTER_TENSORRT_PLUGIN); edgeseg.kernels.load_trt_plugins()
// does that from Python, trtexec with --staticPlugins=<library>.
#include <NvInferRuntime.h>

#include <new>

#include "flowwarp_plugin_common.h"

namespace edgeseg {
namespace trt {

using namespace nvinfer1;

class FlowWarpPlugin : public IPluginV3, public IPluginV3OneCore, public IPluginV3OneBuild, public IPluginV3OneRuntime {
 public:
  explicit FlowWarpPlugin(int32_t align_corners) : align_(align_corners) {
    field_ = PluginField(kAlignCorners, &align_, PluginFieldType::kINT32, 1);
    fields_.nbFields = 1;
    fields_.fields = &field_;
  }

  // IPluginV3
  IPluginCapability* getCapabilityInterface(PluginCapabilityType type) noexcept override {
    switch (type) {
      case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
      case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
      case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    }
    return nullptr;
  }
  IPluginV3* clone() noexcept override { return new (std::nothrow) FlowWarpPlugin(align_); }

  // IPluginV3OneCore
  AsciiChar const* getPluginName() const noexcept override { return kPluginName; }
  AsciiChar const* getPluginVersion() const noexcept override { return kPluginVersion; }
  AsciiChar const* getPluginNamespace() const noexcept override { return ""; }

  // IPluginV3OneBuild
  int32_t getNbOutputs() const noexcept override { return 1; }
  int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const*,
                          int32_t nbOutputs) noexcept override {
    return nbInputs == 2 && nbOutputs == 1 && check_shapes(in[0].desc.dims, in[1].desc.dims) ? 0 : -1;
  }
  int32_t getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                             int32_t nbInputs) const noexcept override {
    if (nbOutputs != 1 || nbInputs != 2) return -1;
    outputTypes[0] = inputTypes[0];
    return 0;
  }
  int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t, DimsExprs* outputs,
                          int32_t nbOutputs, IExprBuilder&) noexcept override {
    return nbOutputs == 1 && output_dims(inputs, nbInputs, outputs[0]) ? 0 : -1;
  }
  bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override {
    if (nbInputs != 2 || nbOutputs != 1 || pos < 0 || pos > 2) return false;
    PluginTensorDesc descs[3];
    for (int32_t i = 0; i <= pos; ++i) descs[i] = inOut[i].desc;
    return supported(pos, descs);
  }
  size_t getWorkspaceSize(DynamicPluginTensorDesc const*, int32_t, DynamicPluginTensorDesc const*,
                          int32_t) const noexcept override {
    return 0;
  }

  // IPluginV3OneRuntime
  int32_t onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const*,
                        int32_t nbOutputs) noexcept override {
    return nbInputs == 2 && nbOutputs == 1 && check_shapes(in[0].dims, in[1].dims) ? 0 : -1;
  }
  int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*, void const* const* inputs,
                  void* const* outputs, void*, cudaStream_t stream) noexcept override {
    return trt::enqueue(inputDesc, inputs, outputs, align_ == 1, stream);
  }
  IPluginV3* attachToContext(IPluginResourceContext*) noexcept override { return clone(); }
  PluginFieldCollection const* getFieldsToSerialize() noexcept override { return &fields_; }

 private:
  int32_t align_;
  PluginField field_;
  PluginFieldCollection fields_{};
};

class FlowWarpPluginCreator : public IPluginCreatorV3One {
 public:
  FlowWarpPluginCreator() {
    field_ = PluginField(kAlignCorners, nullptr, PluginFieldType::kINT32, 1);
    fields_.nbFields = 1;
    fields_.fields = &field_;
  }
  AsciiChar const* getPluginName() const noexcept override { return kPluginName; }
  AsciiChar const* getPluginVersion() const noexcept override { return kPluginVersion; }
  AsciiChar const* getPluginNamespace() const noexcept override { return ""; }
  PluginFieldCollection const* getFieldNames() noexcept override { return &fields_; }
  // Same fields at build time (from the ONNX node) and at engine load (from getFieldsToSerialize).
  IPluginV3* createPlugin(AsciiChar const*, PluginFieldCollection const* fc, TensorRTPhase) noexcept override {
    int32_t align = 1;
    if (!parse_align_corners(fc, align)) return nullptr;
    return new (std::nothrow) FlowWarpPlugin(align);
  }

 private:
  PluginField field_;
  PluginFieldCollection fields_{};
};

REGISTER_TENSORRT_PLUGIN(FlowWarpPluginCreator);

}  // namespace trt
}  // namespace edgeseg
