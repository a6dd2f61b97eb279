"""FCN-8s (Long et al., CVPR 2015) on a ResNet: class scores at /32, /16 and /8 fused top-down."""
from __future__ import annotations

import torch.nn as nn

from edgeseg.models.backbones import create_backbone
from edgeseg.models.base import SegModel
from edgeseg.models.context import make_context
from edgeseg.models.layers import ConvBNReLU, resize_to
from edgeseg.models.registry import register


class FCN8sDecoder(nn.Module):
    """score(C5) upsampled to /16 + score(C4), upsampled to /8 + score(C3).

    The fusion happens in class-score space, as in the paper, so the decoder already outputs the
    scores. A 3x3 conv block on C5 plays the part of VGG's fc6/fc7; the paper's learned 2x
    deconvolutions are bilinear resizes here, which follow any input size in the exported graph.
    """

    def __init__(self, channels, num_classes: int, dim: int, context: str | None = None):
        super().__init__()
        self.conv5 = nn.Sequential(ConvBNReLU(channels[-1], dim), nn.Dropout2d(0.1))
        self.context = make_context(context, dim)  # optional graph reasoning on the /32 features
        self.score32 = nn.Conv2d(dim, num_classes, 1)
        self.score16 = nn.Conv2d(channels[-2], num_classes, 1)
        self.score8 = nn.Conv2d(channels[-3], num_classes, 1)

    def forward(self, feats):
        c3, c4, c5 = feats[-3:]
        s = self.score32(self.context(self.conv5(c5)))
        s = self.score16(c4) + resize_to(s, c4)
        return self.score8(c3) + resize_to(s, c3)


@register("fcn8s")
class FCN8s(SegModel):
    def __init__(self, num_classes: int, backbone: str = "resnet18", dim: int | None = None, context: str | None = None):
        """`dim`: channels of the conv block on C5 (default: a quarter of C5's); `context`: glore or gcu after it."""
        super().__init__(num_classes, backbone=backbone, dim=dim, context=context)
        self.encoder = create_backbone(backbone)
        self.decoder = FCN8sDecoder(self.encoder.channels, num_classes, dim or self.encoder.channels[-1] // 4, context)
        self.head = nn.Identity()
