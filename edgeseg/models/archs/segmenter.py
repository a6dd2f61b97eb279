"""Segmenter (Strudel et al., "Segmenter: Transformer for Semantic Segmentation", ICCV 2021): a ViT encoder
and a linear or mask-transformer decoder. Default: Seg-T/16 with the mask transformer.

- `linear`: a per-patch linear classifier, upsampled;
- `mask`: one learned embedding per class is appended to the projected patch tokens, both are decoded
  jointly by transformer blocks, and each class's mask is the scalar product of the L2-normalised patch and
  class embeddings (then a LayerNorm over the classes, as in the paper's code).
The ViT here has no class token (the paper's encoder carries one that the decoder drops).
"""
from __future__ import annotations

import torch
from torch import nn

from edgeseg.errors import EdgesegError
from edgeseg.models.archs.setr import ViTSegModel
from edgeseg.models.attention import TransformerBlock
from edgeseg.models.backbones import create_backbone
from edgeseg.models.backbones.mit import tokens_to_map
from edgeseg.models.registry import register

DECODERS = ("linear", "mask")


class LinearDecoder(nn.Module):
    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.cls = nn.Conv2d(dim, num_classes, 1)  # a Linear per token

    def forward(self, feats):
        return self.cls(feats[-1])


class MaskTransformer(nn.Module):
    def __init__(self, dim: int, num_classes: int, layers: int = 2, heads: int = 3, drop_path: float = 0.0):
        super().__init__()
        self.num_classes, self.scale = num_classes, dim ** -0.5
        self.proj_dec = nn.Linear(dim, dim)
        self.cls_emb = nn.Parameter(torch.randn(1, num_classes, dim) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, 4.0, drop_path) for _ in range(layers))
        self.decoder_norm = nn.LayerNorm(dim)
        self.proj_patch = nn.Parameter(self.scale * torch.randn(dim, dim))
        self.proj_classes = nn.Parameter(self.scale * torch.randn(dim, dim))
        self.mask_norm = nn.LayerNorm(num_classes)

    def forward(self, feats):
        x = feats[-1]
        h, w = x.shape[-2:]
        tokens = self.proj_dec(x.flatten(2).transpose(1, 2))
        tokens = torch.cat((tokens, self.cls_emb.expand(tokens.shape[0], -1, -1)), 1)
        for blk in self.blocks:
            tokens = blk(tokens)
        tokens = self.decoder_norm(tokens)
        k = self.num_classes
        patches, classes = tokens[:, :-k] @ self.proj_patch, tokens[:, -k:] @ self.proj_classes
        patches = patches / patches.norm(dim=-1, keepdim=True)
        classes = classes / classes.norm(dim=-1, keepdim=True)
        masks = self.mask_norm(patches @ classes.transpose(1, 2))  # [B, H*W, classes]
        return tokens_to_map(masks, h, w)


@register("segmenter")
class Segmenter(ViTSegModel):
    def __init__(self, num_classes: int, backbone: str = "vit_tiny", decoder: str = "mask", layers: int = 2,
                 drop_path: float = 0.1):
        """`backbone`: vit_tiny or vit_small; `decoder`: linear or mask; `layers`: the mask transformer's depth."""
        super().__init__(num_classes, backbone=backbone, decoder=decoder, layers=layers, drop_path=drop_path)
        if decoder not in DECODERS:
            raise EdgesegError(f"segmenter: unknown decoder {decoder!r}; choose one of: {', '.join(DECODERS)}")
        if not backbone.startswith("vit_"):
            raise EdgesegError(f"segmenter: backbone {backbone!r} is not a ViT; choose vit_tiny or vit_small")
        self.encoder = create_backbone(backbone, drop_path=drop_path)
        dim = self.encoder.channels[-1]
        heads = self.encoder.blocks[0].attn.heads
        self.decoder = (MaskTransformer(dim, num_classes, layers, heads) if decoder == "mask"
                        else LinearDecoder(dim, num_classes))
        self.head = nn.Identity()
