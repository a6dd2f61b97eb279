"""Training on real (shrunk) CamVid: resume equals an uninterrupted run, DDP with 2 gloo processes, checkpoints."""
import os
import subprocess
import sys

import pytest
import torch

from edgeseg.errors import EdgesegError
from edgeseg.models import checkpoint, create
from edgeseg.train.loop import TrainConfig, train
from edgeseg.train.schedule import poly_lr
from tests.conftest import shrink_camvid

FAST = dict(arch="sfnet", model_options={"fpn_dim": 32}, epochs=2, batch_size=2, crop=(64, 96), val_split=None, limit=4)


def _weights(path):
    return torch.load(path, weights_only=True)["model"]["state_dict"]


def test_resume_repeats_an_uninterrupted_run(tiny_camvid, tmp_path):
    train(TrainConfig(data=str(tiny_camvid), out=str(tmp_path / "full"), **FAST))
    part = TrainConfig(data=str(tiny_camvid), out=str(tmp_path / "part"), stop_after=1, **FAST)
    train(part)
    assert torch.load(tmp_path / "part" / "last.pt", weights_only=True)["epoch"] == 0
    train(part, resume=True)
    full, resumed = _weights(tmp_path / "full" / "last.pt"), _weights(tmp_path / "part" / "last.pt")
    assert full.keys() == resumed.keys()
    for k in full:
        assert torch.equal(full[k], resumed[k]), k
    log = (tmp_path / "part" / "log.csv").read_text().splitlines()
    assert log[0].startswith("epoch,loss") and len(log) == 3


def test_training_reduces_loss_and_refuses_to_overwrite(tiny_camvid, tmp_path):
    cfg = TrainConfig(data=str(tiny_camvid), out=str(tmp_path / "r"), **{**FAST, "epochs": 6, "limit": 8, "batch_size": 4})
    hist = train(cfg)["history"]
    assert hist[-1]["loss"] < hist[0]["loss"]
    with pytest.raises(EdgesegError, match="--resume"):
        train(cfg)
    assert not (tmp_path / "r" / "best.pt").exists()  # best.pt needs a validation split


def test_validation_fits_frames_to_the_size_divisor(camvid, tmp_path):
    """U-Net takes multiples of 16; CamVid's 360x480 frames (here 90x120) are resized for validation, not refused."""
    data = shrink_camvid(camvid, tmp_path / "d", n_train=4, n_val=2, size=(90, 120))
    res = train(TrainConfig(data=str(data), out=str(tmp_path / "r"), arch="unet", model_options={"width": 8}, epochs=1,
                            batch_size=2, crop=(64, 96)))
    assert create("unet", 11).size_divisor == 16 and 0 <= res["history"][-1]["val_miou"] <= 1
    assert (tmp_path / "r" / "best.pt").is_file()


def test_checkpoint_errors(tmp_path, tiny_camvid):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(EdgesegError, match="bad.pt: not a readable edgeseg checkpoint"):
        checkpoint.load_record(str(bad))
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(EdgesegError, match="not an edgeseg checkpoint"):
        checkpoint.load_record(str(tmp_path / "plain.pt"))
    from edgeseg.data import CAMVID
    rec = checkpoint.model_record(create("sfnet", 11, fpn_dim=32), CAMVID)
    rec["num_classes"] = 5  # weights of 11 classes claimed as 5
    with pytest.raises(EdgesegError, match="do not fit sfnet with 5 classes"):
        checkpoint.build_model(rec)
    # a record that would need unpickling code is refused by weights_only loading
    torch.save({"format": checkpoint.FORMAT, "obj": TrainConfig("a", "b", "c")}, tmp_path / "code.pt")
    with pytest.raises(EdgesegError, match="not a readable"):
        checkpoint.load_record(str(tmp_path / "code.pt"))


