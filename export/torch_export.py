"""PyTorch -> ONNX: the deployable wrapper (optional in-graph preprocessing and argmax), deploy-time rewrites of layers
that runtimes compute slowly, export, simplification."""
from __future__ import annotations

import copy
import hashlib
import io
import warnings

import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F

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


def select_output(out, output=None, source: str = "the model"):
    """The score tensor of a model's output: a tensor; a dict by key, an object by attribute, a tuple by index.

    output=None takes a tensor as it is, `logits` from a dict or an object (what transformers models return), the
    first item of a tuple or list.
    """
    if isinstance(out, torch.Tensor) and output is None:
        return out
    try:
        if output is None:
            if isinstance(out, (tuple, list)):
                got = out[0]
            elif isinstance(out, dict):
                got = out["logits"]
            else:
                got = out.logits
        elif isinstance(out, dict) or (isinstance(output, str) and hasattr(out, "keys")):
            got = out[output]
        elif isinstance(output, str):
            got = getattr(out, output)
        else:
            got = out[output]
    except (KeyError, IndexError, AttributeError, TypeError):
        keys = list(out.keys()) if hasattr(out, "keys") else f"a {type(out).__name__}"
        want = repr(output) if output is not None else "'logits' (the default)"
        raise EdgesegError(f"{source} returns {keys}: cannot take output {want} from it; pass output= with the "
                           f"key, attribute or index of the per-class scores") from None
    if not isinstance(got, torch.Tensor) or got.dim() != 4:
        what = list(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
        raise EdgesegError(f"{source}: output {output!r} is {what}, not per-class scores [N,C,H,W]; pass output= with "
                           f"the key, attribute or index of the scores")
    return got


class Scores(nn.Module):
    """Any module mapping images [N,3,H,W] to per-class scores, as an edgeseg model: the scores tensor selected from
    its output (see select_output) and, with `resize`, upsampled in the graph (bilinear) to the input size."""

    def __init__(self, module: nn.Module, num_classes: int, output=None, resize: bool = False, arch: str | None = None):
        super().__init__()
        self.module, self.num_classes, self.output, self.resize = module, num_classes, output, resize
        self.arch = arch or type(module).__name__

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = select_output(self.module(x), self.output, self.arch)
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False) if self.resize else y


def output_stride(module: nn.Module, hw: tuple[int, int], output=None) -> tuple[int, int]:
    """(classes, stride) of a module's scores for an input of size hw: stride 4 for SegFormer's 1/4 logits."""
    h, w = hw
    with torch.inference_mode():
        y = select_output(module(torch.zeros(1, 3, h, w)), output, type(module).__name__)
    oh, ow = y.shape[-2:]
    stride = h // oh if oh else 0
    if not oh or h != stride * oh or w != stride * ow:
        raise EdgesegError(f"{type(module).__name__}: scores at {oh}x{ow} for a {h}x{w} input are not at 1/k of its "
                           f"resolution; pass resize_output=True to upsample them in the graph")
    return int(y.shape[1]), stride


def module_sha(module: nn.Module) -> str:
    """A digest of a module's class and weights (the cache key of an export from a module)."""
    h = hashlib.sha256(f"{type(module).__module__}.{type(module).__qualname__}".encode())
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes() if t.dtype != torch.bfloat16
                 else t.float().numpy().tobytes())
    return h.hexdigest()


THIN = 4  # 3x3 convolutions with at most this many outputs are exported through `TapSplitConv`


class TapSplitConv(nn.Module):
    """A 3x3 convolution (stride 1, padding 1) as a 1x1 convolution to each tap's output, then a fixed one-hot 3x3
    grouped convolution that shifts the taps into place and sums them: the same function.

    Runtimes compute a 3x3 convolution through im2col, which copies the input nine times; with two outputs (SFNet's
    flow heads) there is almost no arithmetic to hide the copy behind: on 2 cores it took 3 ms of SFNet-R18's int8
    time. As a 1x1 convolution the heavy part is a plain matrix product.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        cout, cin = conv.out_channels, conv.in_channels
        self.taps = nn.Conv2d(cin, 9 * cout, 1, bias=False)
        # output o, tap k = 3 * dy + dx  ->  channel 9 * o + k
        self.taps.weight.data = conv.weight.detach().permute(0, 2, 3, 1).reshape(9 * cout, cin, 1, 1).clone()
        self.shift = nn.Conv2d(9 * cout, cout, 3, padding=1, groups=cout, bias=conv.bias is not None)
        one_hot = torch.zeros(cout, 9, 3, 3)
        for k in range(9):
            one_hot[:, k, k // 3, k % 3] = 1.0
        self.shift.weight.data = one_hot
        if conv.bias is not None:
            self.shift.bias.data = conv.bias.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shift(self.taps(x))


def split_thin_convs(model: nn.Module) -> nn.Module:
    """A copy of `model` with every thin 3x3 convolution (see THIN) replaced by its `TapSplitConv`."""
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if (isinstance(child, nn.Conv2d) and child.kernel_size == (3, 3) and child.stride == (1, 1)
                    and child.padding == (1, 1) and child.dilation == (1, 1) and child.groups == 1
                    and child.padding_mode == "zeros" and child.out_channels <= THIN):
                setattr(parent, name, TapSplitConv(child))
    return model


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
