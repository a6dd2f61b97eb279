"""EfficientNet-Lite0 from scratch: EfficientNet-B0's MBConv stages without squeeze-excitation, ReLU6 instead of
swish, the stem (32) and head (1280) fixed (Tan & Le; TensorFlow's efficientnet/lite)."""
from __future__ import annotations

import re

import torch
from torch import nn

from edgeseg.meta import IMAGENET_MEAN, IMAGENET_STD

BN_EPS = 1e-3  # TensorFlow's: the ImageNet running variances were estimated with it


class ConvBNReLU6(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, dilation: int = 1, groups: int = 1,
                 act: bool = True):
        layers = [nn.Conv2d(cin, cout, k, stride, dilation * (k // 2), dilation, groups, bias=False),
                  nn.BatchNorm2d(cout, eps=BN_EPS)]
        super().__init__(*layers, *([nn.ReLU6(inplace=True)] if act else []))


class MBConv(nn.Module):
    """1x1 expansion (left out at expansion 1), kxk depthwise, linear 1x1 projection; identity skip at stride 1."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int, dilation: int = 1):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.expand = ConvBNReLU6(cin, hidden) if expand != 1 else nn.Identity()
        self.depthwise = ConvBNReLU6(hidden, hidden, k, stride, dilation, groups=hidden)
        self.project = ConvBNReLU6(hidden, cout, act=False)

    def forward(self, x):
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.use_res else y


# (expansion, kernel, stride, channels, blocks) of EfficientNet-B0's stages; Lite0 scales neither width nor depth
_STAGES = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
           (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]
_OUT_INDICES = (2, 4, 10, 15)  # last block at /4, /8, /16, /32


class EfficientNetLite0(nn.Module):
    """Returns features at /4, /8, /16, /32 (24, 40, 112, 320 channels); for output_stride 16 or 8 the /16 and
    /32 stages dilate instead of striding (DeepLab's scheme, as in mobilenetv2.py). The ImageNet head (the
    1280-channel 1x1 convolution and the classifier) is left out: remap_state_dict names it head.*, which
    load_pretrained skips.

    The input is edgeseg's (x / 255 - mean) / std; the first operation maps it to TensorFlow's (x - 127) / 128,
    which the ImageNet weights were trained on (a fixed affine, exact also at the borders, where folding it into
    the stem would change what the zero padding means).

    Padding is PyTorch's symmetric k//2 (exportable at any size); TensorFlow's "same" padding, with which the
    ImageNet weights were trained, differs only in where stride-2 windows start on even sizes.
    """

    def __init__(self, output_stride: int = 32):
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        std, mean = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.register_buffer("input_scale", 255 * std / 128, persistent=False)
        self.register_buffer("input_shift", (255 * mean - 127) / 128, persistent=False)
        self.stem = ConvBNReLU6(3, 32, 3, stride=2)
        blocks, cin, stride_now, dilation = [], 32, 2, 1
        for t, k, s, c, n in _STAGES:
            prev_dilation = dilation
            if s > 1 and stride_now >= output_stride:
                dilation *= s
                s = 1
            stride_now *= s
            for i in range(n):
                blocks.append(MBConv(cin, c, k, s if i == 0 else 1, t, prev_dilation if i == 0 else dilation))
                cin = c
        self.blocks = nn.Sequential(*blocks)
        self.channels = [self.blocks[i].project[1].num_features for i in _OUT_INDICES]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x):
        x = self.stem(x * self.input_scale + self.input_shift)
        feats = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in _OUT_INDICES:
                feats.append(x)
        return feats

    @staticmethod
    def remap_state_dict(state: dict) -> dict:
        """efficientnet_lite_pytorch's names (lukemelas' layout: _conv_stem, _blocks.N._expand_conv, ...) -> ours;
        others pass as they are."""
        if not any(k.startswith("_blocks.") for k in state):
            return state
        layers = {"_expand_conv": "expand.0", "_bn0": "expand.1", "_depthwise_conv": "depthwise.0",
                  "_bn1": "depthwise.1", "_project_conv": "project.0", "_bn2": "project.1"}
        top = {"_conv_stem": "stem.0", "_bn0": "stem.1", "_conv_head": "head.0", "_bn1": "head.1", "_fc": "head.fc"}
        out = {}
        for k, v in state.items():
            m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", k)
            name, _, param = k.partition(".")
            if m:
                k = f"blocks.{m[1]}.{layers.get(m[2], m[2])}.{m[3]}"
            elif name in top:
                k = f"{top[name]}.{param}"
            out[k] = v
        return out


def efficientnet_lite0(output_stride: int = 32) -> EfficientNetLite0:
    return EfficientNetLite0(output_stride)
