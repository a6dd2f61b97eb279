"""Checkpoints: the model's recipe (arch, hparams, classes, normalisation) beside its weights.

Loaded with torch.load(weights_only=True): tensors, numbers, strings, lists and dicts only, nothing that runs code.
"""
from __future__ import annotations

from pathlib import Path

import torch

from edgeseg.data.classes import ClassInfo
from edgeseg.errors import EdgesegError
from edgeseg.fileio import atomic_path
from edgeseg.meta import IMAGENET_MEAN, IMAGENET_STD
from edgeseg.models.registry import create

FORMAT = "edgeseg-checkpoint-1"
ZOO_DIR = Path(__file__).resolve().parent.parent / "zoo"
SHIPPED = {"demo": ZOO_DIR / "demo.pt"}


def model_record(model, classes: ClassInfo, mean=IMAGENET_MEAN, std=IMAGENET_STD, train_size=None, weights: str = "fp32") -> dict:
    """weights: fp32, fp16, or int8 (conv/linear weights as per-output-channel symmetric int8 with fp32 scales,
    the rest fp16): a compact file to ship; loading dequantizes to fp32."""
    state, scales = {}, {}
    for k, v in model.state_dict().items():
        if weights == "int8" and v.is_floating_point() and v.dim() >= 2:
            scale = v.abs().amax(dim=tuple(range(1, v.dim())), keepdim=True).clamp(min=1e-12) / 127
            state[k], scales[k] = torch.round(v / scale).to(torch.int8), scale.float()
        elif weights in ("fp16", "int8") and v.is_floating_point():
            state[k] = v.half()
        else:
            state[k] = v
    rec = {"format": FORMAT, "arch": model.arch, "num_classes": model.num_classes, "hparams": dict(model.hparams),
           "classes": classes.to_dict(), "mean": list(mean), "std": list(std), "train_size": train_size,
           "state_dict": state}
    if scales:
        rec["int8_scales"] = scales
    return rec


def save(record: dict, path: str | Path) -> None:
    """Atomic: a killed process leaves the previous file intact."""
    with atomic_path(path) as tmp:
        torch.save(record, tmp)


def resolve(name_or_path: str) -> Path:
    if name_or_path in SHIPPED:
        return SHIPPED[name_or_path]
    path = Path(name_or_path)
    if not path.is_file():
        raise EdgesegError(f"{name_or_path}: no such checkpoint; give a .pt file or a shipped model ({', '.join(SHIPPED)})")
    return path


def load_record(name_or_path: str) -> dict:
    path = resolve(name_or_path)
    try:
        rec = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated / foreign files
        raise EdgesegError(f"{path}: not a readable edgeseg checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                           f"use a file written by `edgeseg train`")
    if not isinstance(rec, dict) or rec.get("format") != FORMAT:
        raise EdgesegError(f"{path}: not an edgeseg checkpoint (no '{FORMAT}' record); use a file written by `edgeseg train`, "
                           f"or pass plain backbone weights with --pretrained")
    return rec


def build_model(rec: dict, source: str = "checkpoint"):
    """Rebuild the model of a record and load its weights (as float32, dequantized if stored as int8)."""
    model = create(rec["arch"], rec["num_classes"], **rec["hparams"])
    scales = rec.get("int8_scales", {})
    state = {k: v.float() * scales[k] if k in scales else v.float() if v.is_floating_point() else v
             for k, v in rec["state_dict"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise EdgesegError(f"{source}: weights do not fit {rec['arch']} with {rec['num_classes']} classes "
                           f"({str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else e})")
    return model.eval()


def load_model(name_or_path: str):
    """(model, record) from a checkpoint path or a shipped model name."""
    rec = load_record(name_or_path)
    return build_model(rec, str(resolve(name_or_path))), rec


def classes_of(rec: dict) -> ClassInfo:
    return ClassInfo.from_dict(rec["classes"])
