"""Attention blocks shared by the transformer architectures, written to export with dynamic token counts.

Attention is spelt out as MatMul -> (+ additive float bias) -> Softmax -> MatMul rather than
`scaled_dot_product_attention`: a boolean mask exports poorly at opset 17, and the explicit logits MatMul is
what the fp16 export finds and keeps in fp32 (`export/fp16.py`: logits overflow fp16's 65504 long before the
softmax sees them).
"""
from __future__ import annotations

import math

import torch
from torch import nn

MASKED = -1e9  # additive bias of a masked key: exp(MASKED - max) is 0 in fp32, and finite in any precision


class DropPath(nn.Module):
    """Stochastic depth: drop a whole residual branch per sample while training."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device, dtype=x.dtype) >= self.p
        return x * keep / (1.0 - self.p)


class MultiheadAttention(nn.Module):
    """Multi-head attention of queries [B, N, C] over keys/values [B, M, C]; `bias` [B or 1, heads or 1, N, M]
    is added to the logits (MASKED where a key must not be seen)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not a multiple of {heads} heads")
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # [B, M, C] -> [B, heads, M, C / heads]
        return x.reshape(x.shape[0], -1, self.heads, x.shape[2] // self.heads).transpose(1, 2)

    def forward(self, query, key, value, bias: torch.Tensor | None = None):
        q, k, v = self._split(self.q(query) * self.scale), self._split(self.k(key)), self._split(self.v(value))
        logits = torch.matmul(q, k.transpose(-2, -1))
        if bias is not None:
            logits = logits + bias
        out = torch.matmul(torch.softmax(logits, dim=-1), v)
        return self.proj(out.transpose(1, 2).reshape(query.shape[0], -1, query.shape[2]))


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))


class TransformerBlock(nn.Module):
    """Pre-norm self-attention block (ViT): x + attn(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MultiheadAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = FeedForward(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x):
        y = self.norm1(x)
        x = x + self.drop_path(self.attn(y, y, y))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def sine_position_embedding(x: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """DETR's normalised sine embedding [1, dim, H, W] for x's (symbolic) H and W: half the channels encode y,
    half x, each position scaled to (0, 2*pi] so the pattern spans the map at any size."""
    h, w = x.shape[-2:]
    half = dim // 2
    y = (torch.arange(h, device=x.device).to(x.dtype) + 1.0) / h * (2 * math.pi)
    xx = (torch.arange(w, device=x.device).to(x.dtype) + 1.0) / w * (2 * math.pi)
    freq = temperature ** (2 * (torch.arange(half, device=x.device) // 2).to(x.dtype) / half)
    py, px = y[:, None] / freq, xx[:, None] / freq  # [H, half], [W, half]
    py = torch.stack((py[:, 0::2].sin(), py[:, 1::2].cos()), dim=2).flatten(1)
    px = torch.stack((px[:, 0::2].sin(), px[:, 1::2].cos()), dim=2).flatten(1)
    pos = torch.cat((py[:, None, :].expand(-1, w, -1), px[None, :, :].expand(h, -1, -1)), dim=2)  # [H, W, dim]
    return pos.permute(2, 0, 1)[None]
