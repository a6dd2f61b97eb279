"""SegNet and SegNet-Basic (Badrinarayanan, Kendall & Cipolla, TPAMI 2017): an encoder whose max-pooling
switches drive the decoder's upsampling, each unpooled map densified by trainable convolutions.

SegNet's encoder is VGG-16-BN's 13 convolutions (torchvision's `features.N` names, so its weights load); the
decoder mirrors it and ends in a 3x3 classifier. SegNet-Basic has four 7x7 conv-BN-ReLU-pool stages of 64
channels, a decoder of 7x7 conv-BN (no ReLU, as in the paper) and a 1x1 classifier; the paper's input LRN is
left out (the inputs are already normalised). Pools are 2x2 stride 2 with ceil mode (Caffe's rounding), so any
H x W takes the whole image and unpools back to the size before each pool.

Unpooling, option `unpool`:
- `mask` (default, and what exports): index-free. A position receives the decoder's value when it holds its
  window's maximum, `x == upsample_nearest(maxpool(x))`, and is the first such position in the window's
  row-major order. Ties therefore resolve as PyTorch's max-pooling indices do (the first maximum wins), so the
  result equals `F.max_unpool2d` with the pooling indices exactly; NaN windows are not handled. The graph is
  MaxPool, Resize (nearest), Equal, Mul, Where: every op TensorRT's ONNX parser builds (it has no MaxUnpool).
- `indices`: the paper's form, `max_pool2d(return_indices=True)` + `max_unpool2d`. PyTorch's ONNX exporter has
  no MaxUnpool, so the export scatters the values to the indices (ScatterElements); ONNX Runtime runs it,
  TensorRT's parser does not take MaxPool's indices output.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgeseg.errors import EdgesegError
from edgeseg.models.backbones.vgg import VGG16
from edgeseg.models.base import SegModel, _exporting
from edgeseg.models.layers import ConvBNReLU
from edgeseg.models.registry import register

UNPOOL = ("mask", "indices")


def _up2(x: torch.Tensor, h, w) -> torch.Tensor:
    """Each value copied to its 2x2 window, cropped to h x w (the last row/column of a ceil-mode pool)."""
    return F.interpolate(x, scale_factor=2.0, mode="nearest")[..., :h, :w]


def first_max_mask(x: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """Where max_pool2d(x, 2, 2, ceil_mode=True) took each maximum from, without indices: bool, x's shape."""
    h, w = x.shape[-2:]
    is_max = (x == _up2(pooled, h, w)).to(x.dtype)
    # rank the window's positions 4, 3, 2, 1 in scan order: the highest-ranked maximum is the first one
    i = torch.arange(h, device=x.device) % 2
    j = torch.arange(w, device=x.device) % 2
    score = is_max * (4 - 2 * i[:, None] - j[None, :]).to(x.dtype)
    return score == _up2(F.max_pool2d(score, 2, 2, ceil_mode=True), h, w)  # best >= 1, so only a maximum matches


class SwitchPool(nn.MaxPool2d):
    """2x2 stride-2 ceil-mode max pooling that also returns its switches (a mask or indices) for the decoder."""

    def __init__(self, unpool: str):
        super().__init__(2, 2, ceil_mode=True)
        self.unpool = unpool

    def forward(self, x):
        if self.unpool == "indices":
            pooled, idx = F.max_pool2d(x, 2, 2, ceil_mode=True, return_indices=True)
            return pooled, (idx, x.shape[-2:])
        pooled = F.max_pool2d(x, 2, 2, ceil_mode=True)
        return pooled, first_max_mask(x, pooled)


def unpool(x: torch.Tensor, switch) -> torch.Tensor:
    if isinstance(switch, tuple):
        idx, size = switch
        if _exporting():  # max_unpool2d has no ONNX symbolic, and its size check fails on traced sizes
            n, c = x.shape[:2]
            flat = x.new_zeros((n, c, size[0] * size[1])).scatter(2, idx.flatten(2), x.flatten(2))
            return flat.reshape(n, c, size[0], size[1])
        return F.max_unpool2d(x, idx, 2, 2, output_size=size)
    return torch.where(switch, _up2(x, *switch.shape[-2:]), 0.0)


class SwitchEncoder(nn.Module):
    """`features` (convs and SwitchPools) -> [switch of each pool..., the last pooled map]."""

    def __init__(self, layers):
        super().__init__()
        self.features = nn.Sequential(*layers)

    def forward(self, x):
        switches = []
        for layer in self.features:
            if isinstance(layer, SwitchPool):
                x, s = layer(x)
                switches.append(s)
            else:
                x = layer(x)
        return switches + [x]


class UnpoolDecoder(nn.Module):
    """Stage by stage from the coarsest: unpool with the matching encoder switch, then that stage's convs."""

    def __init__(self, stages):
        super().__init__()
        self.stages = nn.ModuleList(nn.Sequential(*convs) for convs in stages)

    def forward(self, feats):
        *switches, x = feats
        for stage, switch in zip(self.stages, reversed(switches)):
            x = stage(unpool(x, switch))
        return x


def _check(unpool_form: str) -> str:
    if unpool_form not in UNPOOL:
        raise EdgesegError(f"unpool {unpool_form!r}: choose one of {', '.join(UNPOOL)}")
    return unpool_form


def _init(model: nn.Module) -> None:
    """He init for the convolutions under BN, N(0, 0.01) for the classifier (small logits at the start)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            if m is model.head:
                nn.init.normal_(m.weight, std=0.01)
            else:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


@register("segnet")
class SegNet(SegModel):
    hard_decisions = "max-unpooling switches"
    def __init__(self, num_classes: int, unpool: str = "mask"):
        """`unpool`: mask (index-free, TensorRT-buildable) or indices (MaxUnpool)."""
        super().__init__(num_classes, unpool=_check(unpool))
        layers, cin = [], 3
        for widths in VGG16:
            for w in widths:  # torchvision's conv (with bias), BN, ReLU triplets
                layers += [nn.Conv2d(cin, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                cin = w
            layers.append(SwitchPool(unpool))
        self.encoder = SwitchEncoder(layers)
        stages = []
        for i in reversed(range(len(VGG16))):
            widths = VGG16[i]
            outs = [widths[-1]] * (len(widths) - 1) + ([VGG16[i - 1][-1]] if i else [])
            stages.append([ConvBNReLU(widths[-1], c) for c in outs])
        self.decoder = UnpoolDecoder(stages)
        self.head = nn.Conv2d(VGG16[0][-1], num_classes, 3, padding=1)
        _init(self)


@register("segnet_basic")
class SegNetBasic(SegModel):
    hard_decisions = SegNet.hard_decisions
    def __init__(self, num_classes: int, width: int = 64, unpool: str = "mask"):
        """`unpool`: mask (index-free, TensorRT-buildable) or indices (MaxUnpool)."""
        super().__init__(num_classes, width=width, unpool=_check(unpool))
        layers = []
        for cin in (3, width, width, width):
            layers += [ConvBNReLU(cin, width, 7), SwitchPool(unpool)]
        self.encoder = SwitchEncoder(layers)
        self.decoder = UnpoolDecoder([[ConvBNReLU(width, width, 7, act=False)] for _ in range(4)])
        self.head = nn.Conv2d(width, num_classes, 1)
        _init(self)