@pytest.mark.parametrize("weights", ["fp16", "int8"])
def test_compact_record_round_trip(tmp_path, weights):
    from edgeseg.data import CAMVID
    torch.manual_seed(0)
    model = create("sfnet", 11, fpn_dim=32).eval()
    checkpoint.save(checkpoint.model_record(model, CAMVID, weights=weights), tmp_path / "m.pt")
    loaded, rec = checkpoint.load_model(str(tmp_path / "m.pt"))
    for k, v in model.state_dict().items():  # per-channel int8: error below half a step of each channel
        tol = v.abs().amax() / 254 + 1e-6 if weights == "int8" and v.dim() >= 2 else v.abs().amax() * 1e-3 + 1e-6
        assert (loaded.state_dict()[k].float() - v.float()).abs().max() <= tol, k
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    assert (a.argmax(1) == b.argmax(1)).float().mean() > 0.95
    assert checkpoint.classes_of(rec) == CAMVID


def test_poly_schedule():
    assert poly_lr(0, 100, 1.0, warmup=10) == pytest.approx(0.1)
    assert poly_lr(10, 100, 1.0, warmup=10) == pytest.approx(1.0)
    assert poly_lr(100, 100, 1.0, warmup=10) == pytest.approx(0.0)
    assert poly_lr(55, 100, 1.0, warmup=10) == pytest.approx(0.5 ** 0.9)


