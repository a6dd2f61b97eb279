"""Vision Transformer encoder (Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021), in the
Tiny and Small widths of DeiT (Touvron et al., ICML 2021): patch embedding, pre-norm blocks, no class token.

The position embeddings are a learned grid (14x14, the ImageNet-224 grid) resized bicubically to the input's
token grid inside the graph, so one export serves every input size. An input whose sides are not multiples
of the patch is padded with zeros at the bottom and right (sizes from the tensor: symbolic in export); the
segmentation models crop their logits back (`unpad`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgeseg.models.attention import TransformerBlock
from edgeseg.models.backbones.mit import tokens_to_map


def pad_to_patches(x: torch.Tensor, patch: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    return F.pad(x, (0, (patch - w % patch) % patch, 0, (patch - h % patch) % patch))


def unpad(logits: torch.Tensor, images: torch.Tensor, patch: int) -> torch.Tensor:
    """Logits of the padded image, at any stride -> logits [N, C, H, W] of the image itself."""
    h, w = images.shape[-2:]
    size = ((h + patch - 1) // patch * patch, (w + patch - 1) // patch * patch)
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)[..., :h, :w]


class VisionTransformer(nn.Module):
    """Returns the token maps [B, dim, H/patch, W/patch] after the blocks `out_indices` (1-based), each
    layer-normalised; `channels` lists their widths."""

    def __init__(self, dim: int = 192, depth: int = 12, heads: int = 3, patch: int = 16, mlp_ratio: float = 4.0,
                 out_indices=(12,), pos_grid=(14, 14), drop_path: float = 0.1):
        super().__init__()
        if not out_indices or not all(1 <= i <= depth for i in out_indices):
            raise ValueError(f"out_indices {tuple(out_indices)} must name blocks 1..{depth}")
        self.patch, self.out_indices = patch, tuple(out_indices)
        self.channels = [dim] * len(self.out_indices)
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.pos_embed = nn.Parameter(torch.zeros(1, dim, *pos_grid))
        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, mlp_ratio, r) for r in rates)
        self.norms = nn.ModuleList(nn.LayerNorm(dim, eps=1e-6) for _ in self.out_indices)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def position_embedding(self, h, w) -> torch.Tensor:
        return F.interpolate(self.pos_embed, size=(h, w), mode="bicubic", align_corners=False)

    def forward(self, x):
        x = self.patch_embed(pad_to_patches(x, self.patch))
        h, w = x.shape[-2:]
        tokens = (x + self.position_embedding(h, w)).flatten(2).transpose(1, 2)
        feats = []
        for i, blk in enumerate(self.blocks, 1):
            tokens = blk(tokens)
            if i in self.out_indices:
                feats.append(tokens_to_map(self.norms[len(feats)](tokens), h, w))
        return feats


def vit_tiny(out_indices=(12,), drop_path: float = 0.1) -> VisionTransformer:
    return VisionTransformer(192, 12, 3, out_indices=out_indices, drop_path=drop_path)


def vit_small(out_indices=(12,), drop_path: float = 0.1) -> VisionTransformer:
    return VisionTransformer(384, 12, 6, out_indices=out_indices, drop_path=drop_path)
