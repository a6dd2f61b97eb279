"""report.json -> report.md: what was written, how each step validated, accuracy per precision, INT8 settings."""
from __future__ import annotations

from edgeseg.export.validate import shown


def _pct(x) -> str:
    return "–" if x is None else shown("agreement", x)


def _sci(x) -> str:
    return "–" if x is None else shown("abs", x)


def to_markdown(rep: dict) -> str:
    src = rep.get("source", {})
    lines = [f"# Export report: {rep.get('name', '?')}", "",
             f"- status: **{rep.get('status')}**" + (f" — {rep['error']}" if rep.get("error") else ""),
             f"- source: `{src.get('path')}` (sha256 `{str(src.get('sha256'))[:16]}…`), arch `{rep.get('arch')}`",
             f"- data: `{rep.get('data')}`",
             "- options: " + ", ".join(f"{k}={v}" for k, v in rep.get("options", {}).items()), ""]
    outputs = rep.get("outputs", {})
    if outputs:
        lines += ["## Files", "", "| file | precision | graph | MB | sha256 |", "|---|---|---|---:|---|"]
        for f in outputs.values():
            lines.append(f"| `{f['file']}` | {f['precision']} | {f['graph']} | {f['bytes'] / 1e6:.1f} | "
                         f"`{f['sha256'][:12]}` |")
        lines.append("")
    checks = rep.get("validation", {})
    if checks:
        lines += ["## Validation (ONNX Runtime, CPU, real images)", "",
                  "| model | against | size HxW | batch | max abs diff | argmax agreement % | limit | result |",
                  "|---|---|---|---:|---:|---:|---|---|"]
        for key, v in checks.items():
            for r in v["sizes"]:
                lines.append(f"| {key} | {v['reference']} | {r['size'][0]}x{r['size'][1]} | {r['batch']} | "
                             f"{_sci(r.get('max_abs_diff'))} | {_pct(r['argmax_agreement'])} | {v['limit']} | "
                             f"{'pass' if r.get('passed', v['passed']) else 'FAIL'} |")
        lines.append("")
    failed = {k: v for k, v in rep.get("passes", {}).items() if v.get("status") == "failed"}
    failed_checks = {k: v["why"] for k, v in checks.items() if not v["passed"] and v.get("why")}
    if failed or failed_checks:
        lines += ["## What failed (not published)", ""]
        lines += [f"- {k}: {why}" for k, why in failed_checks.items()]
        lines += [f"- pass {k}: {v['why']}" for k, v in failed.items() if v.get("why")]
        lines.append("")
    skipped = {k: v for k, v in rep.get("passes", {}).items() if v.get("status") == "skipped"}
    if skipped:
        lines += ["- skipped: " + "; ".join(f"{k} ({v['why']})" for k, v in skipped.items()), ""]
    metrics = rep.get("metrics", {})
    if metrics:
        lines += [f"## Accuracy on {rep.get('guard', {}).get('split', 'the held-out split')}", "",
                  "| precision | mIoU % | mAcc % | images |", "|---|---:|---:|---:|"]
        for p, m in metrics.items():
            lines.append(f"| {p} | {_pct(m['miou'])} | {_pct(m['macc'])} | {m['images']} |")
        lines.append("")
    q = rep.get("int8")
    if q:
        c = q["calibration"]
        t = q.get("target")
        lines += ["## INT8", ""] + ([f"- Q/DQ form chosen: **{t['form']}** ({t['why']})"] if t else []) + [
                  f"- calibration: {c['images']} images from `{c['folder']}`, method {c['method']}"
                  + (f" ({c['percentile']} percentile)" if "percentile" in c else "")
                  + f", sizes {', '.join(f'{h}x{w}' for h, w in c['sizes'])}"
                  + (f" (fallback: {c['fallback']})" if "fallback" in c else ""),
                  (f"- Q/DQ form: {c['target']} (per-channel weights: {c['per_channel_weights']}); "
                   f"kept in float by design: the pooling and attention products and attention logits {', '.join(q['float_by_design']) or '(none)'} and "
                   f"{q.get('size_dependent_float', 0)} nodes of size-dependent arithmetic (flow-warp grids, "
                   f"index maths)")]
        g = q.get("guard")
        if g:
            lines.append(f"- guard (decides int8): fp32 {_pct(g['fp32_miou'])} → int8 {_pct(g['int8_miou'])} mIoU "
                         f"(loss {g['loss_points']:.2f} points, limit {g['max_loss']})")
            lines.append(f"- layers left in float by the guard ({len(g['float_nodes'])}): "
                         + (", ".join(f"`{n}`" for n in g["float_nodes"]) or "none"))
            if len(g["steps"]) > 1:
                lines += ["", "| layers in float | int8 mIoU % | loss (points) |", "|---:|---:|---:|"]
                lines += [f"| {s['float_nodes']} | {_pct(s['miou'])} | {s['loss_points']:.2f} |" for s in g["steps"]]
        lines.append("")
    fw = rep.get("flowwarp")
    if fw:
        lines += ["## FlowWarp plugin graphs", "", "| precision | GridSamples replaced | nodes before → after |",
                  "|---|---:|---|"]
        for p, v in fw.items():
            lines.append(f"| {p} | {v['replaced']} | {v['nodes_before']} → {v['nodes_after']} |")
        lines.append("")
    if rep.get("triton"):
        lines += ["## Triton", "", f"- model repository: `{rep['triton']['repository']}` "
                  f"(models: {', '.join(rep['triton']['models'])})", ""]
    return "\n".join(lines)
