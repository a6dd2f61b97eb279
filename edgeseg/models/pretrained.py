"""Load a user's pretrained weights (torchvision/timm ResNet or MobileNetV2, MiT/SegFormer, EfficientNet-Lite, an
edgeseg checkpoint, or `imagenet`: the backbone's ImageNet file found on this machine) into a model's encoder, or a
trained edgeseg model into the whole network (fine-tuning), matching keys by name and reporting what did and did not
load."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from edgeseg.errors import EdgesegError

WRAPPERS = ("state_dict", "model", "model_state_dict")  # {"state_dict": {...}} and the like
PREFIXES = ("module.", "backbone.", "encoder.", "model.")  # DataParallel, mmseg/timm wrappers, edgeseg's own
CLASSIFIER = ("fc.", "classifier.", "head.")  # ImageNet heads: never wanted by a segmentation encoder


@dataclass
class LoadReport:
    path: str
    target: str
    total: int  # tensors in the encoder's state dict
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # the encoder's tensors the file did not provide
    unexpected: list[str] = field(default_factory=list)  # the file's tensors the encoder has no place for
    # same name, other shape: (file's, model's); left as initialised
    mismatched: dict[str, tuple] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # classifier and other known-unused tensors

    def __str__(self) -> str:
        lines = [f"pretrained {self.path} -> {self.target}: loaded {len(self.loaded)} of {self.total} tensors"]
        mismatched = [f"{k} {list(a)} vs {list(b)}" for k, (a, b) in self.mismatched.items()]
        for name, keys in (("missing", self.missing), ("shape mismatch", mismatched),
                           ("unexpected", self.unexpected), ("skipped", self.skipped)):
            if keys:
                shown = ", ".join(keys[:6]) + (f", ... ({len(keys) - 6} more)" if len(keys) > 6 else "")
                lines.append(f"  {name} ({len(keys)}): {shown}")
        return "\n".join(lines)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a torch.save'd state dict (unwrapping {"state_dict": ...} / {"model": ...}), safely loaded."""
    path = Path(path)
    if not path.is_file():
        raise EdgesegError(f"{path}: no such file; pass a .pt/.pth state dict")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- pickle, zip and weights_only errors all mean the same to the user
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise EdgesegError(f"{path}: not a PyTorch state dict ({first}); "
                           "pass a file saved with torch.save(model.state_dict(), ...)") from None
    scales = {}
    while isinstance(obj, dict) and any(isinstance(obj.get(w), dict) for w in WRAPPERS):
        scales = obj.get("int8_scales", {})  # an edgeseg checkpoint with compact int8 weights
        obj = next(obj[w] for w in WRAPPERS if isinstance(obj.get(w), dict))
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
    tensors.update({k: tensors[k].float() * s for k, s in scales.items() if k in tensors})
    if not tensors:
        raise EdgesegError(f"{path}: holds no state dict (a {type(obj).__name__} without tensors); "
                           "pass a file saved with torch.save(model.state_dict(), ...)")
    return tensors


def _strip(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for p in PREFIXES:
            if key.startswith(p):
                key, stripped = key[len(p):], True
    return key


def resolve(model: nn.Module, path: str | Path, backbone: str | None = None) -> Path:
    """`path` itself, or for "imagenet" the checked ImageNet file of the model's backbone (`backbone`, by default
    the SegModel's `backbone` option)."""
    if str(path) != "imagenet":
        return Path(path)
    from edgeseg.models.weights import IMAGENET, resolve_imagenet

    backbone = backbone or getattr(model, "hparams", {}).get("backbone")
    if backbone is None:
        raise EdgesegError(f"--pretrained imagenet: {getattr(model, 'arch', type(model).__name__)} has no backbone "
                           f"with ImageNet weights; backbones with them: {', '.join(sorted(IMAGENET))}")
    return resolve_imagenet(backbone)


def load_pretrained(model: nn.Module, path: str | Path, backbone: str | None = None) -> LoadReport:
    """Load the weights in `path` into `model.encoder` (a SegModel) or into `model` itself (a backbone).

    `path` "imagenet" loads the backbone's ImageNet file from where it is installed (see weights.py). Tensors
    whose name (after the known prefixes are stripped) and shape match are copied; the rest is reported (print
    the returned report). A file from which nothing matches is an error: it is for another network.
    """
    path = resolve(model, path, backbone)
    target = getattr(model, "encoder", model)
    state = {_strip(k): v for k, v in read_state_dict(path).items()}
    if hasattr(target, "remap_state_dict"):  # other libraries' names for the same network
        state = target.remap_state_dict(state)
    skip = CLASSIFIER + getattr(target, "pretrained_skip", ())
    report = LoadReport(str(path), f"{type(target).__name__} encoder", len(target.state_dict()))
    if not _copy_matching(target, state, skip, report):
        example = ", ".join(list(state)[:3])
        raise EdgesegError(f"{path}: none of its {len(state)} tensors (e.g. {example}) fits the "
                           f"{type(target).__name__} encoder; pass weights of that backbone")
    return report


def load_trained(model: nn.Module, name_or_path: str) -> LoadReport:
    """Start `model` from a trained edgeseg model of the same architecture (a checkpoint, or a shipped name such as
    demo), to fine-tune it: every tensor whose name and shape match is copied; a head for another number of classes
    stays as initialised (reported as a shape mismatch)."""
    from edgeseg.models import checkpoint

    trained, rec = checkpoint.load_model(name_or_path)  # float32, whatever precision the file stores
    arch = getattr(model, "arch", type(model).__name__)
    if rec["arch"] != arch:
        raise EdgesegError(f"--init {name_or_path}: a trained {rec['arch']}, not {arch}; train --arch {rec['arch']}, "
                           f"or start {arch}'s encoder from it with --pretrained")
    report = LoadReport(str(checkpoint.resolve(name_or_path)), f"{arch} (whole network)", len(model.state_dict()))
    if not _copy_matching(model, trained.state_dict(), (), report):
        raise EdgesegError(f"--init {name_or_path}: none of its tensors fits {arch} with these --opt options; "
                           f"give the options it was trained with ({rec['hparams']})")
    return report


def _copy_matching(target: nn.Module, state: dict[str, torch.Tensor], skip: tuple, report: LoadReport) -> bool:
    """Copy the tensors of `state` whose name and shape match into `target`, recording the rest in `report`;
    False when none matched."""
    own = target.state_dict()
    accepted = {}
    for k, v in state.items():
        if k.startswith(skip):
            report.skipped.append(k)
        elif k not in own:
            report.unexpected.append(k)
        elif v.shape != own[k].shape:
            report.mismatched[k] = (tuple(v.shape), tuple(own[k].shape))
        else:
            accepted[k] = v
            report.loaded.append(k)
    if not accepted:
        return False
    target.load_state_dict(accepted, strict=False)
    # num_batches_tracked only counts BN updates; older checkpoints lack it and nothing depends on it
    report.missing = [k for k in own if k not in accepted and k not in report.mismatched
                      and not k.endswith("num_batches_tracked")]
    return True
