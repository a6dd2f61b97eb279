"""fp32 -> mixed fp16 (explicit casts; see edgeseg.export.fp16), validated against the fp32 graph."""
from __future__ import annotations

from edgeseg.export.passes.base import Output, Pass


class FP16(Pass):
    name = "fp16"

    def wanted(self, opts) -> bool:
        return "fp16" in opts.precisions

    def apply(self, ctx) -> list[Output]:
        from edgeseg.export.fp16 import to_fp16

        ctx.log("fp32 -> mixed fp16")
        model, info = to_fp16(ctx.models["fp32"])
        ctx.rep["fp16"] = info
        return [Output("fp16", model, "fp16", "fp32", min_agree=ctx.gates.fp16_agreement)]
