"""Mask2Former (Cheng et al., "Masked-attention Mask Transformer for Universal Image Segmentation", CVPR 2022).
Default: ResNet-18, width 128, 100 queries, 9 decoder layers, 3 deformable encoder layers.

- Pixel decoder: multi-scale deformable attention (Zhu et al., Deformable DETR, ICLR 2021) over the /8, /16
  and /32 maps, then an FPN step to /4 for the per-pixel embeddings. Each query samples `points` locations
  per head and level around its reference point with `F.grid_sample` (ONNX GridSample, which TensorRT's
  parser takes), and all sizes are read from the tensors, so the export has dynamic H and W. Inference option
  `sampler=flowwarp` spells the same sampling as a flow warp over a queries x points grid, which the FlowWarp
  pass (`--flowwarp-plugin`) turns into edgeseg's own op and TensorRT plugin instead of GridSample.
- Transformer decoder: masked cross-attention (each query attends only inside the mask it predicted one
  layer before, resized to the level attended), then self-attention and an FFN, over the levels /32, /16,
  /8 in turn. The mask is an additive float bias (no boolean attention mask in the graph), and a query whose
  predicted mask is empty at a level attends everywhere, as the paper's code does.
Semantic inference, training (the matching loss on the prediction before the first layer and after each) and
BatchNorm in place of GroupNorm as in `maskformer.py`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from edgeseg.errors import EdgesegError
from edgeseg.models.archs.maskformer import MLP, SemanticInference, mask_logits
from edgeseg.models.attention import (
    MASKED,
    FeedForward,
    MultiheadAttention,
    sine_position_embedding,
)
from edgeseg.models.backbones import create_backbone
from edgeseg.models.base import SegModel, SetPrediction
from edgeseg.models.layers import ConvBNReLU, base_coords, flow_warp, resize_to
from edgeseg.models.registry import register


def reference_points(h, w, like: torch.Tensor) -> torch.Tensor:
    """Pixel centres of an h x w map in [0, 1], (x, y), row-major: [h*w, 2] (sizes symbolic in export)."""
    ys = (torch.arange(h, device=like.device).to(like.dtype) + 0.5) / h
    xs = (torch.arange(w, device=like.device).to(like.dtype) + 0.5) / w
    return torch.stack((xs[None, :].expand(h, -1), ys[:, None].expand(-1, w)), dim=-1).reshape(-1, 2)


SAMPLERS = ("gridsample", "flowwarp")


def deformable_sample(v: torch.Tensor, grid: torch.Tensor, sampler: str) -> torch.Tensor:
    """Bilinear samples of v [N, C, h, w] at grid [N, Lq, P, 2] (align_corners=False, zeros outside): [N, C, Lq, P].

    "flowwarp" writes the grid as a flow over the Lq x P output grid (grid = base + flow / (P, Lq)), the FlowWarp
    op's definition, so that the FlowWarp pass can replace the GridSample with edgeseg::FlowWarp.
    """
    if sampler == "gridsample":
        return F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    lq, npt = grid.shape[1:3]
    fx = (grid[..., 0] - base_coords(npt, False, grid)) * npt
    fy = (grid[..., 1] - base_coords(lq, False, grid)[:, None]) * lq
    return flow_warp(v, torch.stack((fx, fy), 1), align_corners=False)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention: queries [B, Lq, C] with reference points [B or 1, Lq, 2] in [0, 1]
    sample the value maps (one per level) at `points` learned offsets per head and level."""

    def __init__(self, dim: int, levels: int, heads: int, points: int, sampler: str = "gridsample"):
        super().__init__()
        self.levels, self.heads, self.points, self.sampler = levels, heads, points, sampler
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        # Deformable DETR's start: each head looks along its own direction, k pixels out for its k-th point
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(heads, dtype=torch.float32) * (2 * math.pi / heads)
        grid = torch.stack((angles.cos(), angles.sin()), -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid[:, None, None, :].repeat(1, levels, points, 1) * torch.arange(1, points + 1)[None, None, :, None]
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)

    def forward(self, query, ref, values):
        b, lq, c = query.shape
        nh, nl, npt = self.heads, self.levels, self.points
        offsets = self.sampling_offsets(query).reshape(b, lq, nh, nl, npt, 2)
        weights = torch.softmax(self.attention_weights(query).reshape(b, lq, nh, nl * npt), -1)
        weights = weights.permute(0, 2, 1, 3).reshape(b * nh, 1, lq, nl * npt)
        sampled = []
        for lvl, v in enumerate(values):  # v [B, C, H_l, W_l]
            h, w = v.shape[-2:]
            v = self.value_proj(v.flatten(2).transpose(1, 2))  # [B, H_l*W_l, C]
            v = v.transpose(1, 2).reshape(b * nh, c // nh, h, w)
            off = offsets[:, :, :, lvl]  # [B, Lq, heads, points, 2] in pixels of this level
            # divided by the symbolic sizes one axis at a time (a tensor built from [w, h] would freeze them)
            gx = 2 * (ref[:, :, None, None, 0] + off[..., 0] / w) - 1
            gy = 2 * (ref[:, :, None, None, 1] + off[..., 1] / h) - 1
            grid = torch.stack((gx, gy), -1).permute(0, 2, 1, 3, 4).reshape(b * nh, lq, npt, 2)
            sampled.append(deformable_sample(v, grid, self.sampler))
        out = (torch.cat(sampled, -1) * weights).sum(-1)  # [B*heads, C/heads, Lq]
        return self.output_proj(out.reshape(b, c, lq).transpose(1, 2))


class DeformEncoderLayer(nn.Module):
    """Post-norm deformable self-attention and FFN, without dropout (the paper's setting)."""

    def __init__(self, dim: int, levels: int, heads: int, points: int, ffn: int, sampler: str = "gridsample"):
        super().__init__()
        self.attn = MSDeformAttn(dim, levels, heads, points, sampler)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn)

    def forward(self, x, pos, ref, sizes):
        maps, start = [], 0
        for h, w in sizes:  # the value maps are this layer's input, level by level
            maps.append(x[:, start:start + h * w].transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w))
            start = start + h * w
        x = self.norm1(x + self.attn(x + pos, ref, maps))
        return self.norm2(x + self.ffn(x))


