"""AlignSeg (Huang et al., "AlignSeg: Feature-Aligned Segmentation Networks", TPAMI 2021): a ResNet whose
top-down fusions and context are aligned by learned offsets instead of plain bilinear upsampling.

- Aligned feature aggregation (AlignFA): from the fine feature and the upsampled coarse one, a 3x3 conv predicts
  two offset fields; the fine feature is warped by the first, the coarse one by the second (sampled directly
  at the fine grid + offset), and the two are summed. Three fusions: /32 -> /16 -> /8 -> /4.
- Aligned context modelling (AlignCM) on the /32 feature: context pooled to a 6x6 grid is warped onto every
  position by a learned offset (a pixel reads the context of the region it belongs to rather than of its
  fixed bin), plus the global mean; both are added to the feature.

Every warp is `edgeseg.models.layers.flow_warp` (7 in all), so `--flowwarp-plugin` turns each into one
`edgeseg::FlowWarp` node. The offset convolutions start at zero (plain upsampling) as SFNet's flows do. The
backbone defaults to ResNet-18 (the paper: ResNet-101), decoder width 128.
"""
from __future__ import annotations

import torch
from torch import nn

from edgeseg.models.backbones import create_backbone
from edgeseg.models.base import SegModel
from edgeseg.models.layers import ConvBNReLU, adaptive_avg_pool2d, flow_warp, resize_to
from edgeseg.models.registry import register


class AlignFA(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.offsets = nn.Conv2d(2 * dim, 4, 3, padding=1, bias=False)
        nn.init.zeros_(self.offsets.weight)

    def forward(self, fine, coarse):
        off = self.offsets(torch.cat([fine, resize_to(coarse, fine, align_corners=True)], 1))
        return flow_warp(fine, off[:, :2]) + flow_warp(coarse, off[:, 2:])


class AlignCM(nn.Module):
    def __init__(self, dim: int, bins: int = 6):
        super().__init__()
        self.bins = bins
        self.local = ConvBNReLU(dim, dim, 1)
        self.glob = nn.Conv2d(dim, dim, 1)  # no BN on the 1x1 map (batch size 1 in training)
        self.offset = nn.Conv2d(2 * dim, 2, 3, padding=1, bias=False)
        nn.init.zeros_(self.offset.weight)

    def forward(self, x):
        ctx = self.local(adaptive_avg_pool2d(x, self.bins))
        off = self.offset(torch.cat([x, resize_to(ctx, x, align_corners=True)], 1))
        g = torch.relu(self.glob(x.mean(dim=(2, 3), keepdim=True)))
        return x + flow_warp(ctx, off) + g


class AlignSegDecoder(nn.Module):
    def __init__(self, channels, dim: int):
        super().__init__()
        self.reduce = ConvBNReLU(channels[-1], dim)
        self.context = AlignCM(dim)
        self.lateral = nn.ModuleList(ConvBNReLU(c, dim, 1) for c in channels[:-1])
        self.align = nn.ModuleList(AlignFA(dim) for _ in channels[:-1])
        self.smooth = nn.ModuleList(ConvBNReLU(dim, dim) for _ in channels[:-1])

    def forward(self, feats):
        f = self.context(self.reduce(feats[-1]))
        for i in reversed(range(len(feats) - 1)):
            f = self.smooth[i](self.align[i](self.lateral[i](feats[i]), f))
        return f


@register("alignseg")
class AlignSeg(SegModel):
    def __init__(self, num_classes: int, backbone: str = "resnet18", dim: int = 128):
        """`backbone`: resnet18 or resnet50; `dim`: decoder channels."""
        super().__init__(num_classes, backbone=backbone, dim=dim)
        self.encoder = create_backbone(backbone)
        self.decoder = AlignSegDecoder(self.encoder.channels, dim)
        self.head = nn.Sequential(nn.Dropout2d(0.1), nn.Conv2d(dim, num_classes, 1))

    @property
    def num_warps(self) -> int:
        return 2 * len(self.decoder.align) + 1
