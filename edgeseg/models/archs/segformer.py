"""SegFormer (Xie et al., NeurIPS 2021): Mix Transformer encoder + all-MLP decoder. Default: SegFormer-B0."""
from __future__ import annotations

import torch
import torch.nn as nn

from edgeseg.models.backbones import create_backbone
from edgeseg.models.base import SegModel
from edgeseg.models.layers import ConvBNReLU, resize_to
from edgeseg.models.registry import register


class AllMLPDecoder(nn.Module):
    """Per stage a linear projection to `dim` (a 1x1 conv), upsampled to /4, concatenated and fused."""

    def __init__(self, channels, dim: int):
        super().__init__()
        self.proj = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in channels)
        self.fuse = ConvBNReLU(len(channels) * dim, dim, 1)

    def forward(self, feats):
        maps = [p(f) for p, f in zip(self.proj, feats)]
        top = maps[0]
        return self.fuse(torch.cat([resize_to(m, top) for m in maps[:0:-1]] + [top], 1))


@register("segformer")
class SegFormer(SegModel):
    def __init__(self, num_classes: int, backbone: str = "mit_b0", dim: int = 256, drop_path: float = 0.1):
        """`dim`: the decoder's width; `drop_path`: the encoder's stochastic-depth rate (training only)."""
        super().__init__(num_classes, backbone=backbone, dim=dim, drop_path=drop_path)
        self.encoder = create_backbone(backbone, drop_path=drop_path)
        self.decoder = AllMLPDecoder(self.encoder.channels, dim)
        self.head = nn.Sequential(nn.Dropout2d(0.1), nn.Conv2d(dim, num_classes, 1))
