"""MobileNetV2 from scratch, with torchvision parameter names (`features.N...`) so its state dicts load as they are."""
from __future__ import annotations

import re

import torch.nn as nn


class ConvBNReLU6(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1, groups: int = 1):
        super().__init__(nn.Conv2d(cin, cout, k, stride, dilation * (k // 2), dilation, groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int, dilation: int = 1):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers = [ConvBNReLU6(cin, hidden, 1)] if expand != 1 else []
        layers += [ConvBNReLU6(hidden, hidden, 3, stride, dilation, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


# (expansion t, channels c, blocks n, stride s) of the paper's Table 2
_SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
_OUT_INDICES = (3, 6, 13, 17)  # last block at /4, /8, /16, /32


class MobileNetV2(nn.Module):
    """Returns features at /4, /8, /16, /32 (24, 32, 96, 320 channels); the /16 and /32 stages dilate
    instead of striding for output_stride 16 or 8 (DeepLab's scheme: a stage's first block keeps the
    previous rate). The ImageNet head (features.18, classifier) is left out.
    """

    # keys of an ImageNet checkpoint that this backbone leaves out on purpose (see pretrained.py)
    pretrained_skip = ("features.18.",)

    def __init__(self, output_stride: int = 32):
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        layers = [ConvBNReLU6(3, 32, stride=2)]
        cin, stride_now, dilation = 32, 2, 1
        for t, c, n, s in _SETTINGS:
            prev_dilation = dilation
            if s > 1 and stride_now >= output_stride:
                dilation *= s
                s = 1
            stride_now *= s
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t, prev_dilation if i == 0 else dilation))
                cin = c
        self.features = nn.Sequential(*layers)
        self.channels = [self.features[i].conv[-1].num_features for i in _OUT_INDICES]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x):
        feats = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _OUT_INDICES:
                feats.append(x)
        return feats

    @staticmethod
    def remap_state_dict(state: dict) -> dict:
        """timm's MobileNetV2 names (conv_stem, blocks.S.B.conv_pw, ...) -> torchvision's; others pass as they are."""
        if not any(k.startswith("blocks.") for k in state):
            return state
        firsts = [0]  # torchvision index of each timm stage's first block
        for _, _, n, _ in _SETTINGS:
            firsts.append(firsts[-1] + n)
        # per timm block: its layer name -> torchvision's, for the depthwise-separable first block and the others
        ds = {"conv_dw": "conv.0.0", "bn1": "conv.0.1", "conv_pw": "conv.1", "bn2": "conv.2"}
        ir = {"conv_pw": "conv.0.0", "bn1": "conv.0.1", "conv_dw": "conv.1.0", "bn2": "conv.1.1", "conv_pwl": "conv.2", "bn3": "conv.3"}
        top = {"conv_stem": "features.0.0", "bn1": "features.0.1", "conv_head": "features.18.0", "bn2": "features.18.1"}
        out = {}
        for k, v in state.items():
            m = re.fullmatch(r"blocks\.(\d+)\.(\d+)\.(\w+)\.(\w+)", k)
            name, _, param = k.partition(".")
            if m:
                stage, block, layer, param = int(m[1]), int(m[2]), m[3], m[4]
                table = ds if stage == 0 else ir
                k = f"features.{1 + firsts[stage] + block}.{table.get(layer, layer)}.{param}"
            elif name in top:
                k = f"{top[name]}.{param}"
            out[k] = v
        return out


def mobilenetv2(output_stride: int = 32) -> MobileNetV2:
    return MobileNetV2(output_stride)
