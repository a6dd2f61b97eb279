"""Building blocks shared by the zoo, written so that they export to ONNX with dynamic H and W."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1, groups: int = 1, act: bool = True):
        layers = [nn.Conv2d(cin, cout, k, stride, dilation * (k // 2), dilation, groups, bias=False), nn.BatchNorm2d(cout)]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


def resize_to(x: torch.Tensor, ref: torch.Tensor, align_corners: bool = False) -> torch.Tensor:
    """Bilinear resize of x to ref's H and W (symbolic in export)."""
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=align_corners)


def _bin_matrix(n: torch.Tensor | int, bins: int, like: torch.Tensor) -> torch.Tensor:
    """[bins, n] averaging matrix with PyTorch's adaptive-pooling bin edges: floor(i*n/b) .. ceil((i+1)*n/b)."""
    i = torch.arange(bins, device=like.device)
    start = (i * n) // bins
    end = ((i + 1) * n + bins - 1) // bins
    pos = torch.arange(n, device=like.device)
    mask = (pos[None, :] >= start[:, None]) & (pos[None, :] < end[:, None])
    m = mask.to(like.dtype)
    return m / m.sum(dim=1, keepdim=True)


def adaptive_avg_pool2d(x: torch.Tensor, bins: int) -> torch.Tensor:
    """Exactly F.adaptive_avg_pool2d(x, bins), as two MatMuls whose matrices follow the symbolic input size.

    nn.AdaptiveAvgPool2d exports as a fixed-kernel AveragePool (or fails), freezing the export size; this
    version is correct at every size.
    """
    if bins == 1:
        return x.mean(dim=(2, 3), keepdim=True)
    h, w = x.shape[-2:]
    ah = _bin_matrix(h, bins, x)  # [b, H]
    aw = _bin_matrix(w, bins, x)  # [b, W]
    return torch.matmul(torch.matmul(ah, x), aw.transpose(0, 1))


def base_coords(n, align_corners: bool, like: torch.Tensor) -> torch.Tensor:
    """grid_sample's normalised coordinates of the n pixel positions along one axis (n symbolic in export)."""
    pos = torch.arange(n, device=like.device).to(like.dtype)
    if align_corners:  # linspace(-1, 1, n); -1 when n == 1
        return pos * (2.0 / pos[-1:].clamp(min=1.0)) - 1.0  # pos[-1] = n - 1, read from the tensor: traces symbolically
    return (2.0 * pos + 1.0) / n - 1.0


def flow_warp(x: torch.Tensor, flow: torch.Tensor, align_corners: bool = True) -> torch.Tensor:
    """SFNet's flow warp: sample x [N,C,h,w] at the base grid of flow's H×W plus flow [N,2,H,W] / (W, H).

    The FlowWarp op of DESIGN.md. The grid is built from arange and the symbolic size, not SFNet's
    linspace + constant normaliser, so the exported graph is exact at every input size.
    """
    h, w = flow.shape[-2:]
    gx = base_coords(w, align_corners, flow)[None, None, :] + flow[:, 0] / w
    gy = base_coords(h, align_corners, flow)[None, :, None] + flow[:, 1] / h
    grid = torch.stack((gx, gy), dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=align_corners)
