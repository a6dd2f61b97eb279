"""`edgeseg demo` end to end on a checkpoint made here: export fp32 + INT8 (calibrated on the clip), replay the
clip through both, overlay videos and the comparison table; the second run reuses the exported models."""
from __future__ import annotations

import json

import cv2
import pytest
from runtime_helpers import SIZE, camvid_frames, sfnet, write_video

from edgeseg import export_cache
from edgeseg.cli import demo, main
from edgeseg.data import CAMVID
from edgeseg.errors import EdgesegError
from edgeseg.models import checkpoint
from edgeseg.runtime.sources import read_video_frames


def test_the_shipped_clip_is_the_camvid_val_sequence(camvid):
    frames = read_video_frames(export_cache.CLIP)
    assert len(frames) == 101 and frames[0].shape == (360, 480, 3)
    cap = cv2.VideoCapture(str(export_cache.CLIP))
    assert cap.get(cv2.CAP_PROP_FPS) == 15
    first = cv2.imread(str(sorted((camvid / "images" / "val").iterdir())[0]))
    assert abs(frames[0].astype(int) - first).mean() < 6  # the same picture, after lossy encoding
    assert "CC BY-NC 4.0" in export_cache.CLIP.with_suffix(".txt").read_text()


@pytest.fixture()
def small_demo(camvid, tmp_path, monkeypatch):
    """A 36-frame clip at the test size, a cache in tmp, and a checkpoint with random SFNet weights."""
    clip = write_video(tmp_path / "clip.mp4", camvid_frames(camvid, 36), fps=30)
    monkeypatch.setattr(export_cache, "CLIP", clip)
    monkeypatch.setattr(export_cache, "VALIDATE_SIZE", SIZE)
    monkeypatch.setenv("EDGESEG_CACHE", str(tmp_path / "cache"))
    ckpt = tmp_path / "tiny.pt"
    checkpoint.save(checkpoint.model_record(sfnet(), CAMVID), ckpt)
    return ckpt


def test_demo_exports_once_and_compares_fp32_with_int8(small_demo, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["demo", "--model", str(small_demo), "--out", str(out), "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "| fp32 | ort-cpu |" in table and "| int8 | ort-cpu |" in table and "replayed at 30 FPS" in table
    summary = json.loads((out / "summary.json").read_text())
    for precision in ("fp32", "int8"):
        run = summary["runs"][precision]
        assert run["frames"] + run["dropped"] == 36 and run["precision"] == precision
        # frames dropped live are filled in: the video lasts as long as the run (36 frames at 30 FPS)
        assert run["frames"] <= len(read_video_frames(out / f"overlay_{precision}.mp4")) <= 36 + 3
    temporal = summary["runs"]["int8 + temporal auto"]  # the third row: INT8 on key frames, warped in between
    t = temporal["temporal"]
    assert t["key_frames"] >= 1 and t["key_frames"] + t["warped_frames"] == temporal["frames"]
    assert "| int8 + temporal auto | ort-cpu |" in table and "key frames" in table
    assert temporal["frames"] <= len(read_video_frames(out / "overlay_int8_temporal.mp4")) <= 36 + 3
    assert 0.5 < summary["export"]["int8_argmax_agreement"] <= 1
    models = list((tmp_path / "cache" / "exports" / "models").glob("*/fp32+int8"))
    assert len(models) == 1 and len(list((tmp_path / "cache" / "exports" / "calibration").glob("*.png"))) == 32
    stamp = (models[0] / "tiny.int8.onnx").stat().st_mtime_ns
    assert main(["demo", "--model", str(small_demo), "--out", str(out), "--every-frame", "--quiet"]) == 0
    assert (models[0] / "tiny.int8.onnx").stat().st_mtime_ns == stamp  # cached, not exported again
    runs = json.loads((out / "summary.json").read_text())["runs"]
    assert runs["int8"]["frames"] == runs["fp32"]["frames"] == 36 and runs["int8"]["dropped"] == 0


def test_run_takes_a_checkpoint_by_exporting_it_once(small_demo, tmp_path, capsys):
    clip = str(export_cache.CLIP)
    assert main(["run", "--model", str(small_demo), "--source", clip, "--json", str(tmp_path / "r.json"), "--quiet"]) == 0
    s = json.loads((tmp_path / "r.json").read_text())
    assert s["frames"] == 36 and s["model"].endswith("tiny.fp32.onnx") and s["precision"] == "fp32"
    assert s["warps"] in ("FlowWarp op", "GridSample")  # SFNet warps; the summary says which graph ran them
    # --precision chooses what a checkpoint is exported to
    assert main(["run", "--model", str(small_demo), "--precision", "int8", "--source", clip, "--json",
                 str(tmp_path / "q.json"), "--quiet"]) == 0
    s = json.loads((tmp_path / "q.json").read_text())
    assert s["precision"] == "int8" and ".int8" in s["model"]


def test_demo_errors(small_demo, tmp_path):
    with pytest.raises(EdgesegError, match="--precision 'fp16'"):
        demo.run(demo_args(tmp_path, precision="fp16"))
    with pytest.raises(EdgesegError, match="--json .*summary.json: is a folder"):
        (tmp_path / "o" / "summary.json").mkdir(parents=True)
        demo.run(demo_args(tmp_path))
    with pytest.raises(EdgesegError, match="missing.pt: no such checkpoint"):
        export_cache.export_cached(str(tmp_path / "missing.pt"))


def demo_args(tmp_path, **kw):
    import argparse

    p = argparse.ArgumentParser()
    demo.add_arguments(p)
    args = p.parse_args(["--out", str(tmp_path / "o")])
    vars(args).update(kw)
    return args
