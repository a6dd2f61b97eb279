"""The contract every zoo model follows: encoder -> decoder -> head, logits at input resolution."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from edgeseg.errors import EdgesegError
from edgeseg.models.layers import resize_to


@dataclass
class SetPrediction:
    """What a mask-classification model (MaskFormer, Mask2Former) returns in training, for the matching loss:
    class logits [B, Q, K+1] (the last: "no object"), mask logits [B, Q, h, w], and the same pair from each
    earlier decoder layer (deep supervision)."""

    classes: torch.Tensor
    masks: torch.Tensor
    aux: list = field(default_factory=list)


def _exporting() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_exporting()


class SegModel(nn.Module):
    """`forward(images [N,3,H,W] normalised RGB) -> logits [N,C,H,W]`; in training, also the aux logits, or,
    where the decoder returns a SetPrediction in training (mask classification), that.

    Subclasses set `encoder` (image -> list of features, fine to coarse), `decoder` (features -> map),
    `head` (map -> class scores) and optionally `aux_head` on `encoder` output `aux_index`.
    Capability flags: `size_divisor` (H and W must be multiples of it), `min_size`, `exportable`;
    `inference_options`: options that change only the deployed network, not its trained weights (UNet++'s
    `prune`), so that `edgeseg export` and `bench` may set them on a trained checkpoint; `hard_decisions`: what
    discrete choice a last-bit difference can flip (then the fp32 export gate judges the 99.9th percentile of
    |logit difference|, not its maximum, which is that of a flipped pixel).
    """

    arch = "segmodel"
    size_divisor = 1
    min_size = 32
    exportable = True
    inference_options: tuple[str, ...] = ()
    hard_decisions = ""
    aux_index = -2
    aux_weight = 0.4

    def __init__(self, num_classes: int, **hparams):
        super().__init__()
        if num_classes < 1:
            raise EdgesegError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.hparams = dict(hparams)
        self.aux_head: nn.Module | None = None

    def check_input(self, images: torch.Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != 3:
            raise EdgesegError(f"{self.arch}: expected images [N,3,H,W], got {list(images.shape)}")
        h, w = images.shape[-2:]
        if min(h, w) < self.min_size:
            raise EdgesegError(f"{self.arch}: input {h}x{w} is smaller than {self.min_size} pixels; resize it up")
        d = self.size_divisor
        if h % d or w % d:
            hh, ww = max(d, round(h / d) * d), max(d, round(w / d) * d)
            raise EdgesegError(f"{self.arch}: input {h}x{w} is not a multiple of {d}; resize or pad it to e.g. {hh}x{ww}")

    def forward(self, images: torch.Tensor):
        if not _exporting():
            self.check_input(images)
        feats = self.encoder(images)
        out = self.decoder(feats)
        if isinstance(out, SetPrediction):
            return out
        logits = resize_to(self.head(out), images)
        if self.training and self.aux_head is not None:
            return logits, resize_to(self.aux_head(feats[self.aux_index]), images)
        return logits

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Class indices [N,H,W] (eval mode, no autograd)."""
        self.eval()
        return self(images).argmax(1)


class AuxHead(nn.Sequential):
    """The auxiliary (deep-supervision) classifier used during training only."""

    def __init__(self, cin: int, num_classes: int, mid: int = 64):
        from edgeseg.models.layers import ConvBNReLU
        super().__init__(ConvBNReLU(cin, mid), nn.Dropout2d(0.1), nn.Conv2d(mid, num_classes, 1))
