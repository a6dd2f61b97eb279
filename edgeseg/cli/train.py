"""`edgeseg train`: train a zoo model on CamVid-format or image+mask folders."""
from __future__ import annotations

import json

HELP = "train a zoo architecture (single process, or DDP under torchrun); resumable"


def _size(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    return int(h), int(w or h)


def _options(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def add_arguments(p) -> None:
    p.add_argument("--arch", required=True, help="architecture (see `edgeseg zoo`)")
    p.add_argument("--data", required=True, help="data folder: images/<split>, labels/<split> (+ classes.json)")
    p.add_argument("--out", required=True, help="run folder: last.pt (every epoch), best.pt, log.csv")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE", help="model option, e.g. backbone=resnet50")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=8, help="per process")
    p.add_argument("--crop", type=_size, default=(256, 320), metavar="HxW")
    p.add_argument("--optimizer", choices=["sgd", "adamw"], default="adamw")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-2)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--class-weights", default="none", help="none, mfb (median-frequency balancing) or a JSON list file")
    p.add_argument("--ohem", type=float, default=None, metavar="THRESH", help="online hard example mining threshold, e.g. 0.7")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="disable mixed precision (fp16 on GPU, bf16 on CPU)")
    p.add_argument("--workers", type=int, default=0, help="data loader processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-split", default="val", help="evaluated every --val-every epochs ('' to skip)")
    p.add_argument("--val-every", type=int, default=5)
    p.add_argument("--pretrained", default=None, metavar="FILE", help="backbone state dict (torchvision/timm names are mapped)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    p.add_argument("--stop-after", type=int, default=None, metavar="N", help="run N epochs now, then stop (continue with --resume)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training images (smoke runs)")


def run(args) -> int:
    from edgeseg.train.loop import TrainConfig, train

    cfg = TrainConfig(arch=args.arch, data=args.data, out=args.out, model_options=_options(args.opt), epochs=args.epochs,
                      batch_size=args.batch_size, crop=args.crop, optimizer=args.optimizer, lr=args.lr,
                      weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs, class_weights=args.class_weights,
                      ohem=args.ohem, amp=args.amp, workers=args.workers, seed=args.seed, val_split=args.val_split or None,
                      val_every=args.val_every, pretrained=args.pretrained, limit=args.limit,
                      stop_after=args.stop_after)
    result = train(cfg, resume=args.resume)
    if result["best_miou"] >= 0:
        print(f"best val mIoU {100 * result['best_miou']:.2f} -> {args.out}/best.pt")
    return 0
