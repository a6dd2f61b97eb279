"""The models a bench measures: zoo architectures with random weights, trained checkpoints, shipped models, and
ONNX files that `edgeseg export` wrote (yours or adopted ones: measured as they are, at their own precision).

Every model becomes a checkpoint file (random-weight ones are written to the cache, named by their weights'
hash, so that the export cache recognises them across runs) from which the exports of each precision and the
PyTorch rows load it. The reference input and PyTorch fp32 labels of each size, against which every row's
output is checked, are cached beside them.
"""
from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from edgeseg.data import CAMVID, ClassInfo, normalize
from edgeseg.errors import EdgesegError


@dataclass
class Source:
    name: str  # what the table calls it: the arch, a shipped name or the checkpoint's file stem
    arch: str
    weights: str  # "random", "shipped", "checkpoint" or "onnx"
    checkpoint: Path
    size_divisor: int
    classes: ClassInfo
    mean: list[float]
    std: list[float]
    note: str = ""
    memo: dict = field(default_factory=dict)  # this run's exports, parameter and FLOP counts
    onnx: Path | None = None  # an exported file measured as it is (no PyTorch rows, no export)
    precision: str = "fp32"  # the file's precision, for an ONNX source

    @property
    def trained(self) -> bool:
        return self.weights != "random"


