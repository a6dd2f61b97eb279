"""One shared test base that every registered architecture goes through, plus the layers and pretrained loading."""
from __future__ import annotations

import functools
import io
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgeseg.data import CAMVID
from edgeseg.errors import EdgesegError
from edgeseg.models import available, checkpoint, create
from edgeseg.models.backbones import BACKBONES, create_backbone
from edgeseg.models.backbones.mit import MixTransformer
from edgeseg.models.backbones.mobilenetv2 import MobileNetV2
from edgeseg.models.base import SetPrediction
from edgeseg.models.layers import adaptive_avg_pool2d
from edgeseg.models.pretrained import load_pretrained
from edgeseg.train.losses import training_loss

pytestmark = pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export",
                                        "ignore:The feature will be removed")
ARCHS = available()
NUM_CLASSES = 5
ODD = (65, 97)
EXPORT_SIZES = [(64, 96), (65, 97), (40, 130)]  # rounded up to the model's size_divisor
# The U2-Nets chain ~110 convolutions, and PyTorch's own fp32 output is up to ~4e-3 from a float64 run of the same
# weights (their dilated taps see only padding in the 64x96 batch that sets the BN statistics): their export is held
# to being within four times PyTorch's fp32 distance from the float64 result (ONNX Runtime's convolutions sum in
# another order: 2.6x PyTorch's distance was seen on an AVX-512 machine).
DEEP = {"u2net", "u2netp"}


