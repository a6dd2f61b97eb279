"""PSPNet (Zhao et al., CVPR 2017): dilated ResNet (output stride 8) + pyramid pooling, aux head on C4."""
from __future__ import annotations

import torch.nn as nn

from edgeseg.models.archs.sfnet import PPM
from edgeseg.models.backbones import create_backbone
from edgeseg.models.base import AuxHead, SegModel
from edgeseg.models.registry import register


class PSPDecoder(PPM):
    """Pyramid pooling over the last feature. Its pooling is layers.adaptive_avg_pool2d, so the exported
    graph pools correctly at any input size (an AveragePool export freezes the bins to the export size)."""

    def forward(self, feats):
        return super().forward(feats[-1])


@register("pspnet")
class PSPNet(SegModel):
    def __init__(self, num_classes: int, backbone: str = "resnet18", dim: int | None = None, aux: bool = True):
        """`dim`: channels of each pyramid level and of the fused map (default: a quarter of C5's)."""
        super().__init__(num_classes, backbone=backbone, dim=dim, aux=aux)
        self.encoder = create_backbone(backbone, output_stride=8)
        channels = self.encoder.channels
        dim = dim or channels[-1] // 4
        self.decoder = PSPDecoder(channels[-1], dim, bins=(1, 2, 3, 6))
        self.head = nn.Sequential(nn.Dropout2d(0.1), nn.Conv2d(dim, num_classes, 1))
        if aux:
            self.aux_head = AuxHead(channels[self.aux_index], num_classes, mid=channels[self.aux_index] // 4)
