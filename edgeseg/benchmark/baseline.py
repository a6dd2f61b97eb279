"""Earlier runs: comparison (`--baseline bench.json`: each row's latency over the same row's then) and merging
(`--merge bench.json`: the rows this run does not measure are carried into its reports, marked with their run).

Rows match on model, backend, precision, run size and batch. A shared machine's speed drifts from one run to the
next, so the summary also gives the ratio of the two runs' measured matrix-product peaks: when the peak moved as
much as the rows did, the machine changed, not the runtimes.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from edgeseg.errors import EdgesegError

KEY = ("model", "backend", "precision", "run_size", "batch")
TOLERANCE = 0.10  # rows within +-10 % count as agreeing: about what one row varies between runs on this CPU


def load(path: str | Path, option: str = "--baseline") -> dict:
    """A bench.json from an earlier `edgeseg bench`; a missing or foreign file is a one-line error naming `option`."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
        rows = doc["rows"]
        doc["_path"] = str(path)
        if not isinstance(rows, list) or not all(all(k in r for k in KEY) for r in rows):
            raise KeyError("rows")
    except OSError as e:
        raise EdgesegError(f"{option} {path}: cannot read it ({e.strerror}); pass the bench.json of an earlier run") from None
    except (ValueError, KeyError, TypeError):
        raise EdgesegError(f"{option} {path}: not a bench.json written by `edgeseg bench`; pass the bench.json of an earlier run") from None
    return doc


def peak_ratio(peaks: dict, base: dict) -> dict:
    """This run's measured CPU peaks over the earlier run's, per precision both measured."""
    base_peaks = base.get("peaks_gflops", {}).get("cpu", {})
    return {p: v / base_peaks[p] for p, v in peaks.get("cpu", {}).items() if base_peaks.get(p)}


def compare(rows: list[dict], base: dict, peaks: dict) -> dict:
    """Set row["vs_baseline"] (latency now / then) on the rows that both runs measured; return the summary."""
    then = {tuple(r[k] for k in KEY): r for r in base["rows"] if r.get("status") == "ok"}
    ratios = []
    for r in rows:
        old = then.get(tuple(r[k] for k in KEY))
        if r["status"] == "ok" and old is not None:
            r["vs_baseline"] = r["latency_median_ms"] / old["latency_median_ms"]
            ratios.append(r["vs_baseline"])
    return {"file": base["_path"], "date": base.get("date"), "rows": len(ratios),
            "within": sum(abs(x - 1) <= TOLERANCE for x in ratios),
            "geomean": math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios else None,
            "peak_ratio": peak_ratio(peaks, base)}


def summary_line(s: dict) -> str:
    if not s["rows"]:
        return f"Baseline {s['file']}: no row of this run was measured there."
    peaks = ", ".join(f"{p} {r:.2f}x" for p, r in s["peak_ratio"].items())
    return (f"Against the baseline {s['file']} ({s['date']}): latency now / then, geometric mean {s['geomean']:.2f} over "
            f"{s['rows']} rows, {s['within']} of them within ±{TOLERANCE:.0%}"
            + (f"; this run's measured peak over the baseline's: {peaks}" if peaks else "") + ".")


def carry(rows: list[dict], base: dict) -> list[dict]:
    """The earlier run's rows that `rows` does not measure again, each with its run's date in "run_date" (a row it
    carried itself keeps the date of the run that measured it)."""
    now = {tuple(r[k] for k in KEY) for r in rows}
    return [{**r, "run_date": r.get("run_date") or base.get("date")} for r in base["rows"]
            if tuple(r[k] for k in KEY) not in now]


def carried_line(carried: list[dict], base: dict, peaks: dict) -> str:
    ratio = ", ".join(f"{p} {r:.2f}x" for p, r in peak_ratio(peaks, base).items())
    dates = sorted({r["run_date"][:10] for r in carried if r.get("run_date")})
    return (f"{len(carried)} rows carried from {base['_path']} (measured on {', '.join(dates) or 'an unknown date'}, "
            f"marked in the Note column)" + (f"; this run's measured peak over that run's: {ratio}" if ratio else "") + ".")
