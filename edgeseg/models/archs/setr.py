"""SETR (Zheng et al., "Rethinking Semantic Segmentation from a Sequence-to-Sequence Perspective with
Transformers", CVPR 2021): a plain ViT encoder and one of the paper's three decoders. Default: ViT-Tiny, PUP.

- `naive`: 1x1 conv + BN + ReLU on the last token map, classes, bilinear upsampling;
- `pup` (progressive upsampling): four 3x3 conv + BN + ReLU stages, each followed by 2x upsampling;
- `mla` (multi-level aggregation): token maps of four evenly spaced blocks, top-down sums with a 3x3 conv per
  level, each level brought to /4 by two 3x3 convs and 4x upsampling, concatenated and classified.
Widths are reduced from the paper's 256 (`channels`) for edge devices; the auxiliary heads are left out.
"""
from __future__ import annotations

import torch
from torch import nn

from edgeseg.errors import EdgesegError
from edgeseg.models.backbones import create_backbone
from edgeseg.models.backbones.vit import unpad
from edgeseg.models.base import SegModel, _exporting
from edgeseg.models.layers import ConvBNReLU
from edgeseg.models.registry import register

DECODERS = ("naive", "pup", "mla")


class ViTSegModel(SegModel):
    """A SegModel on a ViT encoder: logits are upsampled to the padded image and cropped to the image."""

    def forward(self, images: torch.Tensor):
        if not _exporting():
            self.check_input(images)
        return unpad(self.head(self.decoder(self.encoder(images))), images, self.encoder.patch)


def _up(scale: int) -> nn.Upsample:
    return nn.Upsample(scale_factor=scale, mode="bilinear", align_corners=False)


class NaiveDecoder(nn.Sequential):
    def __init__(self, dim: int, channels: int):
        super().__init__(ConvBNReLU(dim, channels, 1))

    def forward(self, feats):
        return super().forward(feats[-1])


class PUPDecoder(nn.Sequential):
    def __init__(self, dim: int, channels: int):
        stages = []
        for i in range(4):
            stages += [ConvBNReLU(dim if i == 0 else channels, channels), _up(2)]
        super().__init__(*stages)

    def forward(self, feats):
        return super().forward(feats[-1])


class MLADecoder(nn.Module):
    def __init__(self, dim: int, channels: int, levels: int = 4):
        super().__init__()
        self.lateral = nn.ModuleList(ConvBNReLU(dim, channels, 1) for _ in range(levels))
        self.smooth = nn.ModuleList(ConvBNReLU(channels, channels) for _ in range(levels))
        half = channels // 2
        self.heads = nn.ModuleList(nn.Sequential(ConvBNReLU(channels, half), ConvBNReLU(half, half), _up(4))
                                   for _ in range(levels))

    def forward(self, feats):
        outs, top = [], None
        for i in reversed(range(len(feats))):  # deepest first: each level adds the aggregate above it
            lat = self.lateral[i](feats[i])
            top = lat if top is None else lat + top
            outs.append(self.heads[i](self.smooth[i](top)))
        return torch.cat(outs[::-1], 1)



@register("setr")
class SETR(ViTSegModel):
    def __init__(self, num_classes: int, backbone: str = "vit_tiny", decoder: str = "pup", channels: int = 128,
                 drop_path: float = 0.1):
        """`backbone`: vit_tiny or vit_small; `decoder`: naive, pup or mla; `channels`: the decoder's width."""
        super().__init__(num_classes, backbone=backbone, decoder=decoder, channels=channels, drop_path=drop_path)
        if decoder not in DECODERS:
            raise EdgesegError(f"setr: unknown decoder {decoder!r}; choose one of: {', '.join(DECODERS)}")
        if not backbone.startswith("vit_"):
            raise EdgesegError(f"setr: backbone {backbone!r} is not a ViT; choose vit_tiny or vit_small")
        depth = 12
        out = tuple(range(depth // 4, depth + 1, depth // 4)) if decoder == "mla" else (depth,)
        self.encoder = create_backbone(backbone, out_indices=out, drop_path=drop_path)
        dim = self.encoder.channels[-1]
        if decoder == "mla":
            self.decoder = MLADecoder(dim, channels, len(out))
            width = 2 * channels  # four levels of channels / 2
        else:
            self.decoder = (NaiveDecoder if decoder == "naive" else PUPDecoder)(dim, channels)
            width = channels
        self.head = nn.Sequential(nn.Dropout2d(0.1), nn.Conv2d(width, num_classes, 1))
