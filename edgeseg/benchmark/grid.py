"""The bench grid: models x sizes x batches x precisions x backends, one isolated process per row.

Preparation (checkpoints, exports, reference outputs) happens here, in the parent, once per model and
precision; measuring happens in `worker.py`. A combination that fails, in either, becomes a row with its
error and the grid goes on. mIoU is measured once per model, backend and precision (it does not depend on
the timing size: evaluation runs each image at its own resolution).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from edgeseg.benchmark.exports import engine_file, graph_for, onnx_file
from edgeseg.benchmark.flops import count_flops, count_params
from edgeseg.benchmark.machine import peak_for
from edgeseg.benchmark.sources import Source, reference
from edgeseg.benchmark.timing import cpu_seconds, others_share
from edgeseg.errors import EdgesegError
from edgeseg.fileio import write_json
from edgeseg.progress import on_terminal, progress_bar
from edgeseg.runtime.backends import missing_requirement
from edgeseg.sizes import fit

BUSY = 0.1  # other processes' share of the CPU above which a row is marked as measured on a busy machine


@dataclass
class Settings:
    min_time: float = 3.0
    min_runs: int = 10
    warmup: int = 2
    threads: int | None = None
    data: Path | None = None
    split: str = "val"
    eval_limit: int | None = None
    row_timeout: float = 900.0
    cache: Path = Path(".")


def parse_list(text: str, allowed, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise EdgesegError(f"unknown {what} {(bad or [text])[0]!r}; choose from: {', '.join(allowed)}")
    return list(dict.fromkeys(items))


TORCH_BACKENDS = ("torch", "torch-compile")


def int8_target(backend: str) -> str:
    """ONNX Runtime and OpenCV on the CPU run the x86 placement; TensorRT (native or as ORT's provider) the strongly
    typed one."""
    return "tensorrt" if backend in ("tensorrt", "ort-trt") else "cpu"


def unsupported(backend: str, precision: str) -> str | None:
    """Why a combination cannot run (a skipped row), or None."""
    if backend in TORCH_BACKENDS and precision == "int8":
        return "int8 is a Q/DQ ONNX graph: it runs on ort, opencv or tensorrt"
    return missing_requirement(backend)


def onnx_mismatch(src: Source, backend: str, precision: str) -> str | None:
    """Why an ONNX source has no row here: it is measured as it is, at its own precision, on ONNX runtimes."""
    if src.onnx is None:
        return None
    if backend in TORCH_BACKENDS:
        return f"{src.onnx.name} is an ONNX file: no PyTorch module to run"
    if precision != src.precision:
        return f"{src.onnx.name} holds the {src.precision} graph (export the other precisions with `edgeseg export`)"
    return None


class Grid:
    def __init__(self, sources: list[Source], backends: list[str], precisions: list[str], sizes: list[tuple[int, int]],
                 batches: list[int], settings: Settings, peaks: dict, ref_image):
        self.sources, self.backends, self.precisions = sources, backends, precisions
        self.sizes, self.batches, self.s, self.peaks = sizes, batches, settings, peaks
        self.ref_image = ref_image
        self.rows: list[dict] = []
        self.skipped: list[dict] = []
        self._evals: dict[tuple, dict] = {}

    def combos(self):
        for src in self.sources:
            for size in self.sizes:
                for batch in self.batches:
                    for precision in self.precisions:
                        for backend in self.backends:
                            why = unsupported(backend, precision) or onnx_mismatch(src, backend, precision)
                            if why:
                                skip = {"model": src.name, "backend": backend, "precision": precision, "reason": why}
                                if skip not in self.skipped:
                                    self.skipped.append(skip)
                                continue
                            yield src, size, batch, precision, backend

    def run(self, progress: bool = True) -> list[dict]:
        todo = list(self.combos())
        tty = progress and on_terminal()  # a bar on a terminal, a line per row in a log
        bar = progress_bar(todo, show=progress, desc="bench", unit="row")
        with tempfile.TemporaryDirectory(prefix="edgeseg-bench-") as tmp:
            for i, (src, size, batch, precision, backend) in enumerate(bar, 1):
                what = f"{src.name} {backend} {precision} {size[0]}x{size[1]} b{batch}"
                bar.set_postfix_str(what)
                row = self.row(src, size, batch, precision, backend, Path(tmp))
                self.rows.append(row)
                if progress and not tty:
                    done = f"{row['latency_median_ms']:.1f} ms" if row["status"] == "ok" else row["status"]
                    print(f"bench: row {i}/{len(todo)} {what}: {done}", file=sys.stderr, flush=True)
        return self.rows

    def row(self, src: Source, size, batch: int, precision: str, backend: str, tmp: Path) -> dict:
        run_size = fit(size, src.size_divisor)
        notes = [src.note] if src.note else []
        if run_size != size:
            notes.append(f"{size[0]}x{size[1]} rounded to the nearest multiple of {src.size_divisor}")
        row = {"model": src.name, "arch": src.arch, "weights": src.weights, "backend": backend, "precision": precision,
               "size": f"{size[0]}x{size[1]}", "run_size": f"{run_size[0]}x{run_size[1]}", "batch": batch, "status": "error"}
        try:
            spec = self.prepare(src, run_size, batch, precision, backend, row)
            if row.get("graph"):
                notes.append(f"{row['graph']} graph")
            result = self.measure(spec, tmp)
        except EdgesegError as e:
            result = {"status": "error", "error": str(e).strip().splitlines()[0]}
        except Exception as e:  # an export step or a library failing on this graph: this row's error
            result = {"status": "error", "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]}
        self.finish(row, result, notes)
        return row

    def prepare(self, src: Source, run_size, batch: int, precision: str, backend: str, row: dict) -> dict:
        files = {"checkpoint": str(src.checkpoint)}
        fp32 = src.onnx or self.export(src, "fp32", "cpu")["plain"]  # what parameters and FLOPs are read from
        if "params" not in src.memo:
            src.memo["params"] = count_params(fp32)
        row["params_m"] = src.memo["params"] / 1e6
        if ("flops", run_size) not in src.memo:
            src.memo[("flops", run_size)] = count_flops(fp32, (1, 3, *run_size))["total"]
        row["gflop"] = src.memo[("flops", run_size)] / 1e9
        if backend not in TORCH_BACKENDS:
            graphs = {"plain": src.onnx} if src.onnx else self.export(src, precision, int8_target(backend))
            graph = graph_for(backend, graphs)
            files["onnx"] = str(graphs[graph])
            if graph == "flowwarp-plugin":
                row["graph"] = "edgeseg::FlowWarp"
        if backend == "tensorrt":
            files["engine"] = str(engine_file(Path(files["onnx"]), run_size, batch, self.s.cache))
        x_path, y_path = reference(src, self.ref_image, run_size, self.s.cache)
        spec = {"backend": backend, "precision": precision, "files": files, "input": str(x_path), "reference": str(y_path) if y_path else None,
                "batch": batch, "threads": self.s.threads, "min_time": self.s.min_time, "min_runs": self.s.min_runs,
                "warmup": self.s.warmup, "eval": None}
        if self.s.data is not None and src.trained and (src.name, backend, precision) not in self._evals:
            spec["eval"] = {"data": str(self.s.data), "split": self.s.split, "limit": self.s.eval_limit,
                            "size_divisor": src.size_divisor, "mean": src.mean, "std": src.std}
        return spec

    def export(self, src: Source, precision: str, target: str) -> dict[str, Path]:
        """The exported ONNX graphs (see `onnx_file`), made once per model, precision and int8 placement; a failure is
        remembered, not retried."""
        key = ("onnx", precision, target if precision == "int8" else "")
        if key not in src.memo:
            try:
                src.memo[key] = onnx_file(src, precision, target, self.s.data, self.s.eval_limit, self.s.cache)
            except EdgesegError as e:
                src.memo[key] = EdgesegError(f"{precision} export: {str(e).strip().splitlines()[0]}")
        if isinstance(src.memo[key], Exception):
            raise src.memo[key]
        return src.memo[key]

    def measure(self, spec: dict, tmp: Path) -> dict:
        """Run one row's worker process; its crash or time-out is the row's error."""
        spec_path, result_path = tmp / "spec.json", tmp / "result.json"
        write_json(spec_path, spec)
        result_path.unlink(missing_ok=True)
        env = dict(os.environ)
        if self.s.threads:
            env["OMP_NUM_THREADS"] = str(self.s.threads)
        before, start = cpu_seconds(), time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, "-m", "edgeseg.benchmark.worker", str(spec_path), str(result_path)],
                                  env=env, capture_output=True, text=True, timeout=self.s.row_timeout)
        except subprocess.TimeoutExpired:
            return {"status": "error", "error": f"timed out after {self.s.row_timeout:.0f} s (--row-timeout)"}
        if not result_path.exists():
            last = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
            return {"status": "error", "error": f"worker exited with code {proc.returncode}" + (f": {last[-1][:200]}" if last else "")}
        result = json.loads(result_path.read_text())
        result["others_cpu"] = others_share(before, cpu_seconds(), time.perf_counter() - start)
        return result

    def finish(self, row: dict, result: dict, notes: list[str]) -> None:
        row["status"] = result.get("status", "error")
        if row["status"] != "ok":
            row["error"] = result.get("error", "unknown error")
            row["note"] = "; ".join(notes)
            return
        lat = result["latency_ms"]
        row.update({"runtime": result["runtime"], "device": result["device"], "latency_median_ms": lat["median"],
                    "latency_p90_ms": lat["p90"], "latency_p99_ms": lat["p99"], "latency_mean_ms": lat["mean"],
                    "latency_min_ms": lat["min"], "runs": lat["runs"], "fps": result["fps"],
                    "rss_base_mb": result.get("rss_base_mb"), "rss_peak_mb": result.get("rss_peak_mb"),
                    "device_mem_mb": result.get("device_mem_mb"), "agreement": result.get("agreement"),
                    "open_s": result.get("open_s")})
        if "compile_s" in result:
            notes.append(f"compile {result['compile_s']:.0f} s")
        row["others_cpu"] = result.get("others_cpu")
        if (row["others_cpu"] or 0) > BUSY:
            notes.append(f"machine busy: other processes took {row['others_cpu']:.0%} of the CPU")
        row["gflops_per_s"] = row["gflop"] * row["batch"] / (lat["median"] / 1e3)
        key = (row["model"], row["backend"], row["precision"])
        if "miou" in result:
            self._evals[key] = {"miou": result["miou"], "eval_images": result["eval_images"]}
        if key in self._evals:
            row.update(self._evals[key])
        row["note"] = "; ".join(notes)

    def rate_rows(self) -> None:
        """Each measured row's achieved GFLOP/s as a fraction of the machine's peak for its device and precision."""
        for row in self.rows:
            if row["status"] == "ok":
                peak = peak_for(self.peaks, row["device"], row["precision"])
                row["peak_fraction"] = row["gflops_per_s"] / peak if peak else None
