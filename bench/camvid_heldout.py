"""A sequence-held-out CamVid split: train on some drives, evaluate on one the model has never seen.

CamVid's train split holds three drives, told apart by the file name's prefix (0001TP 62 frames, 0006R0 101,
0016E5 204; val is all 0016E5, so val frames are neighbours of training frames). This writes a CamVid-format
folder of symlinks: images/train + labels/train = the other drives' train frames, images/heldout +
labels/heldout = the held-out drive's, and classes.json when the source has one. Then

    python bench/camvid_heldout.py --data ../shared/data/camvid --hold 0006R0 --out runs/heldout-0006R0
    edgeseg train --data runs/heldout-0006R0 --val-split heldout ...
    edgeseg eval --model runs/.../best.pt --data runs/heldout-0006R0 --split heldout

measure generalisation to an unseen drive. The folder appears complete or not at all.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections import Counter
from pathlib import Path

from edgeseg.errors import EdgesegError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def drive(name: str) -> str:
    return name.split("_", 1)[0]


def pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    """(image, label) of a split, matched by file stem; labels from labels/ (or masks/)."""
    images = root / "images" / split
    labels = next((root / d / split for d in ("labels", "masks") if (root / d / split).is_dir()), None)
    if not images.is_dir() or labels is None:
        raise EdgesegError(f"{root}: no images/{split} and labels/{split} (or masks/{split}); "
                           "pass --data with a CamVid-format folder")
    by_stem = {p.stem: p for p in labels.iterdir() if p.suffix == ".png"}
    out = []
    for img in sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_EXTS):
        if img.stem not in by_stem:
            raise EdgesegError(f"{img}: no label {labels / (img.stem + '.png')}; add it or remove the image")
        out.append((img, by_stem[img.stem]))
    return out


def make_heldout(data: str | Path, hold: str, out: str | Path, split: str = "train") -> dict[str, Counter]:
    """Write the symlink folder `out`; returns the frames per drive of its train and heldout splits."""
    data, out = Path(data).resolve(), Path(out)
    if out.exists() and any(out.iterdir()):
        raise EdgesegError(f"{out}: exists and is not empty; choose another --out or delete it")
    frames = pairs(data, split)
    drives = Counter(drive(img.name) for img, _ in frames)
    if hold not in drives:
        raise EdgesegError(f"--hold {hold}: no such drive in {data}/images/{split}; "
                           f"its drives: {', '.join(f'{d} ({n})' for d, n in sorted(drives.items()))}")
    if len(drives) < 2:
        raise EdgesegError(f"{data}/images/{split}: holds only drive {hold}; nothing would be left to train on")
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for img, lab in frames:
            part = "heldout" if drive(img.name) == hold else "train"
            for kind, src in (("images", img), ("labels", lab)):
                (tmp / kind / part).mkdir(parents=True, exist_ok=True)
                (tmp / kind / part / src.name).symlink_to(src)
        if (data / "classes.json").is_file():
            (tmp / "classes.json").symlink_to(data / "classes.json")
        if out.exists():
            out.rmdir()  # empty, checked above
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"train": Counter({d: n for d, n in drives.items() if d != hold}), "heldout": Counter({hold: drives[hold]})}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="CamVid-format folder (images/<split>, labels/<split>)")
    p.add_argument("--hold", required=True, help="drive to hold out: the file-name prefix, e.g. 0006R0")
    p.add_argument("--out", required=True, help="new folder: images|labels/train and images|labels/heldout")
    p.add_argument("--split", default="train", help="the source split that is divided (default: train)")
    args = p.parse_args(argv)
    try:
        counts = make_heldout(args.data, args.hold, args.out, args.split)
    except EdgesegError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for part, drives in counts.items():
        listed = ", ".join(f"{d} {n}" for d, n in sorted(drives.items()))
        print(f"{args.out}/images/{part}: {sum(drives.values())} frames ({listed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
