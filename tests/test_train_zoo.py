"""bench/train_zoo.py: every zoo architecture has a place in its order, a finished run is skipped, a cut one resumed."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from edgeseg.models import available

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("train_zoo", ROOT / "bench" / "train_zoo.py")
train_zoo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train_zoo)


def test_every_architecture_is_trained_once():
    assert sorted(set(train_zoo.ORDER) | set(train_zoo.SHIPPED)) == sorted(available())
    assert len(set(train_zoo.ORDER)) == len(train_zoo.ORDER) and not set(train_zoo.ORDER) & set(train_zoo.SHIPPED)


def test_context_unit_runs_train_their_architecture_with_the_unit():
    cmd = train_zoo.recipe("deeplabv3-gcu", type("A", (), {"data": "D", "epochs": 5, "crop": "192x256"}))
    assert cmd[:2] == ["--arch", "deeplabv3"] and cmd[-2:] == ["--opt", "context=gcu"]
    assert "backbone=mobilenetv2" in cmd and len(train_zoo.CONTEXT_UNITS) == 4


def _zoo(tiny_camvid, runs, *extra):
    return subprocess.run([sys.executable, str(ROOT / "bench" / "train_zoo.py"), "--data", str(tiny_camvid),
                           "--runs", str(runs), "--arch", "espnet_c", "--crop", "64x96", *extra],
                          capture_output=True, text=True, timeout=600)


def test_a_run_is_trained_then_skipped_then_resumed(tiny_camvid, tmp_path):
    first = _zoo(tiny_camvid, tmp_path, "--epochs", "1")
    assert first.returncode == 0, first.stderr[-2000:]
    run = tmp_path / "espnet_c"
    assert train_zoo.epochs_done(run) == 1 and (run / "best.pt").is_file()
    assert f"--model {tmp_path / 'espnet_c.pt'}" in first.stdout and (tmp_path / "espnet_c.pt").resolve() == run / "best.pt"
    again = _zoo(tiny_camvid, tmp_path, "--epochs", "1")
    assert again.returncode == 0 and "espnet_c: done (1 epochs" in again.stdout
    # a longer schedule for a finished run is a changed setting: edgeseg train refuses to resume it
    longer = _zoo(tiny_camvid, tmp_path, "--epochs", "2")
    assert longer.returncode != 0 and "trained with other settings (--epochs 1 -> 2" in longer.stderr