class MSDeformAttnPixelDecoder(nn.Module):
    """Backbone features /4../32 -> (per-pixel embeddings at /4, [maps at /32, /16, /8] of width `dim`)."""

    def __init__(self, channels, dim: int, mask_dim: int, layers: int, heads: int = 8, points: int = 4,
                 sampler: str = "gridsample"):
        super().__init__()
        self.levels = len(channels) - 1
        self.input_proj = nn.ModuleList(ConvBNReLU(c, dim, 1, act=False) for c in channels[1:])
        self.level_embed = nn.Parameter(torch.randn(self.levels, dim) * 0.02)
        self.layers = nn.ModuleList(DeformEncoderLayer(dim, self.levels, heads, points, 4 * dim, sampler=sampler)
                                    for _ in range(layers))
        self.lateral = ConvBNReLU(channels[0], dim, 1, act=False)
        self.output = ConvBNReLU(dim, dim)
        self.mask_features = nn.Conv2d(dim, mask_dim, 1)

    def forward(self, feats):
        srcs = [proj(f) for proj, f in zip(self.input_proj, feats[1:])]
        sizes = [s.shape[-2:] for s in srcs]
        dim = srcs[0].shape[1]
        x = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        pos = torch.cat([(sine_position_embedding(s, dim).flatten(2) + self.level_embed[i][:, None]).transpose(1, 2)
                         for i, s in enumerate(srcs)], 1)
        ref = torch.cat([reference_points(h, w, x) for h, w in sizes], 0)[None]
        for layer in self.layers:
            x = layer(x, pos, ref, sizes)
        maps, start = [], 0
        for h, w in sizes:
            maps.append(x[:, start:start + h * w].transpose(1, 2).reshape(x.shape[0], dim, h, w))
            start = start + h * w
        y = self.output(self.lateral(feats[0]) + resize_to(maps[0], feats[0]))
        return self.mask_features(y), maps[::-1]


class MaskedDecoderLayer(nn.Module):
    """Masked cross-attention, self-attention, FFN; each followed by a residual and a LayerNorm."""

    def __init__(self, dim: int, heads: int, ffn: int):
        super().__init__()
        self.cross_attn, self.self_attn = MultiheadAttention(dim, heads), MultiheadAttention(dim, heads)
        self.ffn = FeedForward(dim, ffn)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x, query_pos, memory, pos, bias):
        x = self.norm1(x + self.cross_attn(x + query_pos, memory + pos, memory, bias))
        q = x + query_pos
        x = self.norm2(x + self.self_attn(q, q, x))
        return self.norm3(x + self.ffn(x))


