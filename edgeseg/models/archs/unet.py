"""U-Net (Ronneberger et al., MICCAI 2015): 4 poolings down, 4 bilinear upsamplings up, skip concatenations."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgeseg.models.base import SegModel
from edgeseg.models.layers import ConvBNReLU, resize_to
from edgeseg.models.registry import register


class DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(ConvBNReLU(cin, cout), ConvBNReLU(cout, cout))


class UNetEncoder(nn.Module):
    """Returns features at /1, /2, /4, /8, /16 with width, 2x, 4x, 8x, 16x channels."""

    def __init__(self, width: int, depth: int = 4):
        super().__init__()
        self.channels = [width * 2 ** i for i in range(depth + 1)]
        self.inc = DoubleConv(3, width)
        self.down = nn.ModuleList(DoubleConv(a, b) for a, b in zip(self.channels, self.channels[1:]))

    def forward(self, x):
        feats = [self.inc(x)]
        for block in self.down:
            feats.append(block(F.max_pool2d(feats[-1], 2)))
        return feats


class UNetDecoder(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.up = nn.ModuleList(DoubleConv(channels[i] + channels[i + 1], channels[i]) for i in range(len(channels) - 1))

    def forward(self, feats):
        x = feats[-1]
        for i in reversed(range(len(self.up))):
            x = self.up[i](torch.cat([feats[i], resize_to(x, feats[i])], 1))
        return x


@register("unet")
class UNet(SegModel):
    size_divisor = 16  # four 2x poolings must land on whole pixels for the skips to line up

    def __init__(self, num_classes: int, width: int = 32):
        """`width`: channels of the first block, doubled at each of the 4 levels down."""
        super().__init__(num_classes, width=width)
        self.encoder = UNetEncoder(width)
        self.decoder = UNetDecoder(self.encoder.channels)
        self.head = nn.Conv2d(width, num_classes, 1)
