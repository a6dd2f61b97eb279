"""The training loop: single process or DDP under torchrun; resumable epoch by epoch.

Randomness is a pure function of (seed, epoch, sample), so a resumed run repeats an uninterrupted one exactly.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from edgeseg.data import SegFolder, TrainTransform
from edgeseg.errors import EdgesegError
from edgeseg.evaluate import evaluate
from edgeseg.fileio import remove_stale_temporaries, write_text
from edgeseg.models import checkpoint, create
from edgeseg.progress import on_terminal, progress_bar
from edgeseg.runtime.backends.pytorch import TorchBackend
from edgeseg.train.losses import median_frequency_weights, training_loss
from edgeseg.train.schedule import poly_lr


@dataclass
class TrainConfig:
    arch: str
    data: str
    out: str
    model_options: dict = field(default_factory=dict)
    epochs: int = 100
    batch_size: int = 8
    crop: tuple = (256, 320)
    scale: tuple = (0.5, 2.0)
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-2
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    class_weights: str = "none"  # none | mfb | a JSON file with one weight per class
    ohem: float | None = None
    amp: bool = True
    channels_last: bool = True
    workers: int = 0
    seed: int = 0
    val_split: str | None = "val"
    val_every: int = 5
    train_split: str = "train"
    pretrained: str | None = None
    init: str | None = None  # a trained model of the same architecture to start the whole network from
    limit: int | None = None  # use only the first N training images (smoke tests)
    stop_after: int | None = None  # epochs to run in this invocation (time-boxed jobs; continue with resume)


class EpochSamples(torch.utils.data.Dataset):
    def __init__(self, folder: SegFolder, transform: TrainTransform, seed: int, epoch: int, indices: np.ndarray):
        self.folder, self.transform, self.seed, self.epoch, self.indices = folder, transform, seed, epoch, indices

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, k):
        i = int(self.indices[k])
        img, lab = self.folder[i]
        x, y = self.transform(img, lab, np.random.default_rng([self.seed, self.epoch, i]))
        return torch.from_numpy(x), torch.from_numpy(y)


def _dist_info():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))


def _class_weights(cfg: TrainConfig, folder: SegFolder) -> torch.Tensor | None:
    c = folder.classes
    if cfg.class_weights == "none":
        return None
    if cfg.class_weights == "mfb":
        return torch.from_numpy(median_frequency_weights(folder, c.num_classes, c.ignore_index))
    try:
        w = json.loads(Path(cfg.class_weights).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EdgesegError(f"--class-weights {cfg.class_weights}: not 'none', 'mfb' or a readable JSON list "
                           f"({str(e).splitlines()[0][:100]})") from None
    if not isinstance(w, list) or not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in w):
        raise EdgesegError(f"--class-weights {cfg.class_weights}: expected a JSON list of non-negative numbers, one per class")
    if len(w) != c.num_classes:
        raise EdgesegError(f"--class-weights {cfg.class_weights}: {len(w)} weights for {c.num_classes} classes")
    return torch.tensor(w, dtype=torch.float32)


def _autocast(device: torch.device, enabled: bool):
    if not enabled:
        return torch.autocast(device.type, enabled=False)
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return torch.autocast("cpu", dtype=torch.bfloat16)


# the options a resumed run must share with the run it continues, as the command line names them
RESUME_OPTIONS = {"data": "--data", "model_options": "--opt", "epochs": "--epochs", "batch_size": "--batch-size",
                  "crop": "--crop", "optimizer": "--optimizer", "lr": "--lr", "weight_decay": "--weight-decay",
                  "warmup_epochs": "--warmup-epochs", "class_weights": "--class-weights", "ohem": "--ohem",
                  "amp": "--no-amp", "seed": "--seed", "val_split": "--val-split", "val_every": "--val-every",
                  "pretrained": "--pretrained", "init": "--init", "limit": "--limit"}


def _check_config(cfg: TrainConfig) -> None:
    for name, value, ok in (("--epochs", cfg.epochs, cfg.epochs >= 1), ("--batch-size", cfg.batch_size, cfg.batch_size >= 1),
                            ("--lr", cfg.lr, math.isfinite(cfg.lr) and cfg.lr > 0),
                            ("--val-every", cfg.val_every, cfg.val_every >= 1)):
        if not ok:
            raise EdgesegError(f"{name} {value}: must be a positive number")
    if cfg.init and cfg.pretrained:
        raise EdgesegError("--init and --pretrained: give one (--init starts the whole network, --pretrained its encoder)")


def _load_resume(out: Path) -> tuple[dict, Path] | None:
    """The newest readable training state in `out`: last.pt, else (torn by a crash) the last.prev.pt kept beside it."""
    last, prev = out / "last.pt", out / "last.prev.pt"
    if not last.exists():
        return (checkpoint.load_state(prev), prev) if prev.exists() else None
    try:
        return checkpoint.load_state(last), last
    except EdgesegError as e:
        if not prev.exists():
            raise
        print(f"{e}\nresuming from the previous epoch's {prev} instead")
        return checkpoint.load_state(prev), prev


def _adopt_saved_config(cfg: TrainConfig, saved: dict, source: Path, given: dict | None) -> None:
    """A resumed run continues with the settings it was started with: options left at their default take the
    saved value; options given with another value stop the run with a one-line diff."""
    mine = _jsonable(asdict(cfg))
    changed, adopted = [], []
    for key, flag in RESUME_OPTIONS.items():
        if key not in saved or saved[key] == mine[key]:
            continue
        if key == "data" and Path(saved[key]).resolve() == Path(mine[key]).resolve():
            continue
        if given is None or key in given:
            changed.append(f"{flag} {_shown(saved[key])} -> {_shown(mine[key])}")
        else:
            adopted.append(f"{flag} {_shown(saved[key])}")
            setattr(cfg, key, tuple(saved[key]) if key == "crop" else saved[key])
    if changed:
        raise EdgesegError(f"--resume: {source} was trained with other settings ({'; '.join(changed)}); drop those "
                           f"options to continue with the saved ones, or start a new run in another --out")
    if adopted:
        print(f"resuming with the run's saved settings: {', '.join(adopted)}")


def _shown(value) -> str:
    """A setting as it is written on the command line (a crop as HxW)."""
    return "x".join(map(str, value)) if isinstance(value, list) and len(value) == 2 else str(value)


def _worker_message(e: EdgesegError) -> str:
    """The user's one line from an error raised in a DataLoader worker (torch re-raises it wrapped in a traceback)."""
    found = re.findall(r"EdgesegError: (.+)", str(e))
    return found[-1].strip() if found else str(e)


