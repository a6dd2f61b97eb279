"""U2-Net and U2-Net-P (Qin et al., Pattern Recognition 2020): a U-Net of ReSidual U-blocks (RSU), each a small
U-Net with a residual connection; side outputs of every decoder stage are fused by a 1x1 convolution.

RSU-L (L = 7..4) pools L - 2 times inside the block, has a dilation-2 conv at its bottom and bilinear
upsampling back; RSU-4F keeps the resolution and dilates 1, 2, 4, 8 instead. Stage widths are the paper's
(U2-Net: 44 M parameters; U2-Net-P: 16 mid / 64 out channels everywhere, 1.1 M). Pools are 2x2 with ceil mode,
as in the authors' code, so any input size works. Multi-class head: each side output and the fusion predict
`num_classes` channels (the paper predicts one saliency channel) and are compared with softmax cross-entropy.
The training loop takes one auxiliary output, so the six side outputs are supervised through the mean of their
logits (weight `aux_weight`) instead of one loss each.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgeseg.models.base import SegModel, _exporting
from edgeseg.models.layers import ConvBNReLU, resize_to
from edgeseg.models.registry import register


def _pool(x):
    return F.max_pool2d(x, 2, 2, ceil_mode=True)


class RSU(nn.Module):
    def __init__(self, height: int, cin: int, mid: int, cout: int):
        super().__init__()
        self.conv_in = ConvBNReLU(cin, cout)
        self.enc = nn.ModuleList([ConvBNReLU(cout, mid)] + [ConvBNReLU(mid, mid) for _ in range(height - 2)])
        self.bottom = ConvBNReLU(mid, mid, dilation=2)
        self.dec = nn.ModuleList([ConvBNReLU(2 * mid, mid) for _ in range(height - 2)] + [ConvBNReLU(2 * mid, cout)])

    def forward(self, x):
        hin = self.conv_in(x)
        h, skips = hin, []
        for k, conv in enumerate(self.enc):
            h = conv(_pool(h) if k else h)
            skips.append(h)
        d = self.bottom(h)
        for k, conv in enumerate(self.dec):
            skip = skips[-1 - k]
            d = conv(torch.cat([resize_to(d, skip) if k else d, skip], 1))
        return d + hin


class RSU4F(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int):
        super().__init__()
        self.conv_in = ConvBNReLU(cin, cout)
        self.enc = nn.ModuleList([ConvBNReLU(cout, mid)] + [ConvBNReLU(mid, mid, dilation=d) for d in (2, 4)])
        self.bottom = ConvBNReLU(mid, mid, dilation=8)
        self.dec = nn.ModuleList([ConvBNReLU(2 * mid, mid, dilation=d) for d in (4, 2)] + [ConvBNReLU(2 * mid, cout)])

    def forward(self, x):
        hin = self.conv_in(x)
        h, skips = hin, []
        for conv in self.enc:
            h = conv(h)
            skips.append(h)
        d = self.bottom(h)
        for k, conv in enumerate(self.dec):
            d = conv(torch.cat([d, skips[-1 - k]], 1))
        return d + hin


def _block(spec):
    height, cin, mid, cout = spec
    return RSU4F(cin, mid, cout) if height == "4F" else RSU(height, cin, mid, cout)


# (height, in, mid, out) of En_1..En_6 and De_5..De_1
U2NET = ([(7, 3, 32, 64), (6, 64, 32, 128), (5, 128, 64, 256), (4, 256, 128, 512), ("4F", 512, 256, 512),
          ("4F", 512, 256, 512)],
         [("4F", 1024, 256, 512), (4, 1024, 128, 256), (5, 512, 64, 128), (6, 256, 32, 64), (7, 128, 16, 64)])
U2NETP = ([(7, 3, 16, 64), (6, 64, 16, 64), (5, 64, 16, 64), (4, 64, 16, 64), ("4F", 64, 16, 64), ("4F", 64, 16, 64)],
          [("4F", 128, 16, 64), (4, 128, 16, 64), (5, 128, 16, 64), (6, 128, 16, 64), (7, 128, 16, 64)])


class Encoder(nn.Module):
    def __init__(self, specs):
        super().__init__()
        self.stages = nn.ModuleList(_block(s) for s in specs)
        self.channels = [s[3] for s in specs]

    def forward(self, x):
        feats = []
        for k, stage in enumerate(self.stages):
            x = stage(_pool(x) if k else x)
            feats.append(x)
        return feats


class Decoder(nn.Module):
    """De_5 .. De_1; returns the side-output features [De_1, .., De_5, En_6] (fine to coarse)."""

    def __init__(self, specs):
        super().__init__()
        self.stages = nn.ModuleList(_block(s) for s in specs)

    def forward(self, feats):
        d, out = feats[-1], [feats[-1]]
        for stage, skip in zip(self.stages, reversed(feats[:-1])):
            d = stage(torch.cat([resize_to(d, skip), skip], 1))
            out.append(d)
        return out[::-1]


class _U2NetBase(SegModel):
    aux_weight = 1.0

    def _build(self, specs, num_classes: int):
        enc, dec = specs
        self.encoder = Encoder(enc)
        self.decoder = Decoder(dec)
        side_channels = [s[3] for s in dec[::-1]] + [enc[-1][3]]
        self.sides = nn.ModuleList(nn.Conv2d(c, num_classes, 3, padding=1) for c in side_channels)
        self.head = nn.Conv2d(len(side_channels) * num_classes, num_classes, 1)
        self.aux_head = self.sides  # the side outputs: fused always, also supervised in training
        for m in self.modules():  # He init: BN then sees unit-scale inputs through the ~110 convolutions
            if isinstance(m, nn.Conv2d) and m.out_channels != num_classes:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images):
        if not _exporting():
            self.check_input(images)
        feats = self.decoder(self.encoder(images))
        sides = [resize_to(conv(f), images) for conv, f in zip(self.sides, feats)]
        logits = self.head(torch.cat(sides, 1))
        if self.training:
            return logits, torch.stack(sides).mean(0)
        return logits


@register("u2net")
class U2Net(_U2NetBase):
    def __init__(self, num_classes: int):
        super().__init__(num_classes)
        self._build(U2NET, num_classes)


@register("u2netp")
class U2NetP(_U2NetBase):
    def __init__(self, num_classes: int):
        super().__init__(num_classes)
        self._build(U2NETP, num_classes)
