"""The mask-classification (matching) loss of MaskFormer and Mask2Former, against PyTorch's losses and a brute-force
assignment."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from edgeseg.errors import EdgesegError
from edgeseg.models import create
from edgeseg.models.base import SetPrediction
from edgeseg.models.layers import resize_to
from edgeseg.train.losses import training_loss
from edgeseg.train.set_loss import BCE_WEIGHT, CLASS_WEIGHT, DICE_WEIGHT, match, pair_costs, segments, set_loss

IGNORE = 255


def soft_case(q=6, t=3, p=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    masks = torch.randn(q, p, generator=g) * 3
    targets = torch.rand(t, p, generator=g).round()
    targets[:, :5] = torch.rand(t, 5, generator=g)  # cells split between classes
    labelled = torch.ones(p)
    labelled[5:10] = 0.5
    labelled[10:14] = 0
    return masks, targets, labelled


def test_pair_costs_match_pytorch():
    masks, targets, labelled = soft_case()
    bce, dice = pair_costs(masks, targets, labelled)
    for q, t in itertools.product(range(len(masks)), range(len(targets))):
        ref = F.binary_cross_entropy_with_logits(masks[q], targets[t], weight=labelled, reduction="sum") / labelled.sum()
        torch.testing.assert_close(bce[q, t], ref, rtol=1e-5, atol=1e-6)
        p, y, w = masks[q].sigmoid(), targets[t], labelled  # dice with each cell weighted by its labelled share
        torch.testing.assert_close(dice[q, t], 1 - (2 * (w * p * y).sum() + 1) / ((w * p).sum() + (w * y).sum() + 1))


def test_match_is_the_least_cost_assignment():
    masks, targets, labelled = soft_case()
    classes = torch.randn(len(masks), 5, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 3, 1])
    bce, dice = pair_costs(masks, targets, labelled)
    cost = -CLASS_WEIGHT * classes.softmax(-1)[:, labels] + BCE_WEIGHT * bce + DICE_WEIGHT * dice
    best = min(sum(cost[q, t] for t, q in enumerate(qs)) for qs in itertools.permutations(range(len(masks)), 3))
    q, t = match(classes, masks, labels, targets, labelled)
    assert sorted(t.tolist()) == [0, 1, 2] and len(set(q.tolist())) == 3
    torch.testing.assert_close(cost[q, t].sum(), best)


def test_segments_are_the_labelled_share_of_each_cell():
    target = torch.tensor([[[1, 1, 0, 0],
                            [2, IGNORE, 0, 0],
                            [IGNORE, IGNORE, 1, 2],
                            [IGNORE, IGNORE, 2, 1]]])
    masks, labelled, present = segments(target, (2, 2), num_classes=3, ignore_index=IGNORE)
    assert present.tolist() == [[True, True, True]]
    torch.testing.assert_close(labelled[0], torch.tensor([0.75, 1.0, 0.0, 1.0]))
    # cell 0: two of its three labelled pixels are class 1, one class 2; an unlabelled cell is no class
    torch.testing.assert_close(masks[0, :, 0], torch.tensor([0.0, 2 / 3, 1 / 3]))
    torch.testing.assert_close(masks[0, :, 2], torch.zeros(3))
    torch.testing.assert_close(masks[0, :, 3], torch.tensor([0.0, 0.5, 0.5]))


def blocky_target(seed=0, b=2, h=8, w=12, classes=4, cell=4):
    """Labels constant over cell x cell blocks (at 4, the /4 masks are exactly 0 or 1), the first block ignored."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, classes, (b, h // cell, w // cell), generator=g)
    coarse[0, 0, 0] = IGNORE
    return coarse.repeat_interleave(cell, 1).repeat_interleave(cell, 2), coarse


def perfect_prediction(coarse, classes=4, queries=7, scale=30.0):
    """Query k of each image predicts the k-th class present there, confidently; the rest say "no object"."""
    b = coarse.shape[0]
    cls = torch.full((b, queries, classes + 1), -scale)
    cls[..., classes] = scale
    masks = torch.full((b, queries, *coarse.shape[1:]), -scale)
    for i in range(b):
        for k, c in enumerate(sorted(set(coarse[i].flatten().tolist()) - {IGNORE})):
            cls[i, k] = -scale
            cls[i, k, c] = scale
            masks[i, k] = torch.where(coarse[i] == c, scale, -scale)
    return cls, masks


