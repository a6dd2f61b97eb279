"""`edgeseg bench`: latency, throughput, memory, FLOPs and mIoU per architecture, runtime and precision."""
from __future__ import annotations

HELP = "benchmark architectures and models across runtimes (torch, ort, opencv, tensorrt), precisions and sizes"


def add_arguments(p) -> None:
    p.add_argument("--arch", default=None, help="zoo architectures with random weights: all or a,b (default: all, unless --model)")
    p.add_argument("--model", default=None, help="checkpoints (.pt), shipped names or exported .onnx files (measured as they are, at their own "
                        "precision), comma-separated; mIoU measured with --data (default: none)")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=V1,V2",
                   help="an architecture option that keeps the trained weights, one row set per value, e.g. "
                        "prune=1,2,3,4 for unetpp (latency and mIoU per pruned level); repeatable (default: none)")
    p.add_argument("--backend", default="torch,ort,opencv,tensorrt",
                   help="comma-separated backend names (the same as `edgeseg run --backend`): torch, torch-compile (20-120 s of "
                        "compiling per model and size on 2 cores), ort (ONNX Runtime, CUDA if present), ort-cpu, ort-cuda, "
                        "ort-trt, opencv, tensorrt; a backend whose package is missing is skipped with the reason")
    p.add_argument("--precision", default="fp32", help="comma-separated: fp32, fp16, int8")
    p.add_argument("--size", default="360x480", help="input sizes HxW, comma-separated (each rounded to the nearest multiple of the model's size divisor)")
    p.add_argument("--batch", default="1", help="batch sizes, comma-separated")
    p.add_argument("--data", default=None, help="data folder: mIoU of trained models, int8 calibration and the reference image")
    p.add_argument("--split", default="val", help="split evaluated with --data")
    p.add_argument("--eval-limit", type=int, default=None, help="evaluate only the first N images (default: all of the split)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per runtime (default: the physical cores)")
    p.add_argument("--min-time", type=float, default=3.0, help="measure each row for at least this many seconds")
    p.add_argument("--min-runs", type=int, default=10, help="and at least this many runs")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs before measuring")
    p.add_argument("--row-timeout", type=float, default=900.0, help="seconds after which a row is stopped and reported as failed")
    p.add_argument("--cache", default=None, help="where exports and random-weight checkpoints are kept (default: $EDGESEG_CACHE/bench, else ~/.cache/edgeseg/bench)")
    p.add_argument("--baseline", default=None,
                   help="bench.json of an earlier run: each row's latency over the same row's there, and a summary")
    p.add_argument("--merge", default=None,
                   help="bench.json of an earlier run: its rows that this run does not measure again are kept in this run's "
                        "table, CSV, JSON and plot, marked with their run's date (the same file as --out's adds rows to it)")
    p.add_argument("--out", required=True, help="folder for bench.md, bench.csv, bench.json, bench.png, machine.json")


def run(args) -> int:
    import sys
    from pathlib import Path

    from edgeseg.benchmark.bench import benchmark, parse_request
    from edgeseg.benchmark.grid import Settings
    from edgeseg.errors import EdgesegError
    from edgeseg.outputs import check_output
    from edgeseg.paths import cache_dir

    check_output(args.out, "--out", folder=True, inputs=[args.data] if args.data else [])  # before hours of rows
    request = parse_request(args.arch, args.model, args.backend, args.precision, args.size, args.batch, args.opt)
    if args.min_time < 0 or args.min_runs < 1 or args.warmup < 0:
        raise EdgesegError("--min-time must be >= 0, --min-runs >= 1 and --warmup >= 0")
    if args.eval_limit is not None and args.eval_limit < 1:
        raise EdgesegError(f"--eval-limit {args.eval_limit}: give a positive number of images")
    settings = Settings(min_time=args.min_time, min_runs=args.min_runs, warmup=args.warmup, threads=args.threads,
                        data=Path(args.data) if args.data else None, split=args.split, eval_limit=args.eval_limit,
                        row_timeout=args.row_timeout, cache=Path(args.cache) if args.cache else cache_dir("bench"))
    doc = benchmark(request, settings, Path(args.out), command="edgeseg bench " + " ".join(sys.argv[2:]),
                    baseline=args.baseline, merge=args.merge)
    print(Path(doc["files"]["table"]).read_text())
    for kind, path in doc["files"].items():
        print(f"{kind:>8}: {path}")
    failed = sum(r["status"] != "ok" for r in doc["rows"])
    if failed:
        print(f"{failed} of {len(doc['rows'])} rows failed (their errors are in the table)")
    return 0
