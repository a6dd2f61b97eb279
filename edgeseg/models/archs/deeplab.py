"""DeepLab v1, v2 and v3 (v3+ is `deeplabv3plus.py`); the ASPP modules are shared (`edgeseg.models.aspp`).

- v1, LargeFOV (Chen et al., "Semantic Image Segmentation with Deep Convolutional Nets and Fully Connected
  CRFs", ICLR 2015): VGG-16 with 3x3 pools, pool4 and pool5 at stride 1, conv5 dilated 2, fc6 a 3x3 conv of 1024
  channels dilated 12, fc7 1x1, fc8 1x1 to classes; output stride 8, scores upsampled bilinearly.
- v2 (Chen et al., "DeepLab: Semantic Image Segmentation with Deep Convolutional Nets, Atrous Convolution, and
  Fully Connected CRFs", TPAMI 2018): a ResNet at output stride 8 and ASPP-L, the sum of four fc6-fc7-fc8
  branches dilated 6, 12, 18, 24.
- v3 (Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation", arXiv 1706.05587): a ResNet
  at output stride 16 (or 8) whose last stage uses multi-grid rates (1, 2, 4) x the stage's rate, then ASPP
  (1x1, three 3x3 atrous convs at 6/12/18 x 16 / output stride, image pooling), 1x1 to classes.

Changes: the encoders are VGG-16-BN / ResNet-18 (or 50) trained from scratch, so fc6/fc7 and ASPP-L carry batch
norm; v2 and v3 also take MobileNetV2 and EfficientNet-Lite0 (ImageNet weights available offline), dilated the
same way. The dense CRF post-processing of v1/v2 is left out (it is not part of the network); v2's branch width
defaults to 256 (`dim=1024` is the paper's) to keep the default within this CPU. Multi-grid rates apply per
residual block of a ResNet's last stage, cycling when it has fewer or more blocks than rates (ResNet-18: 1, 2).
`context=glore|gcu` adds a graph-reasoning unit after v3's ASPP (`edgeseg.models.context`).
"""
from __future__ import annotations

from torch import nn

from edgeseg.errors import EdgesegError
from edgeseg.models.aspp import ASPP, ASPPSum
from edgeseg.models.backbones import create_backbone
from edgeseg.models.backbones.vgg import vgg16_bn
from edgeseg.models.base import SegModel
from edgeseg.models.context import make_context
from edgeseg.models.layers import ConvBNReLU
from edgeseg.models.registry import register


class Last(nn.Module):
    """Applies a module to the last (coarsest) encoder feature."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, feats):
        return self.module(feats[-1])


def _dilated(backbone: str, output_stride: int):
    """An encoder at output stride 8 or 16: a ResNet (the papers'), or MobileNetV2 / EfficientNet-Lite0, which
    dilate their last stages the same way and have ImageNet weights here."""
    if not backbone.startswith("resnet") and backbone not in ("mobilenetv2", "efficientnet_lite0"):
        raise EdgesegError(f"backbone {backbone!r}: DeepLab v2/v3 take resnet18, resnet50, mobilenetv2 or "
                           f"efficientnet_lite0")
    if output_stride not in (8, 16):
        raise EdgesegError(f"output_stride={output_stride!r}: choose 8 or 16")
    return create_backbone(backbone, output_stride=output_stride)


def apply_multi_grid(layer: nn.Sequential, rate: int, grid) -> None:
    """Set the 3x3 convolutions of block i to dilation rate * grid[i % len(grid)] (padding kept 'same')."""
    for i, block in enumerate(layer):
        d = rate * grid[i % len(grid)]
        for conv in block.modules():
            if isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3):
                conv.dilation, conv.padding = (d, d), (d, d)


@register("deeplabv1")
class DeepLabV1(SegModel):
    def __init__(self, num_classes: int, fc_dim: int = 1024):
        """`fc_dim`: channels of fc6/fc7 (LargeFOV: 1024)."""
        super().__init__(num_classes, fc_dim=fc_dim)
        self.encoder = vgg16_bn(output_stride=8, pool_kernel=3)
        self.decoder = Last(nn.Sequential(ConvBNReLU(512, fc_dim, 3, dilation=12), nn.Dropout2d(0.5),
                                          ConvBNReLU(fc_dim, fc_dim, 1), nn.Dropout2d(0.5)))
        self.head = nn.Conv2d(fc_dim, num_classes, 1)
        nn.init.normal_(self.head.weight, std=0.01)  # fc8's initialisation in the paper
        nn.init.zeros_(self.head.bias)


@register("deeplabv2")
class DeepLabV2(SegModel):
    def __init__(self, num_classes: int, backbone: str = "resnet18", dim: int = 256, rates=(6, 12, 18, 24)):
        """`backbone`: resnet18 or resnet50 (or mobilenetv2, efficientnet_lite0), output stride 8; `dim`: ASPP-L
        branch width (paper: 1024)."""
        super().__init__(num_classes, backbone=backbone, dim=dim, rates=list(rates))
        self.encoder = _dilated(backbone, 8)
        self.decoder = Last(ASPPSum(self.encoder.channels[-1], num_classes, tuple(rates), dim))
        self.head = nn.Identity()  # the branches end in class scores


class DeepLabV3Decoder(nn.Module):
    def __init__(self, cin: int, dim: int, rates, context: str | None):
        super().__init__()
        self.aspp = ASPP(cin, dim, rates, separable=False)
        self.context = make_context(context, dim)

    def forward(self, feats):
        return self.context(self.aspp(feats[-1]))


@register("deeplabv3")
class DeepLabV3(SegModel):
    def __init__(self, num_classes: int, backbone: str = "resnet18", output_stride: int = 16, dim: int = 256,
                 multi_grid=(1, 2, 4), context: str | None = None):
        """`output_stride`: 16 or 8; `multi_grid`: unit rates of a ResNet's last stage; `context`: glore or gcu."""
        super().__init__(num_classes, backbone=backbone, output_stride=output_stride, dim=dim,
                         multi_grid=list(multi_grid), context=context)
        self.encoder = _dilated(backbone, output_stride)
        if backbone.startswith("resnet"):  # the paper's multi-grid is a ResNet's; the others keep their dilations
            apply_multi_grid(self.encoder.layer4, 32 // output_stride, tuple(multi_grid))
        rates = tuple(r * 16 // output_stride for r in (6, 12, 18))
        self.decoder = DeepLabV3Decoder(self.encoder.channels[-1], dim, rates, context)
        self.head = nn.Conv2d(dim, num_classes, 1)
