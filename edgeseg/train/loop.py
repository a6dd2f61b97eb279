"""The training loop: single process or DDP under torchrun; resumable epoch by epoch.

Randomness is a pure function of (seed, epoch, sample), so a resumed run repeats an uninterrupted one exactly.
"""
from __future__ import annotations

import csv
import io
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from edgeseg.data import SegFolder, TrainTransform
from edgeseg.errors import EdgesegError
from edgeseg.evaluate import evaluate
from edgeseg.fileio import write_json, write_text
from edgeseg.models import checkpoint, create
from edgeseg.models.predictor import TorchPredictor
from edgeseg.train.losses import median_frequency_weights, seg_loss
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
        w = json.loads(Path(cfg.class_weights).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EdgesegError(f"--class-weights {cfg.class_weights}: not 'none', 'mfb' or a readable JSON list ({e})")
    if len(w) != c.num_classes:
        raise EdgesegError(f"--class-weights {cfg.class_weights}: {len(w)} weights for {c.num_classes} classes")
    return torch.tensor(w, dtype=torch.float32)


def _autocast(device: torch.device, enabled: bool):
    if not enabled:
        return torch.autocast(device.type, enabled=False)
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return torch.autocast("cpu", dtype=torch.bfloat16)


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    world, rank, local_rank = _dist_info()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    main = rank == 0
    out = Path(cfg.out)
    last = out / "last.pt"
    if last.exists() and not resume:
        raise EdgesegError(f"{out} already holds a training run; pass --resume to continue it or choose another --out")

    folder = SegFolder(cfg.data, cfg.train_split, cache=True)
    classes = folder.classes
    n = len(folder) if cfg.limit is None else min(cfg.limit, len(folder))
    per_rank_batches = n // (cfg.batch_size * world)
    if per_rank_batches == 0:
        raise EdgesegError(f"{cfg.data}: {n} training images is fewer than one batch of {cfg.batch_size} x {world} processes; lower --batch-size")
    val = SegFolder(cfg.data, cfg.val_split, cache=True) if cfg.val_split else None

    torch.manual_seed(cfg.seed)
    model = create(cfg.arch, classes.num_classes, **cfg.model_options)
    if cfg.pretrained:
        from edgeseg.models.pretrained import load_pretrained
        report = load_pretrained(model, cfg.pretrained)
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
    if resume and last.exists():
        state = torch.load(last, map_location="cpu", weights_only=True)
        if state.get("config", {}).get("arch") != cfg.arch:
            raise EdgesegError(f"{last}: holds a {state.get('config', {}).get('arch')} run, not {cfg.arch}; choose another --out")
        model.load_state_dict(state["model"]["state_dict"])
        opt.load_state_dict(state["optimizer"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        start_epoch, best, history = state["epoch"] + 1, state["best_miou"], state["history"]
        if main:
            print(f"resuming {last} at epoch {start_epoch + 1}/{cfg.epochs}")
    elif resume and main:
        print(f"no checkpoint in {out}; starting from scratch")

    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    transform = TrainTransform(tuple(cfg.crop), classes.ignore_index, scale=tuple(cfg.scale))
    total = cfg.epochs * per_rank_batches
    warmup = int(cfg.warmup_epochs * per_rank_batches)
    bar = tqdm(total=total, initial=start_epoch * per_rank_batches, disable=not main, unit="it", dynamic_ncols=True)
    end_epoch = cfg.epochs if cfg.stop_after is None else min(cfg.epochs, start_epoch + cfg.stop_after)
    for epoch in range(start_epoch, end_epoch):
        torch.manual_seed(cfg.seed * 100_003 + epoch)  # dropout: a function of the epoch
        perm = np.random.default_rng([cfg.seed, epoch]).permutation(n)[: per_rank_batches * cfg.batch_size * world]
        loader = torch.utils.data.DataLoader(EpochSamples(folder, transform, cfg.seed, epoch, perm[rank::world]),
                                             batch_size=cfg.batch_size, num_workers=cfg.workers, drop_last=True,
                                             pin_memory=device.type == "cuda")
        net.train()
        t0, loss_sum = time.time(), 0.0
        for it, (x, y) in enumerate(loader):
            step = epoch * per_rank_batches + it
            lr = poly_lr(step, total, cfg.lr, warmup)
            for g in opt.param_groups:
                g["lr"] = lr
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(device, cfg.amp):
                out_ = net(x)
                logits, aux = out_ if isinstance(out_, tuple) else (out_, None)
                loss = seg_loss(logits, y, classes.ignore_index, weight, cfg.ohem)
                if aux is not None:
                    loss = loss + model.aux_weight * seg_loss(aux, y, classes.ignore_index, weight, cfg.ohem)
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
        row = {"epoch": epoch + 1, "loss": loss_sum / per_rank_batches, "lr": lr, "seconds": round(time.time() - t0, 1), "val_miou": None}
        is_last = epoch + 1 == cfg.epochs
        if main and val is not None and ((epoch + 1) % cfg.val_every == 0 or is_last):
            model.eval()
            m = evaluate(TorchPredictor(model, str(device)), val, classes, progress=False)
            row["val_miou"] = m["miou"]
            bar.write(f"epoch {epoch + 1}: val mIoU {100 * m['miou']:.2f}")
            if m["miou"] > best:
                best = m["miou"]
                rec = checkpoint.model_record(model, classes, train_size=list(cfg.crop))
                rec["metrics"] = {"val": m, "epoch": epoch + 1}
                checkpoint.save(rec, out / "best.pt")
        history.append(row)
        if main:
            state = {"model": checkpoint.model_record(model, classes, train_size=list(cfg.crop)), "optimizer": opt.state_dict(),
                     "scaler": scaler.state_dict(), "epoch": epoch, "best_miou": best, "history": history,
                     "config": _jsonable(asdict(cfg))}
            checkpoint.save(state, last)
            _write_log(out / "log.csv", history)
    bar.close()
    if world > 1:
        dist.destroy_process_group()
    return {"best_miou": best, "history": history}


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d))


def _write_log(path: Path, history: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(history[0]))
    w.writeheader()
    w.writerows(history)
    write_text(path, buf.getvalue())
