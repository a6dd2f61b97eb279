"""PyTorch -> ONNX: the deployable wrapper (optional in-graph preprocessing and argmax), export, simplification."""
from __future__ import annotations

import io
import warnings

import onnx
import torch
import torch.nn as nn

from edgeseg.errors import EdgesegError
from edgeseg.export.graph import IR_VERSION, check_opset

INPUT, LOGITS, LABELS = "images", "logits", "labels"
HEADS = ("logits", "argmax")


class Deployable(nn.Module):
    """The network as deployed: optional uint8 BGR NHWC input normalised in the graph, optional argmax head.

    The plain form is the model itself (float32 RGB NCHW, normalised -> logits). Fused preprocessing takes what a
    camera gives (uint8 BGR HxWx3 frames) so that the runtime does no per-pixel work before the network.
    """

    def __init__(self, model: nn.Module, head: str = "logits", fused_preprocess: bool = False, mean=None, std=None):
        super().__init__()
        if head not in HEADS:
            raise EdgesegError(f"unknown head {head!r}; use one of: {', '.join(HEADS)}")
        self.model, self.head, self.fused = model, head, fused_preprocess
        if fused_preprocess:
            # (bgr[..., ::-1] / 255 - mean) / std  ==  bgr * scale + shift, channels already in BGR order
            mean_t, std_t = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
            self.register_buffer("scale", (1.0 / (255.0 * std_t)).flip(0).view(1, 1, 1, 3))
            self.register_buffer("shift", (-mean_t / std_t).flip(0).view(1, 1, 1, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            x = (x.float() * self.scale + self.shift).flip(-1).permute(0, 3, 1, 2)
        out = self.model(x)
        return out.argmax(1).to(torch.int32) if self.head == "argmax" else out


def output_name(head: str) -> str:
    return LABELS if head == "argmax" else LOGITS


def export_onnx(wrapper: Deployable, example: torch.Tensor, opset: int = 17, simplify: bool = True) -> onnx.ModelProto:
    """Export with the TorchScript exporter (dynamic N, H, W), then fold constants and simplify with onnxslim."""
    check_opset(opset)
    out = output_name(wrapper.head)
    in_axes = {0: "N", 1: "H", 2: "W"} if wrapper.fused else {0: "N", 2: "H", 3: "W"}
    out_axes = {0: "N", 1: "H", 2: "W"} if wrapper.head == "argmax" else {0: "N", 2: "H", 3: "W"}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape arithmetic: the parity check is the real test
        try:
            torch.onnx.export(wrapper.eval(), (example,), buf, dynamo=False, opset_version=opset, input_names=[INPUT],
                              output_names=[out], dynamic_axes={INPUT: in_axes, out: out_axes}, do_constant_folding=True)
        except Exception as e:  # the exporter raises many types for unsupported operators
            raise EdgesegError(f"ONNX export of {getattr(wrapper.model, 'arch', 'the model')} failed at opset {opset} "
                               f"({type(e).__name__}: {str(e).strip().splitlines()[0][:200]})") from None
    model = onnx.load_from_string(buf.getvalue())
    if simplify:
        import onnxslim

        model = onnxslim.slim(model)
    model.ir_version = IR_VERSION
    _fix_output_dims(model, wrapper.head, wrapper.model.num_classes)
    return model


def _fix_output_dims(model: onnx.ModelProto, head: str, num_classes: int) -> None:
    """N, H, W of input and output must stay symbolic; the class dimension is a known number."""
    def dims(v):
        return v.type.tensor_type.shape.dim
    i, o = dims(model.graph.input[0]), dims(model.graph.output[0])
    free_in = [k for k, d in enumerate(i) if not d.dim_value]
    free_out = [k for k, d in enumerate(o) if not d.dim_value]
    want_out = [0, 1, 2] if head == "argmax" else [0, 2, 3]
    if len(i) != 4 or len(free_in) != 3 or len(o) != len(want_out) + (head != "argmax") or not set(want_out) <= set(free_out):
        show = [[d.dim_param or d.dim_value for d in x] for x in (i, o)]
        raise EdgesegError(f"exported graph lost its dynamic dimensions (input {show[0]}, output {show[1]}); "
                           f"report this with the model's arch")
    if head != "argmax":
        o[1].Clear()
        o[1].dim_value = num_classes


def example_input(h: int, w: int, fused: bool, batch: int = 1) -> torch.Tensor:
    if fused:
        return torch.randint(0, 256, (batch, h, w, 3), dtype=torch.uint8)
    return torch.randn(batch, 3, h, w)
