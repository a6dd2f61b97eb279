"""Receptive field and output stride traced from the module graph, against hand-computed answers."""
from __future__ import annotations

import math

import pytest
import torch.nn.functional as F
from torch import nn

from edgeseg.cli import main
from edgeseg.models.backbones.resnet import resnet18
from edgeseg.models.backbones.vgg import vgg16_bn
from edgeseg.models.receptive_field import receptive_fields


def output(model, size=(64, 64)):
    rows = dict(receptive_fields(model, size))
    f = rows["output"]
    return f.rf[0], f.jump[0]


class Branches(nn.Module):
    """Two parallel paths summed (an ASPP-like block): the wider one sets the field."""

    def __init__(self):
        super().__init__()
        self.narrow = nn.Conv2d(3, 4, 3, padding=1)
        self.wide = nn.Conv2d(3, 4, 3, padding=6, dilation=6)

    def forward(self, x):
        return self.narrow(x) + self.wide(x)


class Functional(nn.Module):
    """Pooling, resizing and a global mean written as functional calls (no layer modules)."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = F.max_pool2d(self.conv(x), 2)  # 3 + 1 = 4, stride 2
        if self.kind == "nearest":
            return F.interpolate(y, scale_factor=2.0, mode="nearest")  # stride back to 1, field unchanged
        if self.kind == "bilinear":
            return F.interpolate(y, size=x.shape[-2:], mode="bilinear")  # + one input sample (2 px)
        return y + y.mean(dim=(2, 3), keepdim=True)  # global


@pytest.mark.parametrize("model, rf, stride", [
    (nn.Conv2d(3, 4, 3, padding=1), 3, 1),
    (nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)), 5, 1),
    # 3, 5; pool 2/2: 5 + 1 = 6 at stride 2; conv 3: 6 + 2 * 2 = 10
    (nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.MaxPool2d(2),
                   nn.Conv2d(4, 4, 3, padding=1)), 10, 2),
    (nn.Conv2d(3, 4, 3, padding=2, dilation=2), 5, 1),
    # stride-2 conv 3 (3, stride 2), then dilation 2: 3 + 2 * 2 * 2 = 11
    (nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.Conv2d(4, 4, 3, padding=2, dilation=2)), 11, 2),
    # 7x7/2 conv, 3x3/2 pool (ResNet's stem): 7, then 7 + 2 * 2 = 11 at stride 4
    (nn.Sequential(nn.Conv2d(3, 4, 7, 2, 3), nn.MaxPool2d(3, 2, 1)), 11, 4),
    # transposed 2x2/2 after a 3x3/2 conv: stride 1, 3 + 1 * 1 = 4
    (nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.ConvTranspose2d(4, 4, 2, 2)), 4, 1),
    (Branches(), 13, 1),  # max(3, 1 + 2 * 6)
    (Functional("nearest"), 4, 1),
    (Functional("bilinear"), 6, 1),
    (Functional("global"), math.inf, 2),
])
def test_small_stacks(model, rf, stride):
    assert output(model) == (rf, stride)


def test_vgg16_and_resnet18_match_their_published_fields():
    # VGG-16: pool2..pool5 see 16, 44, 100 and 212 pixels; ResNet-18's stages 43, 99, 211 and 435
    rows = dict(receptive_fields(vgg16_bn(), (224, 224)))
    assert [(rows[f"output[{i}]"].rf[0], rows[f"output[{i}]"].jump[0]) for i in range(4)] == [
        (16, 4), (44, 8), (100, 16), (212, 32)]
    rows = dict(receptive_fields(resnet18(), (224, 224)))
    assert (rows["layer4"].rf[0], rows["layer4"].jump[0]) == (435, 32)
    assert (rows["layer1"].rf[0], rows["layer1"].jump[0]) == (43, 4)


def test_dilated_backbone_keeps_its_stride_and_widens_its_field():
    rows = dict(receptive_fields(resnet18(output_stride=8), (64, 64)))
    # layer3 and layer4 at stride 8, dilated 2 and 4; the first block of each keeps the previous rate (as
    # torchvision's): layer2 ends at 99, then each 3x3 conv adds 2 * dilation * 8
    rf = 99
    for d in (1, 1, 2, 2, 2, 2, 4, 4):
        rf += 2 * d * 8
    assert (rows["layer4"].rf[0], rows["layer4"].jump[0]) == (rf, 8)


def test_anisotropic_kernels_are_per_axis():
    f = dict(receptive_fields(nn.Conv2d(3, 4, (1, 5), (1, 2), (0, 2)), (32, 32)))["output"]
    assert f.rf == (1, 5) and f.jump == (1, 2)


def test_the_model_is_left_as_it_was():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    receptive_fields(model, (32, 32))
    assert model.training and not model[0]._forward_hooks and not model[0]._forward_pre_hooks


def test_cli(capsys):
    assert main(["zoo", "--receptive-field", "segnet_basic", "--opt", "unpool=indices", "--size", "64x64"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:]}
    # four 7x7 conv + 2x2 pool stages: 7, 8 | 20, 22 | 46, 50 | 98, 106 at stride 16
    assert lines["encoder"] == ["16", "106"]
    # decoder: unpool (stride 8), 7x7 conv: 106 + 6 * 8 = 154; then + 6 * 4, + 6 * 2, + 6 * 1
    assert lines["decoder.stages.0"] == ["8", "154"] and lines["decoder"] == ["1", "196"]
    assert main(["zoo", "--receptive-field", "deeplabv3", "--size", "64x64"]) == 0
    out = capsys.readouterr().out
    assert "decoder.aspp" in out and out.splitlines()[-1].split()[1:] == ["1", "global"]
    assert main(["zoo", "--receptive-field", "nonet"]) == 2
    assert "unknown architecture 'nonet'" in capsys.readouterr().err