def test_ddp_two_gloo_processes(tiny_camvid, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "edgeseg", "train", "--arch", "sfnet", "--opt", "fpn_dim=32", "--data", str(tiny_camvid), "--out", str(out),
           "--epochs", "1", "--batch-size", "2", "--crop", "64x96", "--val-split", "", "--limit", "8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 0 and state["history"][0]["loss"] > 0
    assert "epoch 1/1: loss " in res.stdout  # the main process alone prints
    # 8 images over 2 processes of batch 2: 2 steps each, so the schedule spans 2 steps and the last one is step 1
    cfg = state["config"]
    warmup = int(cfg["warmup_epochs"] * 2)
    assert state["history"][0]["lr"] == pytest.approx(poly_lr(1, 2, cfg["lr"], warmup))
    assert state["history"][0]["lr"] != pytest.approx(poly_lr(3, 4, cfg["lr"], int(cfg["warmup_epochs"] * 4)))


def test_resume_keeps_the_saved_settings_and_falls_back_to_the_previous_epoch(tiny_camvid, tmp_path, capsys):
    from edgeseg.train.loop import _load_resume

    out = tmp_path / "run"
    cfg = dict(data=str(tiny_camvid), out=str(out), **{**FAST, "limit": 2})
    train(TrainConfig(stop_after=1, **cfg))
    printed = capsys.readouterr().out
    assert "epoch 1/2: loss " in printed  # one line per epoch where stderr is not a terminal
    assert "stopped after epoch 1/2 (--stop-after 1); continue with the same command plus --resume" in printed
    assert (out / "log.csv").read_text().splitlines()[0] == "epoch,loss,lr,seconds,val_miou_percent"
    with pytest.raises(EdgesegError, match=r"--resume: .*last.pt was trained with other settings \(--lr 0.001 -> 0.002\)"):
        train(TrainConfig(**{**cfg, "lr": 2e-3}), resume=True, given={"lr": "--lr"})
    stale = out / ".last.pt.tmp999999999"  # left by a killed process (no such PID)
    stale.write_bytes(b"partial")
    train(TrainConfig(**{**cfg, "lr": 2e-3}), resume=True, given={})  # --lr not given: the saved one is kept
    assert "resuming with the run's saved settings: --lr 0.001" in capsys.readouterr().out
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and state["config"]["lr"] == 1e-3 and not stale.exists()
    assert torch.load(out / "last.prev.pt", weights_only=True)["epoch"] == 0  # kept until the new one was durable
    (out / "last.pt").write_bytes((out / "last.pt").read_bytes()[:1000])  # torn by a crash
    state, source = _load_resume(out)
    assert source.name == "last.prev.pt" and state["epoch"] == 0
    assert "last.pt: not a readable edgeseg checkpoint" in capsys.readouterr().out


def test_bad_settings_and_files_are_one_line(tiny_camvid, tmp_path):
    with pytest.raises(EdgesegError, match="--epochs 0: must be a positive number"):
        train(TrainConfig(data=str(tiny_camvid), out=str(tmp_path / "a"), **{**FAST, "epochs": 0}))
    weights = tmp_path / "w.json"
    weights.write_bytes(bytes(range(256)))  # a binary file
    with pytest.raises(EdgesegError, match="--class-weights .*w.json: not 'none', 'mfb' or a readable JSON list"):
        train(TrainConfig(data=str(tiny_camvid), out=str(tmp_path / "b"), class_weights=str(weights), **FAST))
    out = tmp_path / "c"
    out.mkdir()
    (out / "last.pt").write_bytes(b"")
    with pytest.raises(EdgesegError, match="last.pt: the file is empty"):
        train(TrainConfig(data=str(tiny_camvid), out=str(out), **FAST), resume=True)
    torch.save({"format": "something else"}, out / "last.pt")
    with pytest.raises(EdgesegError, match="last.pt: not an edgeseg training state"):
        train(TrainConfig(data=str(tiny_camvid), out=str(out), **FAST), resume=True)


def test_init_fine_tunes_the_whole_shipped_model(tiny_camvid, tmp_path, capsys):
    """--init demo starts every layer from the shipped model (stored in fp16): at a learning rate too small to move
    them, the weights after an epoch are the shipped ones; a model of another architecture is one line."""
    from edgeseg.cli import main

    common = ["train", "--data", str(tiny_camvid), "--epochs", "1", "--batch-size", "2", "--crop", "64x96",
              "--limit", "2", "--val-split", "", "--lr", "1e-12", "--init", "demo"]
    assert main([*common, "--arch", "sfnet", "--opt", "backbone=mobilenetv2", "--out", str(tmp_path / "ft")]) == 0
    assert "demo.pt -> sfnet (whole network): loaded 397 of 397 tensors" in capsys.readouterr().out
    shipped = checkpoint.load_model("demo")[0].state_dict()
    tuned = _weights(tmp_path / "ft" / "last.pt")
    convs = [k for k in shipped if k.endswith(".weight") and shipped[k].dim() == 4]
    assert len(convs) > 50 and all(torch.allclose(tuned[k].float(), shipped[k], atol=1e-6) for k in convs)
    assert main([*common, "--arch", "fcn8s", "--out", str(tmp_path / "fcn")]) == 2
    assert capsys.readouterr().err.strip() == ("edgeseg train: error: --init demo: a trained sfnet, not fcn8s; train "
                                              "--arch sfnet, or start fcn8s's encoder from it with --pretrained")
    assert main([*common, "--arch", "sfnet", "--pretrained", "imagenet", "--out", str(tmp_path / "both")]) == 2
    assert "--init and --pretrained: give one" in capsys.readouterr().err
    assert not (tmp_path / "fcn").exists() and not (tmp_path / "both").exists()


def test_a_bad_label_read_by_a_worker_process_is_one_line(tiny_camvid, tmp_path):
    import shutil

    import numpy as np

    data = shutil.copytree(tiny_camvid, tmp_path / "data")
    label = sorted((data / "labels" / "train").iterdir())[0]
    import cv2

    cv2.imwrite(str(label), np.full(cv2.imread(str(label), cv2.IMREAD_UNCHANGED).shape, 200, np.uint8))
    with pytest.raises(EdgesegError) as e:
        train(TrainConfig(data=str(data), out=str(tmp_path / "r"), workers=2, **{**FAST, "limit": 8, "batch_size": 4}))
    assert "\n" not in str(e.value) and "label value 200 is out of range" in str(e.value)
