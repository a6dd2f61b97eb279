"""Checkpoints and shipped models exported to ONNX once, into the cache, for `demo`, `run --model NAME` and the
benchmarks: INT8 is calibrated on frames of the shipped CamVid clip.

Importing this module is lean (numpy, opencv); the export itself imports torch when it runs.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from edgeseg.errors import EdgesegError
from edgeseg.paths import cache_dir

CLIP = Path(__file__).resolve().parent / "zoo" / "camvid_clip.mp4"
CALIB_FRAMES = 32
VALIDATE_SIZE = (360, 480)  # the size exports are validated at, and the shipped model's training images' size


def calibration_frames(clip: Path, folder: Path, n: int = CALIB_FRAMES) -> Path:
    """n frames spread over the clip as PNGs (made once; a killed run leaves no half-filled folder)."""
    import cv2
    import numpy as np

    from edgeseg.fileio import remove_stale_temporaries
    from edgeseg.runtime.sources import read_video_frames

    if folder.is_dir() and len(list(folder.glob("*.png"))) == n:
        return folder
    frames = read_video_frames(clip)
    if len(frames) < n:
        raise EdgesegError(f"{clip}: {len(frames)} frames readable, the calibration needs {n}; reinstall edgeseg")
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder.parent)
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for k, i in enumerate(np.linspace(0, len(frames) - 1, n).round().astype(int)):
        cv2.imwrite(str(tmp / f"{k:03d}.png"), frames[i])
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def export_cached(model: str = "demo", precisions=("fp32", "int8"), progress: bool = True) -> tuple[dict[str, Path], dict]:
    """Export a checkpoint (or shipped name) to ONNX in the cache, INT8 calibrated on the demo clip; cached by
    edgeseg.export (same checkpoint and options -> no work). Returns ({precision: path}, export report)."""
    from edgeseg.export import export_model
    from edgeseg.fileio import remove_stale_temporaries, sha256_file
    from edgeseg.kernels import prefer_ort_cpu_op
    from edgeseg.models import checkpoint

    if model in checkpoint.SHIPPED and not checkpoint.SHIPPED[model].is_file():
        raise EdgesegError(f"the shipped model {model!r} is not in this install ({checkpoint.SHIPPED[model]}); "
                           f"reinstall edgeseg, or pass --model with a checkpoint from `edgeseg train`")
    src = checkpoint.resolve(model)
    checkpoint.load_record(model)  # a damaged or foreign file fails here in one line, not inside the export
    base = cache_dir("exports")
    frames = calibration_frames(CLIP, base / "calibration")
    precisions = tuple(p for p in ("fp32", "fp16", "int8") if p in {"fp32", *precisions})  # fp32 is always made
    out = base / "models" / f"{src.stem}-{sha256_file(src)[:12]}" / "+".join(precisions)
    remove_stale_temporaries(out)  # the staging folder (.export-<pid>) of a killed export
    flowwarp = prefer_ort_cpu_op()  # a model with flow warps then runs them through the CPU op
    report = export_model(model, out, precisions, progress=progress, data=str(frames), calib=str(frames),
                          calib_images=CALIB_FRAMES, guard=False, int8_target="cpu", sizes=(VALIDATE_SIZE,),
                          flowwarp_plugin="auto" if flowwarp else False)
    outputs = report["outputs"]
    paths = {p: Path((outputs.get(f"{p}-flowwarp") or outputs[p])["path"]) for p in precisions}
    return paths, report
