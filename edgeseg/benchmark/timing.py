"""Latency measurement and the process's memory, torch-free."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np


def measure(fn: Callable[[], object], *, min_time: float, min_runs: int = 10, max_runs: int = 10000,
            warmup: int = 2) -> dict:
    """Call fn() `warmup` times, then until both `min_time` seconds and `min_runs` calls have passed.

    Returns latency statistics in milliseconds over the measured calls. With fewer than 100 runs p99 is
    close to the maximum: the count is reported so the reader can judge.
    """
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start < min_time):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - start  # the loop's own time, which min_time bounds (the calls' sum is a bit less)
    ms = np.asarray(times) * 1e3
    return {"median": float(np.median(ms)), "p90": float(np.percentile(ms, 90)), "p99": float(np.percentile(ms, 99)),
            "mean": float(ms.mean()), "min": float(ms.min()), "runs": len(ms), "measured_s": elapsed}


def rss_mb() -> dict:
    """Current and peak resident memory of this process (Linux /proc), in MiB; empty elsewhere."""
    try:
        text = open("/proc/self/status").read()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out["rss" if key == "VmRSS" else "peak"] = int(value.split()[0]) / 1024.0
    return out


def cpu_seconds() -> dict:
    """Busy CPU seconds of the whole machine (Linux /proc/stat) and of this process with its finished children."""
    import os
    import resource

    own = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for f in ("ru_utime", "ru_stime"))
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
    except OSError:
        return {"own": own}
    idle = ticks[3] + ticks[4]  # idle + iowait
    return {"own": own, "machine": (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")}


def others_share(before: dict, after: dict, wall_s: float) -> float | None:
    """The fraction of the machine's CPU time that other processes took between two cpu_seconds() readings."""
    if "machine" not in before or wall_s <= 0:
        return None
    import os

    other = (after["machine"] - before["machine"]) - (after["own"] - before["own"])
    return min(1.0, max(0.0, other / (wall_s * (os.cpu_count() or 1))))