def _state_hash(state: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


def random_weights(arch: str, classes: ClassInfo, cache: Path) -> Path:
    """A checkpoint of `arch` with default options and seeded random weights (the same file on every run)."""
    import torch

    from edgeseg.models import checkpoint, create

    torch.manual_seed(0)
    model = create(arch, classes.num_classes).eval()
    path = cache / "weights" / f"{arch}-random-{_state_hash(model.state_dict())}.pt"
    if not path.exists():
        checkpoint.save(checkpoint.model_record(model, classes), path)
    return path


def _from_record(name: str, weights: str, path: Path, rec: dict, note: str = "") -> Source:
    from edgeseg.models import checkpoint
    from edgeseg.models.registry import model_class

    divisor = model_class(rec["arch"]).size_divisor
    return Source(name, rec["arch"], weights, path, divisor, checkpoint.classes_of(rec), list(rec["mean"]), list(rec["std"]), note)


def _from_onnx(model: str) -> Source:
    from edgeseg.export.graph import get_meta, load
    from edgeseg.meta import classes_of

    path = Path(model)
    if not path.is_file():
        raise EdgesegError(f"--model {model}: no such file")
    meta = get_meta(load(str(path)), str(path))
    inp = meta["input"]
    return Source(path.name[:-len(".onnx")], meta.get("arch") or path.stem, "onnx", path, int(inp.get("size_divisor") or 1),
                  classes_of(meta, str(path)), list(inp["mean"]), list(inp["std"]), f"{path.name} as exported",
                  onnx=path, precision=meta.get("precision", "fp32"))


def option_grid(items: list[str]) -> list[dict]:
    """`--opt KEY=V1,V2` items -> every combination of their values ([{}] for none)."""
    from edgeseg.models.registry import parse_options

    axes = []
    for item in items:
        key, eq, values = item.partition("=")
        if not eq or not key or not values:
            raise EdgesegError(f"--opt {item!r}: give KEY=VALUE or KEY=V1,V2, e.g. prune=1,2,3,4")
        axes.append([parse_options([f"{key}={v}"]) for v in values.split(",")])
    return [{k: v for d in combo for k, v in d.items()} for combo in itertools.product(*axes)]


def _with_options(src: Source, options: dict, cache: Path) -> Source:
    """The source under an architecture's inference options (UNet++'s prune=L), its checkpoint derived in the
    cache from the trained (or random) weights."""
    from edgeseg.models import checkpoint

    if not options:
        return src
    if src.onnx is not None:
        raise EdgesegError(f"--opt {next(iter(options))}: {src.onnx} is an exported graph; options apply to "
                           f"checkpoints and --arch")
    rec = checkpoint.with_options(checkpoint.load_record(str(src.checkpoint)), options, str(src.checkpoint))
    suffix = checkpoint.options_suffix(options)
    path = cache / "weights" / f"{src.arch}{suffix}-{_state_hash(rec['state_dict'])}.pt"
    if not path.exists():
        checkpoint.save(rec, path)
    return replace(src, name=src.name + suffix, checkpoint=path, memo={})


def resolve(archs: list[str], models: list[str], classes: ClassInfo | None, cache: Path,
            options: list[dict] | None = None) -> list[Source]:
    """Sources for `--arch` names (random weights; the shipped model of that arch instead when `classes` comes
    from --data and it fits them) and `--model` checkpoints or shipped names; with `options` (from option_grid),
    one source per combination."""
    from edgeseg.models import checkpoint

    sources = []
    shipped = {}
    if classes is not None:
        for name, path in checkpoint.SHIPPED.items():
            if path.exists():
                rec = checkpoint.load_record(name)
                if checkpoint.classes_of(rec).names == classes.names:
                    shipped.setdefault(rec["arch"], (name, path, rec))
    for arch in archs:
        if arch in shipped:
            name, path, rec = shipped[arch]
            sources.append(_from_record(arch, "shipped", path, rec, note=f"shipped `{name}` weights"))
        else:
            path = random_weights(arch, classes or CAMVID, cache)
            sources.append(_from_record(arch, "random", path, checkpoint.load_record(str(path))))
    for m in models:
        if m.lower().endswith(".onnx"):
            src = _from_onnx(m)
        else:
            path = checkpoint.resolve(m)
            rec = checkpoint.load_record(m)
            weights = "shipped" if m in checkpoint.SHIPPED else "checkpoint"
            src = _from_record(m if m in checkpoint.SHIPPED else path.stem, weights, path, rec)
        if classes is not None and src.classes.names != classes.names:
            raise EdgesegError(f"{m} predicts {src.classes.num_classes} classes but the --data folder has "
                               f"{classes.num_classes}; benchmark it on matching data or without --data")
        sources.append(src)
    return [_with_options(src, o, cache) for src in sources for o in options or [{}]]


def clip_frames(cache: Path) -> Path:
    """Frames of the shipped street clip as PNGs: what the export stage validates and calibrates on without data
    (real images: a trained model's int8 calibrated on noise disagrees with its fp32 on real frames)."""
    from edgeseg.export_cache import CLIP, calibration_frames

    return calibration_frames(CLIP, cache / "clip-frames")


def reference_image(data: Path | None, split: str, cache: Path) -> np.ndarray:
    """The image every row's output is checked on: the split's first image, or the shipped clip's first frame."""
    from edgeseg.data import SegFolder, read_image

    if data is not None:
        return SegFolder(data, split)[0][0]
    return read_image(sorted(clip_frames(cache).glob("*.png"))[0])


def reference(src: Source, image: np.ndarray, size: tuple[int, int], cache: Path) -> tuple[Path, Path | None]:
    """(input .npy [1,3,H,W], PyTorch fp32 labels .npy [H,W]) for this source and size, cached; an ONNX source has no
    PyTorch reference (None)."""
    import cv2

    h, w = size
    tag = hashlib.sha256(image.tobytes() + repr((src.mean, src.std, size)).encode()).hexdigest()[:12]
    x_path = cache / "inputs" / f"{h}x{w}-{tag}.npy"
    y_path = cache / "refs" / f"{src.checkpoint.stem}-{h}x{w}-{tag}.npy"
    if not x_path.exists():
        x = normalize(cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR), src.mean, src.std)[None]
        _save_npy(x_path, x)
    if src.onnx is not None:
        return x_path, None
    if not y_path.exists():
        import torch

        from edgeseg.models import checkpoint

        model, _ = checkpoint.load_model(str(src.checkpoint))
        with torch.inference_mode():
            y = model(torch.from_numpy(np.load(x_path))).argmax(1)[0].numpy().astype(np.int32)
        _save_npy(y_path, y)
    return x_path, y_path


def _save_npy(path: Path, arr: np.ndarray) -> None:
    from edgeseg.fileio import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, arr)
