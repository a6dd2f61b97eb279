"""The mask-classification loss of MaskFormer and Mask2Former: each image's segments (one per class present,
for semantic segmentation) are matched one-to-one to the queries by the Hungarian algorithm on a cost of class
probability, mask BCE and mask dice; matched queries learn their segment's class and mask, the others "no object".

Weights are Mask2Former's (class 2, BCE 5, dice 5, "no object" 0.1), for MaskFormer too (its paper's focal loss
was replaced by BCE in the successor with no loss of accuracy). Masks are supervised at their own resolution
(/4) against the share of each cell that a class covers among its labelled pixels, on every cell rather than on
Mask2Former's sampled points: at these sizes the whole map costs less than the sampling.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from edgeseg.models.base import SetPrediction

CLASS_WEIGHT, BCE_WEIGHT, DICE_WEIGHT, NO_OBJECT_WEIGHT = 2.0, 5.0, 5.0, 0.1


def segments(target: torch.Tensor, size, num_classes: int, ignore_index: int):
    """Labels [B, H, W] -> (soft masks [B, K, h*w]: each cell's share of class k among its labelled pixels,
    labelled share [B, h*w], classes present [B, K] bool), at the masks' size (h, w)."""
    valid = target != ignore_index
    onehot = F.one_hot(torch.where(valid, target, num_classes), num_classes + 1).permute(0, 3, 1, 2).float()
    share = F.interpolate(onehot, size=tuple(size), mode="area").flatten(2)
    labelled = 1 - share[:, -1]
    masks = share[:, :-1] / labelled.clamp(min=1e-6)[:, None]
    return masks, labelled, share[:, :-1].amax(-1) > 0


def pair_costs(masks: torch.Tensor, targets: torch.Tensor, labelled: torch.Tensor):
    """Mask logits [Q, P], target masks [T, P] in [0, 1], labelled share [P] -> (mean BCE [Q, T], dice loss
    [Q, T]) of every query against every target, over the labelled cells."""
    n = labelled.sum().clamp(min=1e-6)
    # BCE-with-logits(m, t) = softplus(m) - m t, summed over cells weighted by their labelled share
    bce = ((F.softplus(masks) @ labelled)[:, None] - (masks * labelled) @ targets.T) / n
    probs = masks.sigmoid() * labelled
    dice = 1 - (2 * probs @ targets.T + 1) / (probs.sum(-1)[:, None] + (targets * labelled).sum(-1)[None] + 1)
    return bce, dice


@torch.no_grad()
def match(classes: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor,
          labelled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One image: class logits [Q, K+1], mask logits [Q, P], target classes [T] and masks [T, P] -> the matched
    (query indices, target indices) of least total cost."""
    bce, dice = pair_costs(masks, targets, labelled)
    cost = -CLASS_WEIGHT * classes.softmax(-1)[:, labels] + BCE_WEIGHT * bce + DICE_WEIGHT * dice
    q, t = linear_sum_assignment(cost.cpu().numpy())
    return torch.as_tensor(q, device=masks.device), torch.as_tensor(t, device=masks.device)


def layer_loss(classes: torch.Tensor, masks: torch.Tensor, seg, class_weight: torch.Tensor) -> torch.Tensor:
    """The loss of one decoder layer's prediction: class logits [B, Q, K+1], mask logits [B, Q, h, w]."""
    targets, labelled, present = seg
    classes, masks = classes.float(), masks.float().flatten(2)
    num_classes = classes.shape[-1] - 1
    wanted = torch.full(classes.shape[:2], num_classes, dtype=torch.long, device=classes.device)
    bce_sum, dice_sum, count = classes.new_zeros(()), classes.new_zeros(()), 0
    for b in range(classes.shape[0]):
        labels = present[b].nonzero()[:, 0]
        if labels.numel() == 0:  # nothing labelled: every query should say "no object"
            continue
        q, t = match(classes[b], masks[b], labels, targets[b, labels], labelled[b])
        wanted[b, q] = labels[t]
        bce, dice = pair_costs(masks[b, q], targets[b, labels[t]], labelled[b])
        bce_sum, dice_sum, count = bce_sum + bce.diagonal().sum(), dice_sum + dice.diagonal().sum(), count + len(q)
    ce = F.cross_entropy(classes.transpose(1, 2), wanted, weight=class_weight)
    return CLASS_WEIGHT * ce + (BCE_WEIGHT * bce_sum + DICE_WEIGHT * dice_sum) / max(count, 1)


def set_loss(pred: SetPrediction, target: torch.Tensor, ignore_index: int,
             weight: torch.Tensor | None = None) -> torch.Tensor:
    """The matching loss summed over the final prediction and every earlier layer's. `weight`: per-class
    weights of the class term (the "no object" class weighs NO_OBJECT_WEIGHT)."""
    num_classes = pred.classes.shape[-1] - 1
    seg = segments(target, pred.masks.shape[-2:], num_classes, ignore_index)
    class_weight = torch.ones(num_classes, device=target.device) if weight is None else weight.float()
    class_weight = torch.cat([class_weight, class_weight.new_tensor([NO_OBJECT_WEIGHT])])
    return sum(layer_loss(c, m, seg, class_weight) for c, m in [(pred.classes, pred.masks), *pred.aux])
