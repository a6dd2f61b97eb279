"""UNet++ (Zhou et al., DLMIA 2018; TMI 2020): a U-Net whose skip paths are nested, densely connected
convolution blocks, with deep supervision on the four full-resolution nodes and pruning at inference.

Node X[i][j] (depth i, j-th node along the skip path) convolves the concatenation of X[i][0..j-1] with the
upsampled X[i+1][j-1]; every node is the paper's two 3x3 conv-BN-ReLU, widths 32, 64, 128, 256, 512. Heads:
a 1x1 classifier on each of X[0][1..4].

`prune=L` (1..4) builds only the nodes with i + j <= L and outputs head L (the paper's pruned "fast mode"):
the L = 4 network restricted to those nodes, with the same parameter names, so a pruned model loads the
full model's weights (`strict=False`) and computes exactly the full model's head L.

Changes from the paper, for any input size and for the training loop: upsampling is a bilinear resize to the
skip's size (not a fixed 2x transposed convolution), and the loop takes one auxiliary output, so the shallower
heads are supervised through the mean of their logits (weight `aux_weight`) instead of one loss per head.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgeseg.errors import EdgesegError
from edgeseg.models.base import SegModel, _exporting
from edgeseg.models.layers import ConvBNReLU, resize_to
from edgeseg.models.registry import register


class Block(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(ConvBNReLU(cin, cout), ConvBNReLU(cout, cout))


class Backbone(nn.Module):
    """X[0][0] .. X[L][0], a 2x2 max pool between them."""

    def __init__(self, widths):
        super().__init__()
        self.blocks = nn.ModuleList(Block(cin, cout) for cin, cout in zip([3] + widths[:-1], widths))
        self.channels = list(widths)

    def forward(self, x):
        feats = []
        for i, block in enumerate(self.blocks):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            feats.append(x)
        return feats


class NestedSkips(nn.Module):
    """X[i][j] for j >= 1 and i + j <= L; returns the top row X[0][1..L]."""

    def __init__(self, widths, levels: int):
        super().__init__()
        self.levels = levels
        self.nodes = nn.ModuleDict({f"{i}_{j}": Block(widths[i] * j + widths[i + 1], widths[i])
                                    for j in range(1, levels + 1) for i in range(levels + 1 - j)})

    def forward(self, feats):
        grid = [[f] for f in feats]
        for j in range(1, self.levels + 1):
            for i in range(self.levels + 1 - j):
                up = resize_to(grid[i + 1][j - 1], grid[i][0])
                grid[i].append(self.nodes[f"{i}_{j}"](torch.cat(grid[i] + [up], 1)))
        return grid[0][1:]


@register("unetpp")
class UNetPlusPlus(SegModel):
    aux_weight = 1.0
    inference_options = ("prune",)  # a pruned model is the trained full model's head L

    def __init__(self, num_classes: int, width: int = 32, prune: int = 4, deep_supervision: bool = True):
        """`prune`: 1..4, the depth of the sub-network built and run; `deep_supervision`: train heads 1..L-1 too."""
        if prune not in (1, 2, 3, 4):
            raise EdgesegError(f"unetpp: prune={prune!r}; choose 1, 2, 3 or 4 (the depth of the sub-network kept)")
        super().__init__(num_classes, width=width, prune=prune, deep_supervision=deep_supervision)
        widths = [width * 2 ** i for i in range(prune + 1)]
        self.encoder = Backbone(widths)
        self.decoder = NestedSkips(widths, prune)
        self.heads = nn.ModuleList(nn.Conv2d(width, num_classes, 1) for _ in range(prune))
        self.head = self.heads[-1]
        if deep_supervision and prune > 1:
            self.aux_head = self.heads[:-1]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # `head` is an alias of heads[-1]: a deeper model's head.* is its own last head, so head L is taken from
        # heads.{L-1}.* (loaded after heads.*, head.* would otherwise overwrite it with head 4)
        for name in ("weight", "bias"):
            key = f"{prefix}heads.{len(self.heads) - 1}.{name}"
            if key in state_dict:
                state_dict[f"{prefix}head.{name}"] = state_dict[key]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, images):
        if not _exporting():
            self.check_input(images)
        top = self.decoder(self.encoder(images))
        logits = self.head(top[-1])
        if self.training and self.aux_head is not None:
            aux = torch.stack([h(t) for h, t in zip(self.aux_head, top)]).mean(0)
            return logits, aux
        return logits
