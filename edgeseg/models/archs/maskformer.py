"""MaskFormer (Cheng et al., "Per-Pixel Classification is Not All You Need for Semantic Segmentation",
NeurIPS 2021): mask classification. A pixel decoder (FPN) makes per-pixel embeddings at /4; a DETR-style
transformer decoder turns N learned queries, attending to the backbone's /32 map, into N class scores
(classes + "no object") and N mask embeddings; mask = embedding . per-pixel embedding. Default: ResNet-18.

Semantic inference (the paper's): scores = einsum("bqc,bqhw->bchw", softmax(classes)[..., :-1], sigmoid(masks)),
computed as two MatMuls (which quantise and which TensorRT fuses), at /4 and then upsampled. The model returns
log(scores), so that a softmax over it gives the scores normalised per pixel and argmax is unchanged.
Training: in train mode the decoder returns the set prediction of every decoder layer (SetPrediction), which
`edgeseg train` supervises with the papers' matching loss (edgeseg/train/set_loss.py).
Normalisations are BatchNorm (folded into the convolutions at export) where the paper uses GroupNorm.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgeseg.models.attention import (
    FeedForward,
    MultiheadAttention,
    sine_position_embedding,
)
from edgeseg.models.backbones import create_backbone
from edgeseg.models.base import SegModel, SetPrediction
from edgeseg.models.layers import ConvBNReLU, resize_to
from edgeseg.models.registry import register

# below it a semantic score counts as 0 before its log (exp underflows near 1e-38, and runtimes flush denormals)
FLOOR = 1e-30


class MLP(nn.Sequential):
    """Linear layers with ReLU between them (the mask-embedding head)."""

    def __init__(self, cin: int, hidden: int, cout: int, layers: int = 3):
        dims = [cin] + [hidden] * (layers - 1) + [cout]
        mods = []
        for i in range(layers):
            mods += [nn.Linear(dims[i], dims[i + 1])] + ([nn.ReLU(inplace=True)] if i < layers - 1 else [])
        super().__init__(*mods)


def mask_logits(embeddings: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """einsum("bqc,bchw->bqhw") as a MatMul: query mask embeddings [B, Q, C] . per-pixel embeddings [B, C, H, W]."""
    b, _, h, w = pixels.shape
    return torch.matmul(embeddings, pixels.flatten(2)).reshape(b, -1, h, w)


class SemanticInference(nn.Module):
    """(class logits [B, Q, K+1], mask logits [B, Q, H, W]) -> log semantic scores [B, K, H, W]."""

    def forward(self, out):
        classes, masks = out
        b, _, h, w = masks.shape
        probs = torch.softmax(classes, dim=-1)[..., :-1]  # the last class is "no object"
        # sigmoid as exp(-softplus(-m)): exact to ~5e-7 relative on every runtime, where ONNX Runtime's Sigmoid is
        # exact to 1.6e-7 absolute, and trained masks sit far below 0 (scores of 1e-9..1e-20 decide most pixels)
        sig = torch.exp(-F.softplus(-masks.flatten(2)))
        scores = torch.matmul(probs.transpose(1, 2), sig)  # [B, K, H*W]
        return torch.log(scores.clamp(min=FLOOR)).reshape(b, -1, h, w)


class FPNPixelDecoder(nn.Module):
    """Top-down FPN over the backbone's features; returns the per-pixel embeddings at the finest stride."""

    def __init__(self, channels, dim: int, mask_dim: int):
        super().__init__()
        self.top = ConvBNReLU(channels[-1], dim)
        self.lateral = nn.ModuleList(ConvBNReLU(c, dim, 1, act=False) for c in channels[:-1])
        self.output = nn.ModuleList(ConvBNReLU(dim, dim) for _ in channels[:-1])
        self.mask_features = nn.Conv2d(dim, mask_dim, 3, padding=1)

    def forward(self, feats):
        y = self.top(feats[-1])
        for i in reversed(range(len(feats) - 1)):
            y = self.output[i](self.lateral[i](feats[i]) + resize_to(y, feats[i]))
        return self.mask_features(y)


class DETRDecoderLayer(nn.Module):
    """Post-norm: self-attention among the queries, cross-attention to the image, FFN. No dropout (the paper has
    0.1, Mask2Former 0): the queries start from zero, so the first self-attention's output is one vector for all
    of them, and dropout on it made them differ in training only; a 5-epoch CamVid run with it labelled 89 % of
    training-crop pixels right with dropout on and 16 % in eval, and the same recipe without it reached 48 % val
    mIoU."""

    def __init__(self, dim: int, heads: int, ffn: int):
        super().__init__()
        self.self_attn, self.cross_attn = MultiheadAttention(dim, heads), MultiheadAttention(dim, heads)
        self.ffn = FeedForward(dim, ffn)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x, memory, query_pos, pos):
        q = x + query_pos
        x = self.norm1(x + self.self_attn(q, q, x))
        x = self.norm2(x + self.cross_attn(x + query_pos, memory + pos, memory))
        return self.norm3(x + self.ffn(x))


class MaskFormerDecoder(nn.Module):
    """Backbone features -> (class logits [B, Q, K+1], mask logits [B, Q, H/4, W/4])."""

    def __init__(self, channels, num_classes: int, dim: int, mask_dim: int, queries: int, layers: int, heads: int,
                 ffn: int):
        super().__init__()
        self.pixel_decoder = FPNPixelDecoder(channels, dim, mask_dim)
        self.input_proj = nn.Conv2d(channels[-1], dim, 1)
        self.query_embed = nn.Parameter(torch.randn(queries, dim))
        self.layers = nn.ModuleList(DETRDecoderLayer(dim, heads, ffn) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.class_embed = nn.Linear(dim, num_classes + 1)
        self.mask_embed = MLP(dim, dim, mask_dim)

    def forward(self, feats):
        pixels = self.pixel_decoder(feats)
        src = self.input_proj(feats[-1])
        dim = src.shape[1]
        pos = sine_position_embedding(src, dim).flatten(2).transpose(1, 2)
        memory = src.flatten(2).transpose(1, 2)
        query_pos = self.query_embed[None].expand(src.shape[0], -1, -1)
        x = torch.zeros_like(query_pos)  # DETR starts from zero targets; the queries are positions
        preds = []
        for layer in self.layers:
            x = layer(x, memory, query_pos, pos)
            if self.training:  # every layer's prediction is supervised
                preds.append(self._predict(x, pixels))
        return SetPrediction(*preds[-1], aux=preds[:-1]) if self.training else self._predict(x, pixels)

    def _predict(self, x, pixels):
        x = self.norm(x)
        return self.class_embed(x), mask_logits(self.mask_embed(x), pixels)


@register("maskformer")
class MaskFormer(SegModel):
    def __init__(self, num_classes: int, backbone: str = "resnet18", dim: int = 128, queries: int = 100,
                 layers: int = 6, heads: int = 8):
        """`dim`: transformer and pixel-decoder width (also the mask embedding's); `queries`: N; `layers`: the
        transformer decoder's depth."""
        super().__init__(num_classes, backbone=backbone, dim=dim, queries=queries, layers=layers, heads=heads)
        self.encoder = create_backbone(backbone)
        self.decoder = MaskFormerDecoder(self.encoder.channels, num_classes, dim, dim, queries, layers, heads, 4 * dim)
        self.head = SemanticInference()
