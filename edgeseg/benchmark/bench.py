"""`benchmark(...)`: check the request, measure the machine's peak, run the grid, write the reports."""
from __future__ import annotations

import datetime
import os
import time
from pathlib import Path

from edgeseg.benchmark import baseline as compare_with
from edgeseg.benchmark import report
from edgeseg.benchmark.grid import Grid, Settings, parse_list
from edgeseg.benchmark.machine import best_peaks, machine_info, measure_peaks
from edgeseg.benchmark.sources import option_grid, reference_image, resolve
from edgeseg.errors import EdgesegError
from edgeseg.meta import PRECISIONS
from edgeseg.runtime.backends import BACKENDS
from edgeseg.sizes import parse_hw_list


def parse_request(arch: str | None, model: str | None, backend: str, precision: str, size: str, batch: str,
                  opt: list[str] = ()) -> dict:
    """The grid's axes from the command-line strings; a bad value is a one-line EdgesegError."""
    from edgeseg.models import available

    archs: list[str] = []
    if arch is None and model is None:
        arch = "all"
    if arch:
        archs = available() if arch.strip() == "all" else parse_list(arch, available(), "architecture")
    batches = []
    for b in batch.split(","):
        if not b.strip().isdigit() or int(b) < 1:
            raise EdgesegError(f"bad batch size {b!r}; give positive integers, e.g. --batch 1,4")
        batches.append(int(b))
    return {"archs": archs, "models": [m.strip() for m in (model or "").split(",") if m.strip()],
            "backends": parse_list(backend, BACKENDS, "backend"),
            "precisions": parse_list(precision, PRECISIONS, "precision"),
            "sizes": list(parse_hw_list(size)), "batches": batches, "options": option_grid(list(opt))}


def benchmark(request: dict, settings: Settings, out: Path, *, command: str = "", progress: bool = True,
              baseline: str | Path | None = None, merge: str | Path | None = None) -> dict:
    """Run the grid and write bench.md / .csv / .json / .png and machine.json into `out`. Returns the JSON document.
    baseline: an earlier run's bench.json, compared row by row; merge: one whose rows this run does not measure are
    carried into the reports."""
    start, load_start = time.perf_counter(), os.getloadavg()[0]
    base = compare_with.load(baseline) if baseline else None
    merged = compare_with.load(merge, "--merge") if merge else None
    classes = None
    if settings.data is not None:
        from edgeseg.data import SegFolder

        classes = SegFolder(settings.data, settings.split).classes  # checks the folder before anything runs
    machine = machine_info()
    if settings.threads is None:
        settings.threads = machine["cpu"]["physical_cores"] or os.cpu_count()
    settings.cache.mkdir(parents=True, exist_ok=True)
    sources = resolve(request["archs"], request["models"], classes, settings.cache, request.get("options"))
    peaks = measure_peaks(settings.threads)
    grid = Grid(sources, request["backends"], request["precisions"], request["sizes"], request["batches"], settings, peaks,
                reference_image(settings.data, settings.split, settings.cache))
    rows = grid.run(progress=progress)
    grid.peaks = best_peaks(peaks, measure_peaks(settings.threads))  # once more, after the rows: keep the higher
    grid.rate_rows()
    peaks = grid.peaks
    eval_images = max((r.get("eval_images") or 0 for r in rows), default=0)
    doc = {"command": command, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
           "elapsed_s": round(time.perf_counter() - start, 1), "machine": machine, "peaks_gflops": peaks,
           "settings": {"threads": settings.threads, "min_time_s": settings.min_time, "min_runs": settings.min_runs,
                        "warmup_runs": settings.warmup, "data": str(settings.data) if settings.data else None,
                        "split": settings.split, "eval_limit": settings.eval_limit, "eval_images": eval_images or None},
           # other work on the machine slows the rows down: the 1-minute load average before and after says how much
           "load_average": {"start": load_start, "end": os.getloadavg()[0]}}
    if base is not None:
        doc["baseline"] = compare_with.compare(rows, base, peaks)
    if merged is not None:
        carried = compare_with.carry(rows, merged)
        doc["merged"] = compare_with.carried_line(carried, merged, peaks)
        rows = rows + carried
    files = report.write_all(out, rows, grid.skipped, doc, header(doc))
    return {**doc, "rows": rows, "skipped": grid.skipped, "files": {k: str(v) for k, v in files.items()}}


def header(doc: dict) -> str:
    m, s, p = doc["machine"], doc["settings"], doc["peaks_gflops"]
    gpu = ", ".join(g["name"] for g in m["gpus"]) or "no GPU"
    cpu_peak = ", ".join(f"{k} {v:.0f}" for k, v in p.get("cpu", {}).items())
    lines = [f"# edgeseg bench: {m['cpu']['model']} ({m['cpu']['logical_cores']} cores), {gpu}", "",
             f"{doc['date']}; {s['threads']} threads; each row: {s['warmup_runs']} warm-up runs, then at least "
             f"{s['min_runs']} runs and {s['min_time_s']:g} s; latency = numpy in -> numpy out; peak CPU GFLOP/s "
             f"(measured matrix product): {cpu_peak}; the whole run took {doc['elapsed_s'] / 60:.1f} min; load average "
             f"{doc['load_average']['start']:.1f} before, {doc['load_average']['end']:.1f} after."]
    if s["data"]:
        lines.append(f"mIoU on {s['data']} [{s['split']}], {s['eval_images']} images at their own size"
                     + (f" (--eval-limit {s['eval_limit']})" if s["eval_limit"] else "")
                     + "; models with random weights are marked untrained.")
    lines.append("FLOPs = 2 x MACs of Conv/ConvTranspose/MatMul/Gemm from the ONNX graph; % peak = achieved GFLOP/s over the "
                 "peak of its precision (above 100: the runtime's convolutions outrun the matrix product that measured the "
                 "peak); Agree % = argmax agreement with PyTorch fp32 on one image.")
    if "baseline" in doc:
        lines.append(compare_with.summary_line(doc["baseline"]) + " vs base = this row's latency over the baseline's.")
    if "merged" in doc:
        lines.append(doc["merged"])
    return "\n".join(lines)