def test_a_perfect_prediction_costs_nothing_and_a_wrong_one_costs():
    target, coarse = blocky_target()
    cls, masks = perfect_prediction(coarse)
    assert float(set_loss(SetPrediction(cls, masks), target, IGNORE)) < 1e-3
    # the same masks with the first two queries' classes swapped: no assignment fits both classes and masks
    swapped = cls.clone()
    swapped[:, [0, 1]] = cls[:, [1, 0]]
    assert float(set_loss(SetPrediction(swapped, masks), target, IGNORE)) > 1.0
    # each earlier layer adds its own loss
    wrong = (swapped, masks)
    assert float(set_loss(SetPrediction(cls, masks, aux=[wrong]), target, IGNORE)) == pytest.approx(
        float(set_loss(SetPrediction(*wrong), target, IGNORE)), rel=1e-3, abs=1e-3)


def test_ignored_pixels_do_not_count():
    target, coarse = blocky_target()
    cls, masks = perfect_prediction(coarse, scale=3.0)  # an imperfect, differentiable prediction
    masks.requires_grad_(True)
    loss = set_loss(SetPrediction(cls, masks), target, IGNORE)
    loss.backward()
    assert masks.grad[0, :, 0, 0].abs().max() == 0 and masks.grad[1, :, 0, 0].abs().max() > 0
    moved = masks.detach().clone()
    moved[0, :, 0, 0] = 50.0
    assert float(set_loss(SetPrediction(cls, moved), target, IGNORE)) == pytest.approx(loss.item(), rel=1e-6)


def test_class_weights_weigh_the_class_term():
    target, coarse = blocky_target()
    cls, masks = perfect_prediction(coarse, scale=3.0)
    cls = cls + torch.randn(cls.shape, generator=torch.Generator().manual_seed(0))  # unequal per-query losses
    even = set_loss(SetPrediction(cls, masks), target, IGNORE)
    assert torch.allclose(set_loss(SetPrediction(cls, masks), target, IGNORE, weight=torch.ones(4)), even)
    assert not torch.allclose(set_loss(SetPrediction(cls, masks), target, IGNORE, weight=torch.tensor([5.0, 1, 1, 1])),
                              even)


def test_ohem_is_refused_for_mask_classification():
    model = create("maskformer", 4, dim=32, queries=8, layers=1, heads=2).train()
    x, target = torch.randn(1, 3, 64, 64), torch.zeros(1, 64, 64, dtype=torch.long)
    with pytest.raises(EdgesegError, match="--ohem: maskformer is trained with the matching loss"):
        training_loss(model, model(x), target, IGNORE, ohem_thresh=0.7)


@pytest.mark.parametrize("arch", ["maskformer", "mask2former"])
def test_the_matching_loss_fits_one_image(arch):
    """A few dozen steps on one labelled image: the semantic output (the exported one) learns it."""
    torch.manual_seed(0)
    model = create(arch, 4, dim=32, queries=8, layers=3, heads=2)
    target, _ = blocky_target(b=1, h=64, w=64, cell=16)  # blocks wide enough that upsampling blurs few pixels
    x = torch.randn(1, 3, 64, 64)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def accuracy():
        pred = model.eval()(x).argmax(1)
        labelled = target != IGNORE
        return float((pred == target)[labelled].float().mean())

    before = accuracy()
    for _ in range(80):
        loss = training_loss(model.train(), model(x), target, IGNORE)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert accuracy() > max(0.95, before + 0.3)


@pytest.mark.parametrize("arch", ["maskformer", "mask2former"])
def test_the_trained_prediction_is_the_deployed_one(arch):
    """The training output's final prediction, through the semantic head, is the eval output (BatchNorm aside):
    nothing random in training (dropout on the zero-started queries was) that eval would lack."""
    torch.manual_seed(0)
    model = create(arch, 4, dim=32, queries=8, layers=2, heads=2).train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = model(x)
        trained = resize_to(model.head((out.classes, out.masks)), x)
        torch.testing.assert_close(trained, model.eval()(x), rtol=1e-4, atol=1e-4)
