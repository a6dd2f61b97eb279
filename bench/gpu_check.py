"""The GPU check behind bench/gpu_check.sh: CUDA FlowWarp parity and bandwidth, shipped model on ONNX Runtime CUDA.

The arithmetic (bytes moved, GB/s, % of copy bandwidth, the tolerance per dtype, the table) is in plain functions that
tests/test_gpu_check.py runs on the CPU; the rest needs torch with CUDA. Every part that cannot run (no CUDA
provider in this onnxruntime, no edgeseg export stage) becomes a table row that says why, never a crash.

    python bench/gpu_check.py --library libedgeseg_flowwarp_capi.so --out bench/results/gpu_check.md
"""
from __future__ import annotations

import argparse
import ctypes
import platform
import statistics
from pathlib import Path

TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2}  # max abs error against grid_sample in fp32, for inputs of unit scale
# (N, C, h, w, H, W): SFNet-R18's flow-alignment shapes at 360x480 and 1024x2048, plus odd and degenerate sizes
PARITY_SHAPES = [(1, 128, 12, 15, 23, 30), (2, 7, 5, 9, 11, 17), (1, 3, 1, 1, 1, 1), (1, 5, 33, 65, 31, 63)]
TIMING_SHAPES = [(1, 128, 45, 60, 90, 120), (1, 128, 128, 256, 256, 512), (1, 128, 256, 512, 512, 1024)]
ITEMSIZE = {"fp32": 4, "fp16": 2}


def traffic_bytes(n: int, c: int, h: int, w: int, big_h: int, big_w: int, itemsize: int) -> int:
    """The least memory traffic of one warp: read X and FLOW once, write Y once."""
    return itemsize * (n * c * h * w + n * 2 * big_h * big_w + n * c * big_h * big_w)


def gbs(nbytes: int, ms: float) -> float:
    return nbytes / (ms * 1e-3) / 1e9


def within_tolerance(dtype: str, err: float) -> bool:
    return err <= TOLERANCE[dtype]


def markdown(title: str, header: list[str], rows: list[list]) -> str:
    def cell(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- on the GPU
def _reference(torch, x, flow, align_corners: bool):
    """DESIGN.md's FlowWarp through F.grid_sample, in fp32."""
    n, _, big_h, big_w = flow.shape
    ys = torch.arange(big_h, device=x.device, dtype=torch.float32)
    xs = torch.arange(big_w, device=x.device, dtype=torch.float32)
    if align_corners:
        bx = -1 + 2 * xs / max(big_w - 1, 1) if big_w > 1 else xs * 0 - 1
        by = -1 + 2 * ys / max(big_h - 1, 1) if big_h > 1 else ys * 0 - 1
    else:
        bx, by = (2 * xs + 1) / big_w - 1, (2 * ys + 1) / big_h - 1
    f = flow.float()
    grid = torch.stack([bx[None, None, :] + f[:, 0] / big_w, by[None, :, None] + f[:, 1] / big_h], -1)
    return torch.nn.functional.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros",
                                           align_corners=align_corners)


class CudaFlowWarp:
    def __init__(self, library: Path):
        self.lib = ctypes.CDLL(str(library))
        for name in ("edgeseg_flowwarp_f32", "edgeseg_flowwarp_f16"):
            fn = getattr(self.lib, name)
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 6 + [ctypes.c_int, ctypes.c_void_p]

    def __call__(self, torch, x, flow, align_corners: bool):
        n, c, h, w = x.shape
        big_h, big_w = flow.shape[2:]
        y = torch.empty((n, c, big_h, big_w), device=x.device, dtype=x.dtype)
        fn = self.lib.edgeseg_flowwarp_f16 if x.dtype == torch.float16 else self.lib.edgeseg_flowwarp_f32
        err = fn(x.data_ptr(), flow.data_ptr(), y.data_ptr(), n, c, h, w, big_h, big_w, int(align_corners),
                 ctypes.c_void_p(torch.cuda.current_stream().cuda_stream))
        if err:
            raise RuntimeError(f"flowwarp_cuda returned cudaError {err}")
        return y


