// FlowWarp TensorRT plugin, IPluginV2DynamicExt (TensorRT 8.x, e.g. JetPack 4.6 on the Jetson Nano):
// ("FlowWarp", "1", "") in the plugin registry; the engine stores align_corners as one int32.
#include <NvInferRuntime.h>

#include <new>
#include <string>

#include "flowwarp_plugin_common.h"

namespace edgeseg {
namespace trt {

using namespace nvinfer1;

class FlowWarpPluginV2 : public IPluginV2DynamicExt {
 public:
  explicit FlowWarpPluginV2(int32_t align_corners) : align_(align_corners) {}

  // IPluginV2DynamicExt
  IPluginV2DynamicExt* clone() const noexcept override {
    auto* p = new (std::nothrow) FlowWarpPluginV2(align_);
    if (p != nullptr) p->setPluginNamespace(namespace_.c_str());
    return p;
  }
  DimsExprs getOutputDimensions(int32_t index, DimsExprs const* inputs, int32_t nbInputs, IExprBuilder&) noexcept override {
    DimsExprs out{};
    if (index != 0 || !output_dims(inputs, nbInputs, out)) out.nbDims = -1;
    return out;
  }
  bool supportsFormatCombination(int32_t pos, PluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept override {
    return nbInputs == 2 && nbOutputs == 1 && pos >= 0 && pos <= 2 && supported(pos, inOut);
  }
  void configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const*, int32_t) noexcept override {
    if (nbInputs == 2) check_shapes(in[0].desc.dims, in[1].desc.dims);  // reports; enqueue refuses bad shapes
  }
  size_t getWorkspaceSize(PluginTensorDesc const*, int32_t, PluginTensorDesc const*, int32_t) const noexcept override { return 0; }
  int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*, void const* const* inputs, void* const* outputs,
                  void*, cudaStream_t stream) noexcept override {
    return trt::enqueue(inputDesc, inputs, outputs, align_ == 1, stream);
  }

  // IPluginV2Ext
  DataType getOutputDataType(int32_t, DataType const* inputTypes, int32_t) const noexcept override { return inputTypes[0]; }

  // IPluginV2
  AsciiChar const* getPluginType() const noexcept override { return kPluginName; }
  AsciiChar const* getPluginVersion() const noexcept override { return kPluginVersion; }
  int32_t getNbOutputs() const noexcept override { return 1; }
  int32_t initialize() noexcept override { return 0; }
  void terminate() noexcept override {}
  size_t getSerializationSize() const noexcept override { return sizeof(int32_t); }
  void serialize(void* buffer) const noexcept override { std::memcpy(buffer, &align_, sizeof(int32_t)); }
  void destroy() noexcept override { delete this; }
  void setPluginNamespace(AsciiChar const* ns) noexcept override { namespace_ = ns != nullptr ? ns : ""; }
  AsciiChar const* getPluginNamespace() const noexcept override { return namespace_.c_str(); }

 private:
  int32_t align_;
  std::string namespace_;
};

class FlowWarpPluginCreatorV2 : public IPluginCreator {
 public:
  FlowWarpPluginCreatorV2() {
    field_ = PluginField(kAlignCorners, nullptr, PluginFieldType::kINT32, 1);
    fields_.nbFields = 1;
    fields_.fields = &field_;
  }
  AsciiChar const* getPluginName() const noexcept override { return kPluginName; }
  AsciiChar const* getPluginVersion() const noexcept override { return kPluginVersion; }
  PluginFieldCollection const* getFieldNames() noexcept override { return &fields_; }
  IPluginV2* createPlugin(AsciiChar const*, PluginFieldCollection const* fc) noexcept override {
    int32_t align = 1;
    if (!parse_align_corners(fc, align)) return nullptr;
    return with_namespace(new (std::nothrow) FlowWarpPluginV2(align));
  }
  IPluginV2* deserializePlugin(AsciiChar const*, void const* data, size_t length) noexcept override {
    int32_t align = 1;
    if (data == nullptr || length != sizeof(int32_t)) return report("corrupt serialized plugin"), nullptr;
    std::memcpy(&align, data, sizeof(int32_t));
    if (align != 0 && align != 1) return report("corrupt serialized plugin"), nullptr;
    return with_namespace(new (std::nothrow) FlowWarpPluginV2(align));
  }
  void setPluginNamespace(AsciiChar const* ns) noexcept override { namespace_ = ns != nullptr ? ns : ""; }
  AsciiChar const* getPluginNamespace() const noexcept override { return namespace_.c_str(); }

 private:
  IPluginV2* with_namespace(FlowWarpPluginV2* p) {
    if (p != nullptr) p->setPluginNamespace(namespace_.c_str());
    return p;
  }
  PluginField field_;
  PluginFieldCollection fields_{};
  std::string namespace_;
};

REGISTER_TENSORRT_PLUGIN(FlowWarpPluginCreatorV2);

}  // namespace trt
}  // namespace edgeseg
