"""One bench row in a process of its own: `python -m edgeseg.benchmark.worker SPEC.json RESULT.json`.

A fresh process per row isolates its memory (the peak RSS is this row's alone: the runtime library, the
weights, the activations) and its failures (a crash in a runtime ends the row, not the run). ONNX Runtime
and OpenCV rows never import torch, as on a device that runs them.
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np

from edgeseg.benchmark.timing import measure, rss_mb
from edgeseg.errors import EdgesegError
from edgeseg.fileio import write_json
from edgeseg.runtime.backends import open_backend

FILE_OF = {"torch": "checkpoint", "torch-compile": "checkpoint", "tensorrt": "engine"}  # the others: "onnx"


def labels(out: np.ndarray) -> np.ndarray:
    return out if out.ndim == 3 else out.argmax(1)


def run_row(spec: dict) -> dict:
    """spec: backend, precision, files, input (.npy [1,3,H,W]), reference (.npy labels [H,W] or None), batch,
    threads, min_time, min_runs, warmup, eval (None or data, split, limit, size_divisor, mean, std)."""
    base = rss_mb()
    x = np.ascontiguousarray(np.repeat(np.load(spec["input"]), spec["batch"], axis=0))
    t = time.perf_counter()
    backend = spec["backend"]
    options = {"precision": spec["precision"]} if FILE_OF.get(backend) == "checkpoint" else {}
    peer = open_backend(spec["files"][FILE_OF.get(backend, "onnx")], backend, threads=spec["threads"], **options)
    out = {"status": "ok", "runtime": peer.name, "device": peer.device, "open_s": round(time.perf_counter() - t, 2)}
    y = peer(x)  # the first call at this shape: torch.compile compiles here
    out.update(peer.info)
    if spec.get("reference"):
        out["agreement"] = float((labels(y)[0] == np.load(spec["reference"])).mean())
    lat = measure(lambda: peer(x), min_time=spec["min_time"], min_runs=spec["min_runs"], warmup=spec["warmup"])
    mem = rss_mb()
    out.update({"latency_ms": lat, "fps": spec["batch"] * 1e3 / lat["median"],
                "rss_base_mb": base.get("rss"), "rss_peak_mb": mem.get("peak"), "device_mem_mb": peer.device_memory_mb()})
    ev = spec.get("eval")
    if ev:
        from edgeseg.data import SegFolder
        from edgeseg.evaluate import evaluate

        data = SegFolder(ev["data"], ev["split"])
        m = evaluate(peer, data, data.classes, size_divisor=ev["size_divisor"], mean=ev["mean"], std=ev["std"],
                     progress=False, limit=ev["limit"])
        out.update({"miou": m["miou"], "eval_images": m["images"]})
    peer.close()
    return out


def error_line(e: BaseException) -> str:
    """EdgesegError messages as they are; other exceptions' first line, named by type."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return (first if isinstance(e, EdgesegError) else f"{type(e).__name__}: {first}".rstrip(": "))[:300]


def main(argv: list[str]) -> int:
    spec_path, result_path = argv
    with open(spec_path) as f:
        spec = json.load(f)
    try:
        result = run_row(spec)
    except Exception as e:  # any runtime's failure becomes this row's error; the run goes on
        result = {"status": "error", "error": error_line(e)}
    write_json(result_path, result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