def valid(model, h, w):
    d = getattr(model, "size_divisor", 1)
    return -(-h // d) * d, -(-w // d) * d


VAR_FLOOR = 0.01


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random norm affines, noise in zero-initialised tensors (SFNet's flow, ResNet's last BN per block) and
    BN running statistics taken from one batch, so that every path contributes, at a realistic scale, to a
    comparison in eval mode. Returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 1.0  # the running statistics become those of the next batch
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        model.train()(torch.randn(2, 3, *valid(model, 64, 96), generator=g))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 0.1
                # near-constant channels (a dilated tap that only sees padding) would amplify the float
                # rounding of their cancelling sums a thousandfold; trained networks do not look like that
                m.running_var.clamp_(min=VAR_FLOOR)
    return model.eval()


@functools.cache
def _randomized_state(arch: str) -> dict:
    torch.manual_seed(0)
    return randomize(create(arch, NUM_CLASSES)).state_dict()


def randomized(arch: str):
    """A randomized model in eval mode (built once per architecture)."""
    model = create(arch, NUM_CLASSES)
    model.load_state_dict(_randomized_state(arch))
    return model.eval()


def first_conv(model) -> nn.Conv2d:
    return next(m for m in model.encoder.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_backward(arch):
    torch.manual_seed(0)
    model = create(arch, NUM_CLASSES).train()
    x = torch.randn(2, 3, *valid(model, 64, 96))
    target = torch.randint(0, NUM_CLASSES, (2, *x.shape[-2:]))
    out = model(x)
    if isinstance(out, SetPrediction):  # mask classification: every decoder layer's classes and masks
        assert out.classes.shape[-1] == NUM_CLASSES + 1 and out.masks.shape[:2] == out.classes.shape[:2]
        assert out.aux and all(c.shape == out.classes.shape and m.shape == out.masks.shape for c, m in out.aux)
    elif model.aux_head is not None:
        assert isinstance(out, tuple) and len(out) == 2
        assert out[1].shape == out[0].shape == (2, NUM_CLASSES, *x.shape[-2:])
    else:
        assert out.shape == (2, NUM_CLASSES, *x.shape[-2:])
    training_loss(model, out, target, ignore_index=255).backward()
    grad = first_conv(model).weight.grad
    assert grad is not None and grad.abs().sum() > 0
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unused, f"parameters outside the graph: {unused[:5]}"
    model.eval()
    assert isinstance(model(x), torch.Tensor)  # no aux output in eval


@pytest.mark.parametrize("arch", ARCHS)
def test_odd_and_small_sizes(arch):
    model = create(arch, NUM_CLASSES).eval()
    x = torch.randn(1, 3, *ODD)
    with torch.no_grad():
        if model.size_divisor > 1:
            with pytest.raises(EdgesegError, match=rf"65x97 is not a multiple of {model.size_divisor}; resize or pad it"):
                model(x)
            x = torch.randn(1, 3, *valid(model, *ODD))
        assert model(x).shape == (1, NUM_CLASSES, *x.shape[-2:])
        smallest = valid(model, model.min_size, model.min_size)
        assert model(torch.randn(1, 3, *smallest)).shape == (1, NUM_CLASSES, *smallest)
        with pytest.raises(EdgesegError, match="smaller than"):
            model(torch.randn(1, 3, model.min_size - 1, 64))
        with pytest.raises(EdgesegError, match=r"expected images \[N,3,H,W\]"):
            model(torch.randn(1, 1, 64, 64))


@pytest.mark.parametrize("arch", ARCHS)
def test_onnx_dynamic_matches_torch(arch):
    model = randomized(arch)
    if not model.exportable:
        pytest.skip(f"{arch} declares exportable = False")
    sizes = [valid(model, h, w) for h, w in EXPORT_SIZES]
    buf = io.BytesIO()
    torch.onnx.export(model, (torch.randn(1, 3, *sizes[0]),), buf, dynamo=False, opset_version=17,
                      input_names=["images"], output_names=["logits"],
                      dynamic_axes={"images": {0: "N", 2: "H", 3: "W"}, "logits": {0: "N", 2: "H", 3: "W"}})
    graph = onnx.load_from_string(buf.getvalue()).graph
    assert [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim] == ["N", "", "H", "W"]
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    torch.manual_seed(1)
    for i, (h, w) in enumerate(sizes):
        x = torch.randn(2 if i == 0 else 1, 3, h, w)
        with torch.no_grad():
            ref = model(x).numpy()
        got = sess.run(None, {"images": x.numpy()})[0]
        assert got.shape == ref.shape
        assert np.abs(ref).max() > 0.1  # a meaningful comparison, not of near-zero maps
        if arch in DEEP:
            with torch.no_grad():
                exact = model.double()(x.double()).numpy()
            model.float()
            err, torch_err = np.abs(got - exact).max(), np.abs(ref - exact).max()
            assert err <= max(1e-4, 4 * torch_err), f"{arch} at {h}x{w}: |onnx - fp64| {err:.2e}, |torch - fp64| {torch_err:.2e}"
            continue
        assert np.abs(got - ref).max() <= 1e-4, f"{arch} at {h}x{w}: max |onnx - torch| = {np.abs(got - ref).max():.2e}"


@pytest.mark.parametrize("arch", ARCHS)
def test_eval_is_deterministic_and_per_sample(arch):
    model = randomized(arch)
    x = torch.randn(2, 3, *valid(model, 32, 64))
    with torch.no_grad():
        a, b, single = model(x), model(x), model(x[1:])
    assert torch.equal(a, b)
    # no mixing across the batch: a mixed-in sample would move the output by its own scale, while oneDNN's
    # batch-size-dependent blocking moves it by float rounding (seen at 1.3e-5 on unet)
    scale = float(a.abs().max())
    torch.testing.assert_close(a[1:], single, rtol=1e-4, atol=1e-4 * max(1.0, scale))


@pytest.mark.parametrize("arch", ARCHS)
def test_predict(arch):
    model = create(arch, NUM_CLASSES).train()
    x = torch.randn(2, 3, *valid(model, 32, 48))
    labels = model.predict(x)
    assert not model.training
    assert labels.shape == (2, *x.shape[-2:]) and labels.dtype == torch.int64
    assert labels.min() >= 0 and labels.max() < NUM_CLASSES
    with torch.no_grad():
        assert torch.equal(labels, model(x).argmax(1))


@pytest.mark.parametrize("arch", ARCHS)
def test_hparams_round_trip(arch):
    model = create(arch, 3)
    assert model.arch == arch
    hparams = json.loads(json.dumps(model.hparams))  # checkpoints store them as JSON-compatible values
    clone = create(arch, 3, **hparams)
    assert {k: v.shape for k, v in clone.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    clone.load_state_dict(model.state_dict())


@pytest.mark.parametrize("arch,options", [
    ("fcn8s", {"backbone": "resnet50"}),
    ("unet", {"width": 8}),
    ("pspnet", {"backbone": "resnet50", "aux": False}),
    ("deeplabv3plus", {"backbone": "resnet18", "output_stride": 8}),
    ("segformer", {"dim": 64, "drop_path": 0.0}),
])
def test_options(arch, options):
    model = create(arch, NUM_CLASSES, **options).eval()
    assert model.hparams.items() >= options.items()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert model(x).shape == (1, NUM_CLASSES, 64, 96)
    assert (model.aux_head is not None) == model.hparams.get("aux", False)


def test_bad_option_is_a_user_error():
    with pytest.raises(EdgesegError, match="unknown backbone 'resnet7'"):
        create("pspnet", 3, backbone="resnet7")
    with pytest.raises(EdgesegError, match="bad model option"):
        create("unet", 3, depth=5)


@pytest.mark.parametrize("name,output_stride", [(n, s) for n in sorted(BACKBONES) for s in (8, 16, 32)
                                                if n != "mit_b0" or s == 32
                                                if not n.startswith("vit_")])  # one stride: test_archs_transformer
def test_backbone_strides(name, output_stride):
    net = create_backbone(name) if name == "mit_b0" else create_backbone(name, output_stride=output_stride)
    with torch.no_grad():
        feats = net(torch.randn(1, 3, 64, 96))
    strides = [min(s, output_stride) for s in (4, 8, 16, 32)]
    assert [f.shape[1:] for f in feats] == [(c, 64 // s, 96 // s) for c, s in zip(net.channels, strides)]


@pytest.mark.parametrize("h,w", [(1, 1), (5, 7), (6, 6), (13, 29), (45, 60), (64, 3)])
@pytest.mark.parametrize("bins", [1, 2, 3, 6])
def test_adaptive_avg_pool2d_matches_torch(h, w, bins):
    x = torch.randn(2, 3, h, w)
    torch.testing.assert_close(adaptive_avg_pool2d(x, bins), F.adaptive_avg_pool2d(x, bins), rtol=1e-5, atol=1e-6)


def test_adaptive_avg_pool2d_exports_dynamic():
    class Pool(nn.Module):
        def forward(self, x):
            return torch.cat([adaptive_avg_pool2d(x, b).flatten(2) for b in (1, 2, 3, 6)], 2)

    buf = io.BytesIO()
    torch.onnx.export(Pool(), (torch.randn(1, 4, 12, 12),), buf, dynamo=False, opset_version=17, input_names=["x"],
                      dynamic_axes={"x": {2: "H", 3: "W"}})
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    for h, w in [(12, 12), (7, 31), (45, 60), (2, 9)]:
        x = torch.randn(1, 4, h, w)
        np.testing.assert_allclose(sess.run(None, {"x": x.numpy()})[0], Pool()(x).numpy(), rtol=1e-5, atol=1e-6)


# --- pretrained weights -------------------------------------------------------------------------------------

def test_load_pretrained_resnet_state_dict(tmp_path):
    torch.manual_seed(0)
    source = randomize(create_backbone("resnet18"))
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    del state["module.layer4.1.bn2.running_var"]  # -> missing
    state["module.layer1.0.conv1.weight"] = torch.zeros(8, 64, 3, 3)  # -> shape mismatch
    state["module.fc.weight"], state["module.fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)  # -> skipped
    state["module.layer9.weight"] = torch.zeros(3)  # -> unexpected
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": state, "epoch": 90}, path)

    model = create("fcn8s", NUM_CLASSES)
    before = model.encoder.layer1[0].conv1.weight.clone()
    report = load_pretrained(model, path)
    loaded = model.encoder.state_dict()
    for k, v in source.state_dict().items():
        if k not in ("layer4.1.bn2.running_var", "layer1.0.conv1.weight"):
            assert torch.equal(loaded[k], v), k
    assert torch.equal(loaded["layer1.0.conv1.weight"], before)
    assert report.missing == ["layer4.1.bn2.running_var"]
    assert list(report.mismatched) == ["layer1.0.conv1.weight"]
    assert report.unexpected == ["layer9.weight"]
    assert sorted(report.skipped) == ["fc.bias", "fc.weight"]
    assert len(report.loaded) == report.total - 2
    text = str(report)
    assert "missing (1): layer4.1.bn2.running_var" in text and "[8, 64, 3, 3] vs [64, 64, 3, 3]" in text


@pytest.mark.parametrize("weights", ["fp32", "int8"])
def test_load_pretrained_from_an_edgeseg_checkpoint_into_a_backbone(tmp_path, weights):
    torch.manual_seed(1)
    trained = create("deeplabv3plus", CAMVID.num_classes)
    path = tmp_path / "ckpt.pt"
    checkpoint.save(checkpoint.model_record(trained, CAMVID, weights=weights), path)
    backbone = create_backbone("mobilenetv2", output_stride=16)
    report = load_pretrained(backbone, path)
    assert not report.missing and not report.mismatched
    assert report.unexpected and all(k.startswith("decoder.") for k in report.unexpected)
    assert report.skipped and all(k.startswith("head.") for k in report.skipped)
    for k, v in trained.encoder.state_dict().items():
        got = backbone.state_dict()[k]
        if weights == "fp32" or v.dim() < 2:
            torch.testing.assert_close(got, v, rtol=1e-3 if weights == "int8" else 0, atol=1e-3 if weights == "int8" else 0)
        else:  # int8: within half a quantisation step per output channel
            step = v.abs().amax(dim=tuple(range(1, v.dim())), keepdim=True) / 127
            assert ((got - v).abs() <= step / 2 + 1e-7).all(), k


def test_mobilenetv2_timm_names():
    remap = MobileNetV2.remap_state_dict
    t = torch.zeros(1)
    keys = ["conv_stem.weight", "bn1.running_mean", "blocks.0.0.conv_dw.weight", "blocks.0.0.bn2.bias",
            "blocks.1.1.conv_pwl.weight", "blocks.3.0.conv_dw.weight", "blocks.6.0.bn3.running_var",
            "conv_head.weight", "bn2.weight", "classifier.weight"]
    assert list(remap({k: t for k in keys})) == [
        "features.0.0.weight", "features.0.1.running_mean", "features.1.conv.0.0.weight", "features.1.conv.2.bias",
        "features.3.conv.2.weight", "features.7.conv.1.0.weight", "features.17.conv.3.running_var",
        "features.18.0.weight", "features.18.1.weight", "classifier.weight"]
    own = MobileNetV2().state_dict()
    assert all(k in own for k in list(remap({k: t for k in keys}))[:7])


def test_mit_hugging_face_names():
    k, v, t0 = torch.randn(64, 64), torch.randn(64, 64), torch.zeros(1)
    hf = {"segformer.encoder.patch_embeddings.0.proj.weight": t0,
          "segformer.encoder.patch_embeddings.3.layer_norm.bias": t0,
          "segformer.encoder.block.1.0.attention.self.key.weight": k,
          "segformer.encoder.block.1.0.attention.self.value.weight": v,
          "segformer.encoder.block.1.0.attention.self.layer_norm.weight": t0,
          "segformer.encoder.block.0.1.attention.output.dense.bias": t0,
          "segformer.encoder.block.2.1.mlp.dwconv.dwconv.weight": t0,
          "segformer.encoder.block.3.0.layer_norm_2.weight": t0,
          "segformer.encoder.layer_norm.3.bias": t0, "classifier.weight": t0}
    out = MixTransformer.remap_state_dict(hf)
    assert sorted(out) == sorted(["patch_embed1.proj.weight", "patch_embed4.norm.bias", "block2.0.attn.kv.weight",
                                  "block2.0.attn.norm.weight", "block1.1.attn.proj.bias", "block3.1.mlp.dwconv.dwconv.weight",
                                  "block4.0.norm2.weight", "norm4.bias", "classifier.weight"])
    assert torch.equal(out["block2.0.attn.kv.weight"], torch.cat([k, v]))
    own = MixTransformer().state_dict()
    assert all(k in own for k in out if k != "classifier.weight")


def test_load_pretrained_bad_files(tmp_path):
    model = create("fcn8s", NUM_CLASSES)
    text = tmp_path / "weights.pth"
    text.write_text("not weights")
    with pytest.raises(EdgesegError, match="weights.pth: not a PyTorch state dict"):
        load_pretrained(model, text)
    empty = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "lr": 0.1}, empty)
    with pytest.raises(EdgesegError, match="meta.pt: holds no state dict"):
        load_pretrained(model, empty)
    other = tmp_path / "mit.pt"
    torch.save(MixTransformer().state_dict(), other)
    with pytest.raises(EdgesegError, match="mit.pt: none of its .* fits the ResNet encoder"):
        load_pretrained(model, other)
    with pytest.raises(EdgesegError, match="nope.pt: no such file"):
        load_pretrained(model, tmp_path / "nope.pt")
