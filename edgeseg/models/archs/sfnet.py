"""SFNet (Li et al., ECCV 2020): ResNet + PPM + FPN whose top-down path aligns features with learned flow."""
from __future__ import annotations

import torch
import torch.nn as nn

from edgeseg.models.backbones import create_backbone
from edgeseg.models.base import AuxHead, SegModel
from edgeseg.models.layers import ConvBNReLU, adaptive_avg_pool2d, flow_warp, resize_to
from edgeseg.models.registry import register


class PPM(nn.Module):
    """Pyramid pooling (bins 1, 2, 3, 6) that exports with dynamic H and W."""

    def __init__(self, cin: int, cout: int, bins=(1, 2, 3, 6)):
        super().__init__()
        self.bins = bins
        self.stages = nn.ModuleList(ConvBNReLU(cin, cout, 1) for _ in bins)
        self.bottleneck = ConvBNReLU(cin + len(bins) * cout, cout)

    def forward(self, x):
        pyramid = [x] + [resize_to(stage(adaptive_avg_pool2d(x, b)), x, align_corners=True)
                         for b, stage in zip(self.bins, self.stages)]
        return self.bottleneck(torch.cat(pyramid, 1))


class FlowAlign(nn.Module):
    """Flow Alignment Module: predict a flow from (upsampled coarse, fine) and warp the coarse map onto the fine grid."""

    def __init__(self, dim: int, mid: int):
        super().__init__()
        self.down_h = nn.Conv2d(dim, mid, 1, bias=False)
        self.down_l = nn.Conv2d(dim, mid, 1, bias=False)
        self.flow_make = nn.Conv2d(2 * mid, 2, 3, padding=1, bias=False)
        nn.init.zeros_(self.flow_make.weight)  # start as plain bilinear upsampling

    def forward(self, fine, coarse):
        h = resize_to(self.down_h(coarse), fine, align_corners=True)
        flow = self.flow_make(torch.cat([h, self.down_l(fine)], 1))
        return flow_warp(coarse, flow, align_corners=True)


class SFNetDecoder(nn.Module):
    def __init__(self, channels, dim: int):
        super().__init__()
        self.ppm = PPM(channels[-1], dim)
        self.lateral = nn.ModuleList(ConvBNReLU(c, dim, 1) for c in channels[:-1])
        self.align = nn.ModuleList(FlowAlign(dim, dim // 2) for _ in channels[:-1])
        self.smooth = nn.ModuleList(ConvBNReLU(dim, dim) for _ in channels[:-1])
        self.fuse = ConvBNReLU(len(channels) * dim, dim)

    def forward(self, feats):
        f = self.ppm(feats[-1])
        pyramid = [f]
        for i in reversed(range(len(feats) - 1)):
            lat = self.lateral[i](feats[i])
            f = lat + self.align[i](lat, f)
            pyramid.append(self.smooth[i](f))
        pyramid.reverse()
        top = pyramid[0]
        return self.fuse(torch.cat([top] + [resize_to(p, top, align_corners=True) for p in pyramid[1:]], 1))


@register("sfnet")
class SFNet(SegModel):
    def __init__(self, num_classes: int, backbone: str = "resnet18", fpn_dim: int = 128, aux: bool = True):
        super().__init__(num_classes, backbone=backbone, fpn_dim=fpn_dim, aux=aux)
        self.encoder = create_backbone(backbone)
        self.decoder = SFNetDecoder(self.encoder.channels, fpn_dim)
        self.head = nn.Sequential(nn.Dropout2d(0.1), nn.Conv2d(fpn_dim, num_classes, 1))
        if aux:
            self.aux_head = AuxHead(self.encoder.channels[self.aux_index], num_classes)
