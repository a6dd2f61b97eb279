"""Segmentation losses: cross-entropy with ignore index, class weights and optional OHEM; what a model's training
output is trained with."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from edgeseg.errors import EdgesegError
from edgeseg.models.base import SetPrediction
from edgeseg.train.set_loss import set_loss


def seg_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int, weight: torch.Tensor | None = None,
             ohem_thresh: float | None = None, ohem_min_kept: int = 100_000) -> torch.Tensor:
    """Mean CE over labelled pixels; with OHEM, only pixels whose true-class probability is below the threshold
    (at least `ohem_min_kept` of the hardest)."""
    logits = logits.float()
    if ohem_thresh is None:
        return F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index)
    pixel = F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index, reduction="none").flatten()
    valid = target.flatten() != ignore_index
    pixel = pixel[valid]
    if pixel.numel() == 0:
        return logits.sum() * 0
    kept = max(int((pixel > -np.log(ohem_thresh)).sum()), min(ohem_min_kept, pixel.numel()))
    return pixel.topk(kept).values.mean()


def training_loss(model, out, target: torch.Tensor, ignore_index: int, weight: torch.Tensor | None = None,
                  ohem_thresh: float | None = None) -> torch.Tensor:
    """The loss of a model's training output: logits, (logits, aux logits) or a SetPrediction."""
    if isinstance(out, SetPrediction):
        if ohem_thresh is not None:
            raise EdgesegError(f"--ohem: {model.arch} is trained with the matching loss, which has no per-pixel "
                               f"hard-example mining; drop --ohem")
        return set_loss(out, target, ignore_index, weight)
    logits, aux = out if isinstance(out, tuple) else (out, None)
    loss = seg_loss(logits, target, ignore_index, weight, ohem_thresh)
    if aux is not None:
        loss = loss + model.aux_weight * seg_loss(aux, target, ignore_index, weight, ohem_thresh)
    return loss


def median_frequency_weights(dataset, num_classes: int, ignore_index: int) -> np.ndarray:
    """SegNet's median-frequency balancing: freq(c) = pixels of c / pixels of images containing c; w = median / freq."""
    count = np.zeros(num_classes, np.float64)
    img_pixels = np.zeros(num_classes, np.float64)
    for i in range(len(dataset)):
        lab = dataset[i][1]
        hist = np.bincount(lab[lab != ignore_index].ravel(), minlength=num_classes)[:num_classes]
        count += hist
        img_pixels[hist > 0] += lab.size
    freq = np.where(img_pixels > 0, count / np.maximum(img_pixels, 1), 0)
    med = np.median(freq[freq > 0])
    return np.where(freq > 0, med / np.maximum(freq, 1e-12), 0).astype(np.float32)
