"""ESPNet-C and ESPNet (Mehta et al., "ESPNet: Efficient Spatial Pyramid of Dilated Convolutions for Semantic
Segmentation", ECCV 2018), after the authors' code.

ESP module: a 1x1 point-wise reduction to N/K channels, K = 5 parallel 3x3 convolutions dilated 1, 2, 4, 8, 16,
hierarchical feature fusion (the dilated outputs summed cumulatively before concatenation, which removes the
gridding artefacts), a residual connection, BN + PReLU. The strided ESP that opens levels 2 and 3 reduces with a
3x3 stride-2 convolution instead. The input image, average-pooled to /2 and /4, is concatenated at levels 1 and 2.

- `espnet_c`: the encoder (alpha2 = 2 ESP modules at /4, alpha3 = 8 at /8), a 1x1 classifier at /8, bilinear
  upsampling. Any input size.
- `espnet`: the encoder plus its light decoder: the /8 scores upsampled by 2x2 transposed convolutions and fused
  with scores from level 2 (through an ESP module) and features of level 1. H and W must be multiples of 8
  (the transposed convolutions double sizes exactly).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgeseg.models.base import SegModel
from edgeseg.models.registry import register


class BR(nn.Sequential):
    def __init__(self, c: int):
        super().__init__(nn.BatchNorm2d(c), nn.PReLU(c))


class CBR(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1):
        super().__init__(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.PReLU(cout))


class ESP(nn.Module):
    """Reduce -> split -> transform (dilations 1..16) -> hierarchical fusion -> merge; `stride=2` down-samples."""

    def __init__(self, cin: int, cout: int, stride: int = 1, residual: bool = True):
        super().__init__()
        n = cout // 5
        first = cout - 4 * n  # the d=1 branch takes the remainder so the concatenation has cout channels
        self.reduce = nn.Conv2d(cin, n, 3 if stride == 2 else 1, stride, 1 if stride == 2 else 0, bias=False)
        self.branches = nn.ModuleList(nn.Conv2d(n, first if d == 1 else n, 3, 1, d, d, bias=False)
                                      for d in (1, 2, 4, 8, 16))
        self.residual = residual and stride == 1 and cin == cout
        self.out = BR(cout)

    def forward(self, x):
        r = self.reduce(x)
        d = [b(r) for b in self.branches]
        fused = [d[0], d[1]]
        for k in range(2, 5):
            fused.append(fused[-1] + d[k])  # hierarchical feature fusion
        y = torch.cat(fused, 1)
        return self.out(x + y if self.residual else y)


def _image_pyramid(x):
    """The input average-pooled (3x3, stride 2, padding 1) to /2 and /4: the same sizes as the strided convs."""
    half = F.avg_pool2d(x, 3, 2, 1)
    return half, F.avg_pool2d(half, 3, 2, 1)


class Encoder(nn.Module):
    """Returns [level-1 features (/2, 19 ch), level-2 features (/4, 131 ch), level-3 features (/8, 256 ch)]."""

    def __init__(self, alpha2: int = 2, alpha3: int = 8):
        super().__init__()
        self.level1 = CBR(3, 16, 3, 2)
        self.b1 = BR(16 + 3)
        self.level2_0 = ESP(16 + 3, 64, stride=2)
        self.level2 = nn.Sequential(*[ESP(64, 64) for _ in range(alpha2)])
        self.b2 = BR(128 + 3)
        self.level3_0 = ESP(128 + 3, 128, stride=2)
        self.level3 = nn.Sequential(*[ESP(128, 128) for _ in range(alpha3)])
        self.b3 = BR(256)
        self.channels = [19, 131, 256]

    def forward(self, x):
        half, quarter = _image_pyramid(x)
        l1 = self.b1(torch.cat([self.level1(x), half], 1))
        l2_0 = self.level2_0(l1)
        l2 = self.b2(torch.cat([self.level2(l2_0), l2_0, quarter], 1))
        l3_0 = self.level3_0(l2)
        return [l1, l2, self.b3(torch.cat([l3_0, self.level3(l3_0)], 1))]


class Last(nn.Module):
    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, feats):
        return self.module(feats[-1])


@register("espnet_c")
class ESPNetC(SegModel):
    def __init__(self, num_classes: int, alpha2: int = 2, alpha3: int = 8):
        """`alpha2`, `alpha3`: ESP modules at levels 2 and 3."""
        super().__init__(num_classes, alpha2=alpha2, alpha3=alpha3)
        self.encoder = Encoder(alpha2, alpha3)
        self.decoder = Last(nn.Identity())
        self.head = nn.Conv2d(256, num_classes, 1, bias=False)


class ESPNetDecoder(nn.Module):
    def __init__(self, num_classes: int):
        super().__init__()
        c = num_classes
        self.score3 = nn.Conv2d(256, c, 1, bias=False)
        self.br3 = nn.BatchNorm2d(c)
        self.up3 = nn.ConvTranspose2d(c, c, 2, 2, bias=False)
        self.score2 = nn.Conv2d(131, c, 1, bias=False)
        self.combine23 = nn.Sequential(BR(2 * c), ESP(2 * c, c, residual=False))
        self.up2 = nn.Sequential(nn.ConvTranspose2d(c, c, 2, 2, bias=False), BR(c))
        self.combine1 = CBR(19 + c, c, 3)

    def forward(self, feats):
        l1, l2, l3 = feats
        s3 = self.up3(self.br3(self.score3(l3)))
        s2 = self.up2(self.combine23(torch.cat([self.score2(l2), s3], 1)))
        return self.combine1(torch.cat([s2, l1], 1))


@register("espnet")
class ESPNet(SegModel):
    size_divisor = 8

    def __init__(self, num_classes: int, alpha2: int = 2, alpha3: int = 8):
        """`alpha2`, `alpha3`: ESP modules at levels 2 and 3."""
        super().__init__(num_classes, alpha2=alpha2, alpha3=alpha3)
        self.encoder = Encoder(alpha2, alpha3)
        self.decoder = ESPNetDecoder(num_classes)
        self.head = nn.ConvTranspose2d(num_classes, num_classes, 2, 2, bias=False)