def attention_bias(masks: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Mask logits [B, Q, H, W] -> additive bias [B, 1, Q, h*w] at ref's size: MASKED outside the predicted
    mask (sigmoid < 0.5, i.e. logit < 0), and 0 everywhere for a query whose mask is empty there."""
    outside = (resize_to(masks.detach(), ref).flatten(2) < 0).to(masks.dtype)
    outside = outside * (1.0 - outside.amin(dim=-1, keepdim=True))
    return (outside * MASKED)[:, None]


class MaskedTransformerDecoder(nn.Module):
    def __init__(self, num_classes: int, dim: int, mask_dim: int, queries: int, layers: int, heads: int, ffn: int,
                 levels: int = 3):
        super().__init__()
        self.query_feat = nn.Parameter(torch.randn(queries, dim) * 0.02)
        self.query_embed = nn.Parameter(torch.randn(queries, dim))
        self.level_embed = nn.Parameter(torch.randn(levels, dim) * 0.02)
        self.layers = nn.ModuleList(MaskedDecoderLayer(dim, heads, ffn) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.class_embed = nn.Linear(dim, num_classes + 1)
        self.mask_embed = MLP(dim, dim, mask_dim)

    def _predict(self, x, pixels, classes: bool):
        """(class logits or None, mask logits): class logits only where used (the loss, the last layer)."""
        x = self.norm(x)
        return self.class_embed(x) if classes else None, mask_logits(self.mask_embed(x), pixels)

    def forward(self, pixels, maps):
        levels = len(maps)
        dim = maps[0].shape[1]
        memory = [(m.flatten(2) + self.level_embed[i][:, None]).transpose(1, 2) for i, m in enumerate(maps)]
        pos = [sine_position_embedding(m, dim).flatten(2).transpose(1, 2) for m in maps]
        b = pixels.shape[0]
        x = self.query_feat[None].expand(b, -1, -1)
        query_pos = self.query_embed[None].expand(b, -1, -1)
        preds = [self._predict(x, pixels, self.training)]
        for i, layer in enumerate(self.layers):
            lvl = i % levels
            x = layer(x, query_pos, memory[lvl], pos[lvl], attention_bias(preds[-1][1], maps[lvl]))
            preds.append(self._predict(x, pixels, self.training or i == len(self.layers) - 1))
        return SetPrediction(*preds[-1], aux=preds[:-1]) if self.training else preds[-1]


class Mask2FormerDecoder(nn.Module):
    def __init__(self, channels, num_classes: int, dim: int, queries: int, layers: int, enc_layers: int, heads: int,
                 points: int, sampler: str):
        super().__init__()
        self.pixel_decoder = MSDeformAttnPixelDecoder(channels, dim, dim, enc_layers, heads, points, sampler)
        self.transformer = MaskedTransformerDecoder(num_classes, dim, dim, queries, layers, heads, 4 * dim)

    def forward(self, feats):
        return self.transformer(*self.pixel_decoder(feats))


@register("mask2former")
class Mask2Former(SegModel):
    hard_decisions = "masked attention's mask (logit < 0)"
    inference_options = ("sampler",)  # the same sampling either way: a trained model exports in both forms

    def __init__(self, num_classes: int, backbone: str = "resnet18", dim: int = 128, queries: int = 100,
                 layers: int = 9, enc_layers: int = 3, heads: int = 8, points: int = 4, sampler: str = "gridsample"):
        """`dim`: width throughout; `queries`: N; `layers`: masked-attention decoder layers (a multiple of 3
        visits every level equally); `enc_layers`: deformable encoder layers; `points`: samples per head/level;
        `sampler`: gridsample or flowwarp, how deformable attention's sampling is written in the graph."""
        if sampler not in SAMPLERS:
            raise EdgesegError(f"mask2former: sampler={sampler!r}; choose {' or '.join(SAMPLERS)}")
        super().__init__(num_classes, backbone=backbone, dim=dim, queries=queries, layers=layers,
                         enc_layers=enc_layers, heads=heads, points=points, sampler=sampler)
        self.encoder = create_backbone(backbone)
        self.decoder = Mask2FormerDecoder(self.encoder.channels, num_classes, dim, queries, layers, enc_layers, heads,
                                          points, sampler)
        self.head = SemanticInference()
