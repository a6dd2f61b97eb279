"""The bench's outputs: a Markdown table, CSV, JSON (rows + machine) and the speed/accuracy plot, all written atomically."""
from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from edgeseg.fileio import atomic_path, write_json, write_text

CSV_FIELDS = ["model", "arch", "weights", "backend", "runtime", "device", "precision", "size", "run_size", "batch", "status",
              "latency_median_ms", "latency_p90_ms", "latency_p99_ms", "runs", "fps", "rss_peak_mb", "device_mem_mb",
              "params_m", "gflop", "gflops_per_s", "peak_fraction", "agreement", "miou", "eval_images", "others_cpu", "vs_baseline", "run_date", "note", "error"]


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (latency, accuracy) points no other point beats: none is as fast and as accurate, and better in
    one of the two. Sorted by latency."""
    front = []
    for i, (lat, acc) in enumerate(points):
        dominated = any(l2 <= lat and a2 >= acc and (l2 < lat or a2 > acc) for j, (l2, a2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


def _num(v, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def miou_cell(row: dict) -> str:
    if row.get("miou") is not None:
        return f"{100 * row['miou']:.1f}"
    return "untrained" if row.get("weights") == "random" else "—"


def markdown(rows: list[dict], skipped: list[dict], header: str) -> str:
    vs_base = any("vs_baseline" in r for r in rows)
    cols = ["Model", "Weights", "Backend", "Prec", "Size", "Batch", "Median ms", "p90 ms", "p99 ms", "FPS", "Peak RSS MB",
            "Params M", "GFLOP", "GFLOP/s", "% peak", "Agree %", "mIoU %"] + ["vs base"] * vs_base + ["Note"]
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "|".join("---" if c in ("Model", "Weights", "Backend", "Note") else "--:"
                                                                          for c in cols) + "|"]
    for r in rows:
        ok = r["status"] == "ok"
        note = r.get("note") or ""
        if not ok:
            note = f"**error**: {r.get('error', '')}" + (f"; {note}" if note else "")
        if r.get("run_date"):
            note = f"run of {r['run_date'][:10]}" + (f"; {note}" if note else "")
        cells = [r["model"], r["weights"], r.get("runtime") or r["backend"], r["precision"], r["run_size"], str(r["batch"]),
                 _num(r.get("latency_median_ms"), ".1f"), _num(r.get("latency_p90_ms"), ".1f"), _num(r.get("latency_p99_ms"), ".1f"),
                 _num(r.get("fps"), ".2f"), _num(r.get("rss_peak_mb"), ".0f"), _num(r.get("params_m"), ".2f"),
                 _num(r.get("gflop"), ".1f"), _num(r.get("gflops_per_s"), ".1f"),
                 _num(None if r.get("peak_fraction") is None else 100 * r["peak_fraction"], ".0f"),
                 _num(None if r.get("agreement") is None else 100 * r["agreement"], ".1f"),
                 miou_cell(r) if ok else "—"] + [_num(r.get("vs_baseline"), ".2f")] * vs_base + [note.replace("|", "\\|")]  # an escaped pipe: the cell reads max |diff|
        lines.append("| " + " | ".join(cells) + " |")
    if skipped:
        lines.append("")
        reasons: dict[str, list[str]] = {}
        for s in skipped:
            reasons.setdefault(s["reason"], [])
            combo = f"{s['backend']} {s['precision']}"
            if combo not in reasons[s["reason"]]:
                reasons[s["reason"]].append(combo)
        for reason, combos in reasons.items():
            lines.append(f"Not run ({', '.join(combos)}): {reason}.")
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_FIELDS})
    write_text(path, buf.getvalue())


def plot_points(rows: list[dict]) -> list[dict]:
    """One point per model and precision: its fastest backend, at the first size and batch of the run."""
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return []
    size, batch = ok[0]["size"], ok[0]["batch"]
    best: dict[tuple, dict] = {}
    for r in ok:
        if (r["size"], r["batch"]) != (size, batch):
            continue
        key = (r["model"], r["precision"])
        if key not in best or r["latency_median_ms"] < best[key]["latency_median_ms"]:
            best[key] = r
    return list(best.values())


def plot(path: Path, rows: list[dict], title: str) -> None:
    """Latency against mIoU, the Pareto front marked; models without a measured mIoU in a strip below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = plot_points(rows)
    scored = [p for p in pts if p.get("miou") is not None]
    unscored = [p for p in pts if p.get("miou") is None]
    markers = {"fp32": "o", "fp16": "s", "int8": "^"}
    models = sorted({p["model"] for p in pts})
    colours = {m: plt.cm.tab20(i % 20) for i, m in enumerate(models)}
    fig, (ax, strip) = plt.subplots(2, 1, figsize=(8, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1.4]})
    for i, p in enumerate(sorted(scored, key=lambda p: p["latency_median_ms"])):
        ax.scatter(p["latency_median_ms"], 100 * p["miou"], marker=markers.get(p["precision"], "o"), s=60,
                   color=colours[p["model"]], zorder=3)
        ax.annotate(f"{p['model']} {p['precision']} ({p['runtime']})", (p["latency_median_ms"], 100 * p["miou"]),
                    textcoords="offset points", xytext=(6, 6 if i % 2 == 0 else -14), fontsize=8)  # neighbours alternate
    if scored:
        front = [scored[i] for i in pareto_front([(p["latency_median_ms"], p["miou"]) for p in scored])]
        ax.step([p["latency_median_ms"] for p in front], [100 * p["miou"] for p in front], where="post", color="0.3",
                linestyle="--", linewidth=1, label="Pareto front", zorder=2)
        ax.scatter([p["latency_median_ms"] for p in front], [100 * p["miou"] for p in front], s=180, facecolors="none",
                   edgecolors="0.2", zorder=4)
        ax.legend(loc="best", fontsize=8)
        ax.margins(x=0.25)  # room for the labels
        lo, hi = min(100 * p["miou"] for p in scored), max(100 * p["miou"] for p in scored)
        pad = max(2.5, 0.25 * (hi - lo))  # at least 5 points tall: hundredths of a point must not look like a gap
        ax.set_ylim(lo - pad, hi + pad)
    else:
        ax.text(0.5, 0.5, "no mIoU measured (run with --data and trained models)", ha="center", va="center",
                transform=ax.transAxes, color="0.4")
    ax.set_ylabel("mIoU %")
    if pts:
        title += f"\n{pts[0]['size']}, batch {pts[0]['batch']}: the fastest runtime of each model and precision"
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    offsets = (8, -14, 20, -26)  # neighbours (sorted by latency) take turns above and below the line
    for i, p in enumerate(sorted(unscored, key=lambda p: p["latency_median_ms"])):
        strip.scatter(p["latency_median_ms"], 0, marker=markers.get(p["precision"], "o"), s=50, color=colours[p["model"]])
        strip.annotate(f"{p['model']} {p['precision']}", (p["latency_median_ms"], 0), textcoords="offset points",
                       xytext=(0, offsets[i % len(offsets)]), fontsize=7, ha="center")
    strip.set_yticks([])
    strip.set_ylabel("untrained /\nno mIoU", fontsize=8)
    strip.set_ylim(-1, 1)
    strip.margins(x=0.25)
    strip.set_xlabel("median latency, ms (lower is better)")
    strip.grid(True, axis="x", alpha=0.3)
    lats = [p["latency_median_ms"] for p in pts]
    if lats and max(lats) > 8 * min(lats):  # a wide spread (GPU next to CPU rows) reads better on a log axis
        strip.set_xscale("log")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def write_all(out: Path, rows: list[dict], skipped: list[dict], doc: dict, header: str) -> dict[str, Path]:
    """bench.md, bench.csv, bench.json (rows, skipped, machine, peaks, settings), machine.json, bench.png."""
    out = Path(out)
    files = {"table": out / "bench.md", "csv": out / "bench.csv", "json": out / "bench.json",
             "machine": out / "machine.json", "plot": out / "bench.png"}
    write_text(files["table"], markdown(rows, skipped, header))
    write_csv(files["csv"], rows)
    write_json(files["json"], {**doc, "rows": rows, "skipped": skipped})
    write_json(files["machine"], {"machine": doc["machine"], "peaks_gflops": doc["peaks_gflops"]})
    plot(files["plot"], rows, header.lstrip("# ").splitlines()[0])
    return files
