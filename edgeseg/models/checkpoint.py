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
from edgeseg.models.registry import create, model_class

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


def save(record: dict, path: str | Path, previous: str | Path | None = None) -> None:
    """Atomic and durable: a killed process leaves the previous file intact. With `previous`, the file being
    replaced is kept under that name until the new one is on disk."""
    with atomic_path(path, keep=previous) as tmp:
        torch.save(record, tmp)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:120]}" if text else type(e).__name__


def read(path: Path) -> object:
    """torch.load(weights_only=True) of a file; any failure (empty, truncated, foreign, a pickle that would run
    code) is one line naming the file."""
    if path.stat().st_size == 0:
        raise EdgesegError(f"{path}: the file is empty (0 bytes), not a checkpoint; use a file written by `edgeseg train`")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated / foreign files
        raise EdgesegError(f"{path}: not a readable edgeseg checkpoint ({_first_line(e)}); "
                           f"use a file written by `edgeseg train`") from None


# key -> type every model record holds
RECORD_KEYS = {"arch": str, "num_classes": int, "hparams": dict, "classes": dict, "state_dict": dict}


def check_record(rec, source) -> dict:
    if not isinstance(rec, dict) or rec.get("format") != FORMAT:
        raise EdgesegError(f"{source}: not an edgeseg checkpoint (no '{FORMAT}' record); use a file written by `edgeseg train`, "
                           f"or pass plain backbone weights with --pretrained")
    bad = [k for k, t in RECORD_KEYS.items() if not isinstance(rec.get(k), t)]
    if bad:
        raise EdgesegError(f"{source}: the checkpoint record lacks or has a wrong {', '.join(bad)}; the file is damaged or "
                           f"was not written by `edgeseg train`")
    rec.setdefault("mean", list(IMAGENET_MEAN))
    rec.setdefault("std", list(IMAGENET_STD))
    return rec


def resolve(name_or_path: str) -> Path:
    if name_or_path in SHIPPED:
        return SHIPPED[name_or_path]
    path = Path(name_or_path)
    if not path.is_file():
        raise EdgesegError(f"{name_or_path}: no such checkpoint; give a .pt file or a shipped model ({', '.join(SHIPPED)})")
    return path


def load_record(name_or_path: str) -> dict:
    path = resolve(name_or_path)
    return check_record(read(path), path)


# key -> type of a training state (last.pt) besides its model record
STATE_KEYS = {"model": dict, "optimizer": dict, "epoch": int, "best_miou": float, "history": list, "config": dict}


def load_state(path: Path) -> dict:
    """A training state (last.pt) checked as far as resuming needs it; any problem is one line naming the file."""
    state = read(path)
    bad = [k for k, t in STATE_KEYS.items() if not isinstance(state, dict) or not isinstance(state.get(k), t)]
    if bad:
        raise EdgesegError(f"{path}: not an edgeseg training state (lacks or has a wrong {', '.join(bad)}); "
                           f"it is damaged or was not written by `edgeseg train`")
    check_record(state["model"], path)
    return state


def build_model(rec: dict, source: str = "checkpoint"):
    """Rebuild the model of a record and load its weights (as float32, dequantized if stored as int8)."""
    check_record(rec, source)
    try:
        model = create(rec["arch"], rec["num_classes"], **rec["hparams"])
    except TypeError as e:  # hparams the architecture does not take
        raise EdgesegError(f"{source}: the record's options do not fit {rec['arch']} ({e}); the file is damaged or from "
                           f"another edgeseg version") from None
    scales = rec.get("int8_scales", {})
    if not all(isinstance(v, torch.Tensor) for v in (*rec["state_dict"].values(), *scales.values())):
        raise EdgesegError(f"{source}: the checkpoint's weights are not all tensors; the file is damaged")
    state = {k: v.float() * scales[k] if k in scales else v.float() if v.is_floating_point() else v
             for k, v in rec["state_dict"].items()}
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as e:
        raise EdgesegError(f"{source}: weights do not fit {rec['arch']} with {rec['num_classes']} classes "
                           f"({str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else e})") from None
    return model.eval()


def with_options(rec: dict, options: dict, source: str = "checkpoint") -> dict:
    """The record of a trained model under options that change only the deployed network (the architecture's
    `inference_options`, e.g. UNet++'s prune=L): its weights are the tensors of the trained ones that network has."""
    if not options:
        return rec
    check_record(rec, source)
    allowed = model_class(rec["arch"]).inference_options
    bad = [k for k in options if k not in allowed]
    if bad:
        can = f"only {', '.join(allowed)} can" if allowed else "no option can"
        raise EdgesegError(f"--opt {bad[0]}={options[bad[0]]}: for a trained {rec['arch']} {can} change without "
                           f"retraining; train with `edgeseg train --opt` for other options")
    hparams = {**rec["hparams"], **options}
    keys = set(create(rec["arch"], rec["num_classes"], **hparams).state_dict())
    scales = rec.get("int8_scales", {})
    derived = {**rec, "hparams": hparams, "state_dict": {k: v for k, v in rec["state_dict"].items() if k in keys},
               "int8_scales": {k: v for k, v in scales.items() if k in keys}}
    model = build_model(derived, source)  # strict: every tensor of the derived network comes from the trained one
    derived.pop("int8_scales")
    return {**derived, "state_dict": {k: v.clone() for k, v in model.state_dict().items()}}


def options_suffix(options: dict) -> str:
    """What a derived network adds to its name: `-prune2` for prune=2."""
    return "".join(f"-{k}{v}" for k, v in options.items())


def load_model(name_or_path: str):
    """(model, record) from a checkpoint path or a shipped model name."""
    rec = load_record(name_or_path)
    return build_model(rec, str(resolve(name_or_path))), rec


def classes_of(rec: dict) -> ClassInfo:
    return ClassInfo.from_dict(rec["classes"])
