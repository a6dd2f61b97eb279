"""fp32 -> int8 Q/DQ from real calibration images (see edgeseg.export.int8), with the mIoU guard when it is on.

With the guard the measured mIoU loss decides (the guard keeps layers in float until it is within the gate);
without it, argmax agreement with fp32 at every validation size does.
"""
from __future__ import annotations

from pathlib import Path

from edgeseg.export import validate as V
from edgeseg.export.passes.base import Output, Pass


class INT8(Pass):
    name = "int8"

    def wanted(self, opts) -> bool:
        return "int8" in opts.precisions

    def prepare(self, ctx) -> None:
        from edgeseg.export.int8 import CalibrationImages, QuantConfig

        o = ctx.o
        self.folder = Path(o.calib) if o.calib else ctx.data
        files = V.pick(V.image_files(self.folder, None if o.calib else "train"), o.calib_images)
        self.cfg = QuantConfig(method=o.calib_method, percentile=o.percentile, target=ctx.int8_target[0])
        self.calib = CalibrationImages(files, ctx.meta)  # decoded now: an unreadable image stops the export here
        if o.guard:
            self.dataset = ctx.guard_set()

    def apply(self, ctx) -> list[Output]:
        import onnx

        from edgeseg.export.int8 import (
            attention_logits,
            calibration_summary,
            float_matmuls,
            guarded_quantize,
            quantize,
            size_dependent_nodes,
        )

        o, cfg, gates = ctx.o, self.cfg, ctx.gates
        path = ctx.stage_dir / "int8-quantized.onnx"
        target, why = ctx.int8_target
        info = {"calibration": calibration_summary(self.calib, cfg, self.folder),
                "target": {"requested": o.int8_target, "form": target, "why": why},
                "float_by_design": float_matmuls(ctx.models["fp32"]) + attention_logits(ctx.models["fp32"]),
                "size_dependent_float": len(size_dependent_nodes(ctx.models["fp32"]))}
        ctx.rep["int8"] = info
        ctx.log(f"fp32 -> int8 Q/DQ ({target} form: {why}; {cfg.method} calibration on {len(self.calib)} images)")
        decided_by = None
        try:
            if o.guard:
                result = guarded_quantize(ctx.files["fp32"], path, self.calib, cfg, lambda p: ctx.miou(p, self.dataset),
                                          max_loss=gates.int8_max_loss, progress=ctx.progress)
                info["guard"] = result.to_dict()
                ctx.guard_metrics.update(fp32=result.fp32, int8=result.int8)
                ctx.log(f"int8 guard: fp32 {100 * result.fp32_miou:.2f} -> int8 {100 * result.int8_miou:.2f} mIoU, "
                        f"{len(result.float_nodes)} layers left in float")
                decided_by = (f"mIoU guard: loss {result.loss:.2f} <= {gates.int8_max_loss:g} points with "
                              f"{len(result.float_nodes)} layers in float")
            else:
                quantize(ctx.files["fp32"], path, self.calib, cfg)
        finally:  # the calibration that ran (min/max where a histogram ran out of memory), in a failed pass's report too
            info["calibration"] = calibration_summary(self.calib, cfg, self.folder)
        if cfg.fallback:
            ctx.log(f"warning: {cfg.fallback}")
        meta = {"quantization": {"format": "QDQ", "target": target, "method": cfg.method,
                                 "float_nodes": info.get("guard", {}).get("float_nodes", [])}}
        return [Output("int8", onnx.load(str(path)), "int8", "fp32", decided_by=decided_by, meta=meta,
                       min_agree=None if decided_by else gates.int8_agreement)]