def _median_ms(torch, fn, runs: int = 50) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(runs):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def parity(torch, warp) -> list[list]:
    rows = []
    g = torch.Generator(device="cuda").manual_seed(0)
    for dtype, tdtype in (("fp32", torch.float32), ("fp16", torch.float16)):
        for n, c, h, w, big_h, big_w in PARITY_SHAPES:
            for ac in (True, False):
                x = torch.randn((n, c, h, w), device="cuda", generator=g).to(tdtype)
                flow = (3 * torch.randn((n, 2, big_h, big_w), device="cuda", generator=g)).to(tdtype)
                err = (warp(torch, x, flow, ac).float() - _reference(torch, x, flow, ac)).abs().max().item()
                rows.append([dtype, f"{n}x{c}x{h}x{w} -> {big_h}x{big_w}", int(ac), f"{err:.2e}",
                             "ok" if within_tolerance(dtype, err) else "FAIL"])
    return rows


def bandwidth(torch, warp) -> list[list]:
    rows = []
    for dtype, tdtype in (("fp32", torch.float32), ("fp16", torch.float16)):
        for n, c, h, w, big_h, big_w in TIMING_SHAPES:
            x = torch.randn((n, c, h, w), device="cuda").to(tdtype)
            flow = (2 * torch.randn((n, 2, big_h, big_w), device="cuda")).to(tdtype)
            nbytes = traffic_bytes(n, c, h, w, big_h, big_w, ITEMSIZE[dtype])
            ms = _median_ms(torch, lambda: warp(torch, x, flow, True))
            ref = _median_ms(torch, lambda: _reference(torch, x, flow, True))
            src = torch.empty(nbytes // 2, dtype=torch.uint8, device="cuda")
            dst = torch.empty_like(src)
            copy_ms = _median_ms(torch, lambda: dst.copy_(src))  # reads and writes nbytes in all
            rows.append([dtype, f"{c}x{h}x{w} -> {big_h}x{big_w}", ms, ref, ref / ms, gbs(nbytes, ms),
                         f"{100 * gbs(nbytes, ms) / gbs(nbytes, copy_ms):.0f} %"])
    return rows


def shipped_model(torch) -> list[list]:
    """The shipped model: PyTorch CUDA eager vs ONNX Runtime's CUDA provider, fp32 and fp16, at 360x480."""
    import numpy as np

    try:
        import onnxruntime as ort

        from edgeseg.export import export_model
        from edgeseg.models import checkpoint
        from edgeseg.runtime.backends import open_backend
    except ImportError as e:
        return [["-", "skipped", f"{e}"]]
    rows = []
    x = np.random.default_rng(0).standard_normal((1, 3, 360, 480)).astype(np.float32)
    model, _ = checkpoint.load_model("demo")
    model = model.cuda().eval()
    for dtype, tdtype in (("fp32", torch.float32), ("fp16", torch.float16)):
        m = model.to(tdtype)
        xt = torch.from_numpy(x).cuda().to(tdtype)
        with torch.inference_mode():
            rows.append([dtype, "PyTorch CUDA eager", f"{_median_ms(torch, lambda: m(xt)):.2f}"])
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return rows + [["-", "ONNX Runtime CUDA", f"skipped: onnxruntime has only {ort.get_available_providers()}"]]
    import tempfile
    import time

    with tempfile.TemporaryDirectory() as tmp:
        rep = export_model("demo", tmp, ("fp32", "fp16"), progress=False, guard=False)
        for dtype in ("fp32", "fp16"):
            be = open_backend(rep["outputs"][dtype]["path"], "ort-cuda")
            be(x)
            times = []
            for _ in range(50):
                t = time.perf_counter()
                be(x)
                times.append(1e3 * (time.perf_counter() - t))
            rows.append([dtype, "ONNX Runtime CUDA (host in, host out)", f"{statistics.median(times):.2f}"])
            be.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--library", required=True, help="libedgeseg_flowwarp_capi.so built by bench/gpu_check.sh")
    ap.add_argument("--out", default="bench/results/gpu_check.md", help="Markdown file to write")
    args = ap.parse_args()
    import torch

    warp = CudaFlowWarp(Path(args.library))
    doc = [f"# GPU check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, {platform.platform()}\n",
           markdown("FlowWarp CUDA vs F.grid_sample (fp32 reference)", ["dtype", "shape", "align_corners",
                    "max abs err", "result"], parity(torch, warp)),
           markdown("FlowWarp CUDA timing (median of 50, CUDA events)", ["dtype", "X -> Y", "FlowWarp ms",
                    "grid_sample ms", "speed-up", "GB/s", "of copy bandwidth"], bandwidth(torch, warp)),
           markdown("Shipped model at 360x480 (median ms)", ["precision", "runtime", "ms"], shipped_model(torch))]
    text = "\n".join(doc)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.out).with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(args.out)
    print(text)


if __name__ == "__main__":
    main()