def train(cfg: TrainConfig, resume: bool = False, given: dict | None = None) -> dict:
    """Train (or, with resume, continue) the run in cfg.out. `given`: the options set on the command line (others
    follow a resumed run's saved settings); None compares every option."""
    from edgeseg.outputs import check_output

    _check_config(cfg)
    world, rank, local_rank = _dist_info()
    main = rank == 0
    out = Path(cfg.out)
    last, prev = out / "last.pt", out / "last.prev.pt"
    check_output(out, "--out", folder=True, inputs=[cfg.data])
    existing = [p.name for p in (last, prev, out / "best.pt") if p.exists()]
    if existing and not resume:
        raise EdgesegError(f"{out} already holds a training run ({', '.join(existing)}); pass --resume to continue it "
                           f"or choose another --out")
    state = None
    if resume:
        found = _load_resume(out)
        if found is not None:
            state, source = found
            if state["config"].get("arch") != cfg.arch:
                raise EdgesegError(f"{source}: holds a {state['config'].get('arch')} run, not {cfg.arch}; choose another --out")
            _adopt_saved_config(cfg, state["config"], source, given)
            _check_config(cfg)
    if main and out.is_dir():
        remove_stale_temporaries(out)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")

    folder = SegFolder(cfg.data, cfg.train_split, cache=True)
    classes = folder.classes
    n = len(folder) if cfg.limit is None else min(cfg.limit, len(folder))
    per_rank_batches = n // (cfg.batch_size * world)
    if per_rank_batches == 0:
        raise EdgesegError(f"{cfg.data}: {n} training images is fewer than one batch of {cfg.batch_size} x {world} processes; lower --batch-size")
    val = SegFolder(cfg.data, cfg.val_split, cache=True) if cfg.val_split else None
    train_size = list(folder[0][1].shape)  # the images' size: what `edgeseg run` scales frames to by default

    torch.manual_seed(cfg.seed)
    model = create(cfg.arch, classes.num_classes, **cfg.model_options)
    if cfg.pretrained or cfg.init:
        from edgeseg.models.pretrained import load_pretrained, load_trained
        report = load_trained(model, cfg.init) if cfg.init else load_pretrained(model, cfg.pretrained)
        if main:
            print(report)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    weight = _class_weights(cfg, folder)
    weight = weight.to(device) if weight is not None else None
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
    elif cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        raise EdgesegError(f"--optimizer {cfg.optimizer}: choose sgd or adamw")
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and device.type == "cuda")

    start_epoch, best, history = 0, -1.0, []
    if state is not None:
        try:
            model.load_state_dict(state["model"]["state_dict"])
            opt.load_state_dict(state["optimizer"])
            if "scaler" in state:
                scaler.load_state_dict(state["scaler"])
        except (RuntimeError, KeyError, ValueError, TypeError) as e:
            raise EdgesegError(f"{source}: the saved model or optimizer state does not fit this run "
                               f"({type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}); "
                               f"choose another --out") from None
        start_epoch, best, history = state["epoch"] + 1, state["best_miou"], state["history"]
        if main:
            print(f"resuming {source} at epoch {start_epoch + 1}/{cfg.epochs}")
    elif resume and main:
        print(f"no checkpoint in {out}; starting from scratch")

    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    transform = TrainTransform(tuple(cfg.crop), classes.ignore_index, scale=tuple(cfg.scale))
    total = cfg.epochs * per_rank_batches
    warmup = int(cfg.warmup_epochs * per_rank_batches)
    # A progress bar on a terminal; in a log file (stdout redirected) one line per epoch instead.
    tty = main and on_terminal()
    bar = progress_bar(show=tty, total=total, initial=start_epoch * per_rank_batches, unit="it", dynamic_ncols=True)
    end_epoch = cfg.epochs if cfg.stop_after is None else min(cfg.epochs, start_epoch + cfg.stop_after)
    for epoch in range(start_epoch, end_epoch):
        torch.manual_seed(cfg.seed * 100_003 + epoch)  # dropout: a function of the epoch
        perm = np.random.default_rng([cfg.seed, epoch]).permutation(n)[: per_rank_batches * cfg.batch_size * world]
        loader = torch.utils.data.DataLoader(EpochSamples(folder, transform, cfg.seed, epoch, perm[rank::world]),
                                             batch_size=cfg.batch_size, num_workers=cfg.workers, drop_last=True,
                                             pin_memory=device.type == "cuda")
        net.train()
        t0, loss_sum = time.time(), 0.0
        for it, (x, y) in enumerate(_batches(loader)):
            step = epoch * per_rank_batches + it
            lr = poly_lr(step, total, cfg.lr, warmup)
            for g in opt.param_groups:
                g["lr"] = lr
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(device, cfg.amp):
                loss = training_loss(model, net(x), y, classes.ignore_index, weight, cfg.ohem)
            if not torch.isfinite(loss):
                raise EdgesegError(f"loss became {loss.item()} at epoch {epoch + 1}, step {it}; lower --lr (now {cfg.lr})")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            loss_sum += loss.item()
            bar.set_description(f"epoch {epoch + 1}/{cfg.epochs}")
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}")
            bar.update()
        row = {"epoch": epoch + 1, "loss": loss_sum / per_rank_batches, "lr": lr, "seconds": round(time.time() - t0, 1),
               "val_miou": None}
        is_last = epoch + 1 == cfg.epochs
        if main and val is not None and ((epoch + 1) % cfg.val_every == 0 or is_last):
            model.eval()
            m = evaluate(TorchBackend.for_module(model, device=str(device)), val, classes, size_divisor=model.size_divisor,
                         progress=False)
            row["val_miou"] = m["miou"]
            if tty:
                bar.write(f"epoch {epoch + 1}: val mIoU {100 * m['miou']:.2f} %")
            if m["miou"] > best:
                best = m["miou"]
                rec = checkpoint.model_record(model, classes, train_size=train_size)
                rec["metrics"] = {"val": m, "epoch": epoch + 1}
                checkpoint.save(rec, out / "best.pt")
        history.append(row)
        if main:
            if not tty:
                print(_epoch_line(row, cfg.epochs), flush=True)
            state = {"model": checkpoint.model_record(model, classes, train_size=train_size), "optimizer": opt.state_dict(),
                     "scaler": scaler.state_dict(), "epoch": epoch, "best_miou": best, "history": history,
                     "config": _jsonable(asdict(cfg))}
            checkpoint.save(state, last, previous=prev)  # the previous epoch's stays until this one is on disk
            _write_log(out / "log.csv", history)
    bar.close()
    if main and end_epoch < cfg.epochs:
        print(f"stopped after epoch {end_epoch}/{cfg.epochs} (--stop-after {cfg.stop_after}); continue with the same "
              f"command plus --resume")
    if world > 1:
        dist.destroy_process_group()
    return {"best_miou": best, "history": history}


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d))


def _batches(loader):
    """The loader's batches; a user error raised in a worker process comes out as its own one line."""
    try:
        yield from loader
    except EdgesegError as e:
        raise EdgesegError(_worker_message(e)) from None


def _epoch_line(row: dict, epochs: int) -> str:
    val = f", val mIoU {100 * row['val_miou']:.2f} %" if row["val_miou"] is not None else ""
    return f"epoch {row['epoch']}/{epochs}: loss {row['loss']:.4f}, lr {row['lr']:.2e}, {row['seconds']:.1f} s{val}"


def _write_log(path: Path, history: list[dict]) -> None:
    """log.csv: mIoU in percent, as the console prints it (the column says so)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["epoch", "loss", "lr", "seconds", "val_miou_percent"])
    w.writeheader()
    for r in history:
        miou = r.get("val_miou")
        w.writerow({"epoch": r["epoch"], "loss": round(r["loss"], 5), "lr": r["lr"], "seconds": r["seconds"],
                    "val_miou_percent": "" if miou is None else round(100 * miou, 2)})
    write_text(path, buf.getvalue())
