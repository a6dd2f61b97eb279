"""`edgeseg demo`: the shipped model on the shipped CamVid clip, ONNX fp32 vs INT8, in one command.

The first run exports the model (fp32, and INT8 calibrated on frames of the clip) into the cache; later runs reuse
it. The clip is replayed at its own frame rate, as a camera would deliver it, with the latest-frame policy, so
the table shows what each precision sustains live: FPS, end-to-end latency and dropped frames.
"""
from __future__ import annotations

from pathlib import Path

from edgeseg import export_cache

TEMPORAL_ROW = "int8 + temporal {}"
HELP = ("run the shipped model on the demo clip (or --source): ONNX fp32 vs INT8 vs INT8 in temporal mode, overlay "
        "videos and a latency table")


def add_arguments(p) -> None:
    from edgeseg.cli.argtypes import nonnegative_int, positive_int

    p.add_argument("--source", help="a camera, stream, video or image folder; unset: the shipped CamVid clip")
    p.add_argument("--out", type=Path, default=Path("edgeseg-demo"), help="folder for the overlay videos and the summary")
    p.add_argument("--model", default="demo", help="a shipped model name or an edgeseg checkpoint (.pt)")
    p.add_argument("--precision", default="fp32,int8", help="comma list of fp32, int8")
    p.add_argument("--backend", default="ort-cpu", help="ort-cpu, ort-cuda or ort-trt (see `edgeseg run --help`)")
    p.add_argument("--threads", type=positive_int, help="ONNX Runtime intra-op threads")
    p.add_argument("--temporal", default="auto", metavar="MODE",
                   help="a third run of INT8 with `edgeseg run --temporal MODE` (fixed:K or auto); off: none")
    p.add_argument("--every-frame", action="store_true",
                   help="process every frame as fast as possible instead of replaying the clip at its frame rate")
    p.add_argument("--max-frames", type=nonnegative_int, default=0, metavar="N",
                   help="frames per precision; 0: the whole clip, or 300 from a live source")
    p.add_argument("--quiet", action="store_true", help="no live status line, no export progress")


def native_rate(uri: str) -> float | None:
    """A video file's own frame rate (to replay it like a camera), else None."""
    import cv2

    from edgeseg.runtime.sources import parse_source

    spec = parse_source(uri)
    if spec.kind != "video":
        return None
    cap = cv2.VideoCapture(spec.target)
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return fps if 0 < fps < 1000 else None


def run(args) -> int:
    from edgeseg.cli.run import check_outputs, run_stream
    from edgeseg.errors import EdgesegError
    from edgeseg.fileio import write_json, write_text
    from edgeseg.runtime.sources import parse_source
    from edgeseg.runtime.temporal import parse_temporal

    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    bad = [p for p in precisions if p not in ("fp32", "int8")]
    if bad or not precisions:
        raise EdgesegError(f"--precision {args.precision!r}: give fp32, int8 or both")
    temporal = parse_temporal(args.temporal) and "int8" in precisions
    source = args.source or str(export_cache.CLIP)
    videos = {p: args.out / f"overlay_{p}.mp4" for p in precisions}
    if temporal:
        videos[TEMPORAL_ROW.format(args.temporal)] = args.out / "overlay_int8_temporal.mp4"
    check_outputs(source, [str(v) for v in videos.values()], args.model, json_path=args.out / "summary.json")
    live = parse_source(source).live
    rate = None if (live or args.every_frame) else native_rate(source)
    max_frames = args.max_frames or (300 if live else 0)
    models, report = export_cache.export_cached(args.model, precisions, progress=not args.quiet)
    # The shipped clip runs at the size its export is validated at (its own frames' size); other sources at the
    # model's default (the frame scaled to the size the model was trained at).
    size = export_cache.VALIDATE_SIZE if args.source is None else None
    runs = {}
    for row, video in videos.items():
        precision, mode = (row, "off") if row in precisions else ("int8", args.temporal)
        summary, _ = run_stream(models[precision], source, [str(video)], backend=args.backend, threads=args.threads,
                                source_kw={"rate": rate},
                                pipeline_kw={"policy": "all" if args.every_frame else "auto" if live else "latest",
                                             "max_frames": max_frames, "status": not args.quiet, "size": size,
                                             "temporal": mode})
        runs[row] = summary
        if summary["end"] in ("interrupted", "terminated"):
            break
    agreement = (report.get("validation", {}).get("int8") or {}).get("argmax_agreement")
    table = comparison_table(runs, rate, agreement, warp_note(report, models["fp32"]))
    write_json(args.out / "summary.json", {"source": source, "rate": rate, "runs": runs,
                                           "export": {"report": str(Path(next(iter(models.values()))).parent / "report.json"),
                                                      "int8_argmax_agreement": agreement}})
    write_text(args.out / "summary.md", table + "\n")
    print(table)
    print("\n" + "\n".join(f"overlay {p}: {videos[p]}" for p in runs))
    print(f"summary: {args.out / 'summary.md'} (and summary.json); models: {next(iter(models.values())).parent}")
    return 0


def warp_note(report: dict, fp32: Path) -> str | None:
    """How the model's flow warps ran, and how to make them faster where they ran as GridSample on the CPU."""
    import onnx

    from edgeseg.kernels import find_library

    if report.get("flowwarp"):
        return "Flow warps: the edgeseg::FlowWarp CPU op."
    if find_library("ort") is None and any(n.op_type == "GridSample" for n in onnx.load(str(fp32)).graph.node):
        return ("Flow warps: ONNX GridSample; `edgeseg kernels build` builds the FlowWarp CPU op, which the next run "
                "uses (INT8 about 30 % faster on 2 cores).")
    return None


def comparison_table(runs: dict, rate: float | None, agreement: float | None, warps: str | None = None) -> str:
    replay = f"replayed at {rate:g} FPS, latest-frame policy" if rate else "every frame, as fast as possible"
    rows = ["| precision | backend | frames | dropped | FPS | infer ms (p50) | latency p50 ms | latency p99 ms |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for p, s in runs.items():
        rows.append(f"| {p} | {s['backend']} | {s['frames']} | {s['dropped']} | {s['fps']:.1f} | "
                    f"{s['stages']['infer']['p50']:.1f} | {s['latency_ms']['p50']:.0f} | {s['latency_ms']['p99']:.0f} |")
    notes = [f"Source: {next(iter(runs.values()))['source']} ({replay}); model input "
             f"{'x'.join(map(str, next(iter(runs.values()))['model_input']))}; latency is capture to written frame."]
    if agreement is not None:
        notes.append(f"INT8 vs fp32 argmax agreement (export validation): {100 * agreement:.2f}%.")
    for p, s in runs.items():
        if s.get("temporal"):
            t = s["temporal"]
            notes.append(f"{p}: the network on {t['key_frames']} key frames, {t['warped_frames']} frames warped from "
                         f"them along DIS optical flow ({t['warp']} warp); infer ms is the key frames'.")
    if warps:
        notes.append(warps)
    return "\n".join(rows) + "\n\n" + "\n".join(notes)
