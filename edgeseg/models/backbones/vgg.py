"""VGG-16 with batch norm (Simonyan & Zisserman, ICLR 2015) from scratch, with torchvision's `features.N`
parameter names so its `vgg16_bn` state dict loads as it is.

Returns the outputs of pool2..pool5 ([/4, /8, /16, /32]). At output stride 16 or 8 the last one or two pools
become 3x3 stride-1 pools and the convolutions after them are dilated by 2 per skipped stride, as DeepLab v1 does
(Chen et al., ICLR 2015).
"""
from __future__ import annotations

from torch import nn

VGG16 = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


class VGG(nn.Module):
    def __init__(self, stages=VGG16, output_stride: int = 32, pool_kernel: int = 2):
        """`pool_kernel`: 2 (VGG's 2x2 pools) or 3 (DeepLab's overlapping 3x3 stride-2 pools, padding 1)."""
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        strided = {32: 5, 16: 4, 8: 3}[output_stride]  # pools that keep stride 2
        layers, cin, dilation, self.pool_index = [], 3, 1, []
        for i, widths in enumerate(stages):
            for w in widths:
                layers += [nn.Conv2d(cin, w, 3, padding=dilation, dilation=dilation), nn.BatchNorm2d(w),
                           nn.ReLU(inplace=True)]
                cin = w
            self.pool_index.append(len(layers))
            if i < strided:
                layers.append(nn.MaxPool2d(pool_kernel, 2, pool_kernel // 2) if pool_kernel == 3 else nn.MaxPool2d(2, 2))
            else:
                layers.append(nn.MaxPool2d(3, 1, 1))
                dilation *= 2
        self.features = nn.Sequential(*layers)
        self.channels = [stages[i][-1] for i in range(1, 5)]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x):
        feats = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.pool_index[1:]:
                feats.append(x)
        return feats


def vgg16_bn(output_stride: int = 32, pool_kernel: int = 2) -> VGG:
    return VGG(VGG16, output_stride, pool_kernel)
