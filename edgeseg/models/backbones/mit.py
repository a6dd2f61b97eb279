"""Mix Transformer (MiT, the SegFormer encoder) from scratch, with the parameter names of the reference
implementation (patch_embed1, block1.0.attn.q, ...) so its ImageNet checkpoints load as they are.

Export notes: token reshapes use the tensor's own (symbolic) H and W, and attention is plain
MatMul + Softmax, so the graph runs at any input size at opset 17.
"""
from __future__ import annotations

import re

import torch
import torch.nn as nn

from edgeseg.models.attention import DropPath


class OverlapPatchEmbed(nn.Module):
    def __init__(self, cin: int, dim: int, k: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(cin, dim, k, stride, k // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        x = self.proj(x)
        return self.norm(x.flatten(2).transpose(1, 2)), x.shape[2], x.shape[3]


def tokens_to_map(x: torch.Tensor, h, w) -> torch.Tensor:
    """[B, H*W, C] -> [B, C, H, W]."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)


class Attention(nn.Module):
    """Efficient self-attention: keys and values come from the map shrunk `sr` times by a strided conv."""

    def __init__(self, dim: int, heads: int, sr: int):
        super().__init__()
        self.heads, self.scale, self.sr_ratio = heads, (dim // heads) ** -0.5, sr
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        if sr > 1:
            self.sr = nn.Conv2d(dim, dim, sr, sr)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x, h, w):
        b, c = x.shape[0], x.shape[2]
        q = self.q(x).reshape(b, -1, self.heads, c // self.heads).transpose(1, 2)  # [B, heads, N, d]
        if self.sr_ratio > 1:
            x = self.norm(self.sr(tokens_to_map(x, h, w)).flatten(2).transpose(1, 2))
        kv = self.kv(x).reshape(b, -1, 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)  # [2, B, heads, M, d]
        attn = torch.softmax(torch.matmul(q * self.scale, kv[0].transpose(-2, -1)), dim=-1)
        return self.proj(torch.matmul(attn, kv[1]).transpose(1, 2).reshape(b, -1, c))


class DWConv(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x, h, w):
        return self.dwconv(tokens_to_map(x, h, w)).flatten(2).transpose(1, 2)


class MixFFN(nn.Module):
    """Linear -> 3x3 depthwise conv (the positional information) -> GELU -> Linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x, h, w):
        return self.fc2(self.act(self.dwconv(self.fc1(x), h, w)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, sr: int, mlp_ratio: int, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, sr)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MixFFN(dim, dim * mlp_ratio)
        self.drop_path = DropPath(drop_path)

    def forward(self, x, h, w):
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x), h, w))


class MixTransformer(nn.Module):
    """Returns features at /4, /8, /16, /32 with `embed_dims` channels."""

    def __init__(self, embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2), heads=(1, 2, 5, 8),
                 sr_ratios=(8, 4, 2, 1), mlp_ratio: int = 4, drop_path: float = 0.1):
        super().__init__()
        self.channels = list(embed_dims)
        n = sum(depths)
        rates = [drop_path * i / max(n - 1, 1) for i in range(n)]  # deeper blocks drop more
        cin = 3
        for i, (dim, depth) in enumerate(zip(embed_dims, depths)):
            self.add_module(f"patch_embed{i + 1}", OverlapPatchEmbed(cin, dim, 7 if i == 0 else 3, 4 if i == 0 else 2))
            first = sum(depths[:i])
            self.add_module(f"block{i + 1}", nn.ModuleList(
                Block(dim, heads[i], sr_ratios[i], mlp_ratio, rates[first + j]) for j in range(depth)))
            self.add_module(f"norm{i + 1}", nn.LayerNorm(dim, eps=1e-6))
            cin = dim
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
            nn.init.zeros_(m.bias)

    def forward(self, x):
        feats = []
        for i in range(1, len(self.channels) + 1):
            x, h, w = getattr(self, f"patch_embed{i}")(x)
            for blk in getattr(self, f"block{i}"):
                x = blk(x, h, w)
            x = tokens_to_map(getattr(self, f"norm{i}")(x), h, w)
            feats.append(x)
        return feats

    @staticmethod
    def remap_state_dict(state: dict) -> dict:
        """Hugging Face SegFormer names (segformer.encoder.block.0.0.attention.self.query, ...) -> the
        reference names; separate key and value weights are concatenated into `kv`. Others pass as they are."""
        prefix = "segformer.encoder."
        if not any(k.startswith(prefix) for k in state):
            return state
        renames = [(r"patch_embeddings\.(\d+)\.layer_norm", "patch_embed{}.norm"), (r"patch_embeddings\.(\d+)", "patch_embed{}"),
                   (r"block\.(\d+)\.", "block{}."), (r"layer_norm\.(\d+)", "norm{}")]
        inner = [("layer_norm_1", "norm1"), ("layer_norm_2", "norm2"), ("attention.self.query", "attn.q"),
                 ("attention.self.sr", "attn.sr"), ("attention.self.layer_norm", "attn.norm"),
                 ("attention.output.dense", "attn.proj"), ("mlp.dense1", "mlp.fc1"), ("mlp.dense2", "mlp.fc2")]
        out = {}
        for k, v in state.items():
            if k.startswith(prefix):
                k = k[len(prefix):]
                for pattern, repl in renames:
                    k = re.sub(f"^{pattern}", lambda m: repl.format(int(m[1]) + 1), k)
                for a, b in inner:
                    k = k.replace(a, b)
            out[k] = v
        for k in [k for k in out if ".attention.self.key." in k and k.replace(".key.", ".value.") in out]:
            out[k.replace("attention.self.key", "attn.kv")] = torch.cat([out.pop(k), out.pop(k.replace(".key.", ".value."))])
        return out


def mit_b0(drop_path: float = 0.1) -> MixTransformer:
    return MixTransformer(drop_path=drop_path)
