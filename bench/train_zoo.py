"""Train every zoo architecture on CamVid with one short schedule, resumably, for the zoo's trained rows.

INT8's accuracy cannot be judged on random weights (their logits are nearly tied), so each architecture gets a
short run of `edgeseg train`: ImageNet MobileNetV2 encoders where the architecture takes one (`--pretrained
imagenet`), the paper's own encoder from scratch elsewhere. The schedule is the same for all and far from
converged: the rows compare INT8 with fp32 on trained weights and latency, not the architectures' best mIoU.

    python bench/train_zoo.py --data CAMVID --runs runs/zoo [--arch a,b] [--epochs 5] [--crop 192x256]

Architectures run cheapest first, then the GloRe and GCU context units as plug-in heads of FCN and DeepLabV3
(runs fcn8s-glore, fcn8s-gcu, deeplabv3-glore, deeplabv3-gcu), one `edgeseg train` process each (its run folder:
runs/zoo/<arch>, and runs/zoo/<arch>.pt a link to its best.pt); a finished run is skipped and an interrupted one resumed, so the
command can be repeated until all are done. Then

    edgeseg bench --model runs/zoo/<arch>.pt,... --backend ort-cpu --precision fp32,int8 --data CAMVID --out DIR

measures val mIoU fp32 / int8 and latency (the command is printed at the end, with the finished runs).
"""
from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from pathlib import Path

from edgeseg.models import available

# cheapest first, by the GFLOP at 360x480 of the trained configuration (MobileNetV2 encoders where used)
ORDER = ("espnet_c", "espnet", "deeplabv3plus", "fcn8s", "alignseg", "pspnet", "deeplabv3", "segformer",
         "maskformer", "mask2former", "deeplabv2", "segmenter", "setr", "u2netp", "unet", "segnet_basic",
         "deeplabv1", "unetpp", "u2net", "segnet")
# the architectures whose encoder can be torchvision's ImageNet MobileNetV2
IMAGENET_MOBILENET = ("deeplabv3plus", "fcn8s", "alignseg", "pspnet", "deeplabv3", "deeplabv2", "maskformer",
                      "mask2former")
SHIPPED = ("sfnet",)  # trained as the shipped `demo` model (edgeseg/zoo/demo.md)
# graph context units as plug-in heads: run <arch>-<unit> trains <arch> with --opt context=<unit>
CONTEXT_UNITS = tuple(f"{arch}-{unit}" for arch in ("fcn8s", "deeplabv3") for unit in ("glore", "gcu"))


def recipe(name: str, args) -> list[str]:
    arch, _, unit = name.partition("-")
    cmd = ["--arch", arch, "--data", args.data, "--epochs", str(args.epochs), "--batch-size", "8",
           "--crop", args.crop, "--optimizer", "adamw", "--lr", "1e-3", "--weight-decay", "1e-2",
           "--class-weights", "mfb", "--no-amp", "--seed", "0", "--val-every", str(args.epochs)]
    if arch in IMAGENET_MOBILENET:
        cmd += ["--opt", "backbone=mobilenetv2", "--pretrained", "imagenet"]
    if unit:
        cmd += ["--opt", f"context={unit}"]
    return cmd


def epochs_done(run: Path) -> int:
    log = run / "log.csv"
    if not log.is_file():
        return 0
    with open(log, newline="") as f:
        return len(list(csv.DictReader(f)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="CamVid-format data folder")
    ap.add_argument("--runs", default="runs/zoo", help="folder of the run folders, one per architecture "
                                                       "(default: runs/zoo)")
    ap.add_argument("--arch", default="all", help="comma-separated architectures or context-unit runs "
                                                  f"({', '.join(CONTEXT_UNITS)}), or all (default: all but the "
                                                  f"shipped model's {', '.join(SHIPPED)}, then the context units)")
    ap.add_argument("--epochs", type=int, default=5, help="epochs per architecture (default: 5)")
    ap.add_argument("--crop", default="192x256", help="training crop HxW (default: 192x256)")
    args = ap.parse_args(argv)
    zoo = set(available())
    archs = [a for a in ORDER if a in zoo] + list(CONTEXT_UNITS) if args.arch == "all" else args.arch.split(",")
    unknown = [a for a in archs if a not in zoo and a not in CONTEXT_UNITS]
    if unknown:
        ap.error(f"--arch {unknown[0]}: not in the zoo; see `edgeseg zoo`")
    missing = sorted(zoo - set(ORDER) - set(SHIPPED))
    if args.arch == "all" and missing:
        print(f"not in this script's order yet, not trained: {', '.join(missing)}", flush=True)
    runs = Path(args.runs)
    for arch in archs:
        run = runs / arch
        done = epochs_done(run)
        if done >= args.epochs and (run / "best.pt").is_file():
            print(f"{arch}: done ({done} epochs in {run})", flush=True)
            continue
        cmd = [sys.executable, "-m", "edgeseg", "train", *recipe(arch, args), "--out", str(run)]
        if (run / "last.pt").is_file():
            cmd.append("--resume")
        print(f"{arch}: {' '.join(cmd[2:])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        print(f"{arch}: exit {rc} after {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
        if rc != 0:
            return rc
    finished = []
    for a in archs:  # bench names a row by its file's stem: <arch>.pt, a link to the run's best.pt
        link = runs / f"{a}.pt"
        if (runs / a / "best.pt").is_file():
            if not link.is_symlink():
                link.symlink_to(Path(a) / "best.pt")
            finished.append(str(link))
    if finished:
        print("then: edgeseg bench --model " + ",".join(finished) +
              f" --backend ort-cpu --precision fp32,int8 --data {args.data} --out bench/results/zoo_trained_cpu")
    return 0


if __name__ == "__main__":
    sys.exit(main())
