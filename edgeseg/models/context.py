"""Graph-reasoning context units that plug in after a decoder's features: `make_context(kind, channels)`.

- GloRe (Chen et al., "Graph-Based Global Reasoning Networks", CVPR 2019): project the pixels onto N nodes with
  learned 1x1 weights, one graph convolution (node-wise, then state-wise), reproject, add back (residual + BN).
- GCU (Li & Gupta, "Beyond Grids: Learning Graph Representations for Visual Recognition", NeurIPS 2018): soft-
  assign the pixels to V learned anchors (Gaussian, learned per-anchor scales), vertex features as the normalised
  mean of the scaled residuals, adjacency Z Z^T, one graph convolution with ReLU, reproject by the assignments.
  Units with 2, 4, 8 and 32 vertices are concatenated with the input, as in the paper, and a 1x1 conv-BN-ReLU
  brings the channels back to the input's (so the unit plugs in anywhere); each unit outputs channels / 4.

Both flatten H x W with a dynamic size and use only MatMul, Softmax and reductions, so they export at any size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgeseg.errors import EdgesegError
from edgeseg.models.layers import ConvBNReLU

CONTEXTS = ("glore", "gcu")


class GloRe(nn.Module):
    def __init__(self, channels: int, nodes: int | None = None, states: int | None = None):
        super().__init__()
        self.nodes, self.states = nodes or channels // 4, states or channels // 2
        self.conv_state = nn.Conv2d(channels, self.states, 1)
        self.conv_proj = nn.Conv2d(channels, self.nodes, 1)
        self.gcn_node = nn.Conv1d(self.nodes, self.nodes, 1)  # across nodes: (I - A_g) V
        self.gcn_state = nn.Conv1d(self.states, self.states, 1, bias=False)  # across states: W_g
        self.extend = nn.Conv2d(self.states, channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x):
        n = x.shape[0]
        state = self.conv_state(x).flatten(2)  # [N, S, HW]
        proj = self.conv_proj(x).flatten(2)  # [N, K, HW]
        v = torch.matmul(state, proj.transpose(1, 2))  # [N, S, K]: features of the K nodes
        v = v - self.gcn_node(v.transpose(1, 2)).transpose(1, 2)
        v = torch.relu(self.gcn_state(v))
        y = torch.matmul(v, proj).reshape(n, self.states, x.shape[2], x.shape[3])  # back to the pixels
        return x + self.bn(self.extend(y))


class GraphUnit(nn.Module):
    """One GCU with `vertices` vertices: [N, C, H, W] -> [N, out, H, W]."""

    def __init__(self, channels: int, vertices: int, out: int):
        super().__init__()
        self.anchors = nn.Parameter(torch.randn(vertices, channels) * 0.1)
        self.log_sigma = nn.Parameter(torch.zeros(vertices, channels))
        self.weight = nn.Parameter(torch.randn(channels, out) / channels ** 0.5)

    def forward(self, x):
        n = x.shape[0]
        feats = x.flatten(2).transpose(1, 2)  # [N, HW, C]
        inv_var = torch.exp(-2 * self.log_sigma)  # [V, C]
        # ||(x - w) / sigma||^2 expanded into matrix products (no [N, HW, V, C] tensor)
        dist = (torch.matmul(feats * feats, inv_var.t()) - 2 * torch.matmul(feats, (self.anchors * inv_var).t())
                + (self.anchors * self.anchors * inv_var).sum(1))
        q = torch.softmax(-0.5 * dist, dim=-1)  # [N, HW, V]
        mass = q.sum(1).unsqueeze(-1) + 1e-6  # [N, V, 1]
        z = (torch.matmul(q.transpose(1, 2), feats) / mass - self.anchors) * torch.exp(-self.log_sigma)
        z = F.normalize(z, dim=-1)  # [N, V, C]
        adj = torch.matmul(z, z.transpose(1, 2))  # [N, V, V]
        z = torch.relu(torch.matmul(torch.matmul(adj, z), self.weight))  # [N, V, out]
        return torch.matmul(q, z).transpose(1, 2).reshape(n, -1, x.shape[2], x.shape[3])


class GCU(nn.Module):
    def __init__(self, channels: int, vertices=(2, 4, 8, 32)):
        super().__init__()
        out = max(channels // 4, 1)
        self.units = nn.ModuleList(GraphUnit(channels, v, out) for v in vertices)
        self.fuse = ConvBNReLU(channels + len(vertices) * out, channels, 1)

    def forward(self, x):
        return self.fuse(torch.cat([x] + [u(x) for u in self.units], 1))


def make_context(kind: str | None, channels: int) -> nn.Module:
    if kind is None:
        return nn.Identity()
    if kind not in CONTEXTS:
        raise EdgesegError(f"context {kind!r}: choose one of {', '.join(CONTEXTS)} (or leave it unset)")
    return GloRe(channels) if kind == "glore" else GCU(channels)
