"""Each flow-warp subgraph of every validated graph -> one edgeseg::FlowWarp node (see edgeseg.export.flowwarp)."""
from __future__ import annotations

from edgeseg.export.passes.base import Output, Pass


class FlowWarp(Pass):
    name = "flowwarp"
    _fp32_fused = None  # (model, info) of the fp32 graph when skip_reason already fused it

    def wanted(self, opts) -> bool:
        return bool(opts.flowwarp_plugin)

    def skip_reason(self, ctx) -> str | None:
        if ctx.o.flowwarp_plugin != "auto":
            return None
        if not any(n.op_type == "GridSample" for n in ctx.models["fp32"].graph.node):
            return "auto: the model has no GridSample"
        from edgeseg.export.flowwarp import FlowWarpMatchError, fuse_flowwarp

        try:  # auto leaves GridSamples that are not flow warps (deformable attention) as they are
            self._fp32_fused = fuse_flowwarp(ctx.models["fp32"], keep_others=True)
        except FlowWarpMatchError as e:
            return f"auto: {e}"
        return None

    def apply(self, ctx) -> list[Output]:
        from edgeseg.export.flowwarp import fuse_flowwarp

        ctx.rep["flowwarp"] = {}
        out = []
        for key in [k for k in ("fp32", "fp16", "int8") if k in ctx.models]:
            ctx.log(f"{key}: GridSample -> edgeseg::FlowWarp")
            if key == "fp32" and self._fp32_fused:
                model, info = self._fp32_fused
            else:
                model, info = fuse_flowwarp(ctx.models[key], keep_others=ctx.o.flowwarp_plugin == "auto")
            ctx.rep["flowwarp"][key] = info
            if key == "fp32":
                out.append(Output(f"{key}-flowwarp", model, key, key, max_abs=ctx.gates.plugin_max_abs))
            else:  # compare decisions, report the difference
                out.append(Output(f"{key}-flowwarp", model, key, key, min_agree=ctx.gates.plugin_agreement))
        return out
