"""Per-stage timing, end-to-end latency percentiles, FPS and drop counts: the live status line and the run summary."""
from __future__ import annotations

import random
import threading
from collections import deque

import numpy as np

STAGES = ("capture", "preprocess", "infer", "postprocess", "render", "write")


class Series:
    """Millisecond samples: exact count and mean, percentiles over a uniform reservoir (bounded memory on endless
    streams), and a window of the most recent samples for the live status line."""

    def __init__(self, reservoir: int = 1 << 16, window: int = 100, seed: int = 0):
        self.count, self.total = 0, 0.0
        self._cap, self._rng = reservoir, random.Random(seed)
        self._sample: list[float] = []
        self.recent: deque[float] = deque(maxlen=window)

    def add(self, ms: float) -> None:
        self.count += 1
        self.total += ms
        self.recent.append(ms)
        if len(self._sample) < self._cap:
            self._sample.append(ms)
        else:  # reservoir sampling (Algorithm R)
            j = self._rng.randrange(self.count)
            if j < self._cap:
                self._sample[j] = ms

    def summary(self) -> dict:
        if not self.count:
            return {"mean": None, "p50": None, "p95": None, "p99": None}
        p50, p95, p99 = np.percentile(self._sample, [50, 95, 99])
        return {"mean": round(self.total / self.count, 3), "p50": round(float(p50), 3), "p95": round(float(p95), 3),
                "p99": round(float(p99), 3)}

    def recent_p(self, q: float) -> float:
        return float(np.percentile(self.recent, q)) if self.recent else float("nan")


class Stats:
    """Filled by the pipeline's output stage (frame_done) and capture stage (dropped); read by the status line."""

    def __init__(self):
        self.stages = {s: Series() for s in STAGES}
        self.latency = Series()
        self.frames = self.dropped = 0
        self.t_first = self.t_last = None
        self._done: deque[float] = deque(maxlen=60)
        self._lock = threading.Lock()

    def frame_done(self, t_capture: float, t_done: float, times: dict[str, float]) -> None:
        with self._lock:
            self.frames += 1
            self.latency.add((t_done - t_capture) * 1e3)
            for name, ms in times.items():
                self.stages[name].add(ms)
            self.t_first = t_done if self.t_first is None else self.t_first
            self.t_last = t_done
            self._done.append(t_done)

    def drop(self, n: int = 1) -> None:
        with self._lock:
            self.dropped += n

    def fps(self) -> float:
        """Frames completed per second, between the first and the last completed frame."""
        if self.frames < 2 or self.t_last == self.t_first:
            return 0.0
        return (self.frames - 1) / (self.t_last - self.t_first)

    def recent_fps(self) -> float:
        d = self._done
        return (len(d) - 1) / (d[-1] - d[0]) if len(d) > 1 and d[-1] > d[0] else 0.0

    def status_line(self, extra: str = "") -> str:
        with self._lock:
            if not self.frames:
                return f"waiting for the first frame{extra}"
            lat = self.latency
            stages = " ".join(f"{_short(s)} {self.stages[s].recent_p(50):.1f}" for s in STAGES if self.stages[s].count)
            return (f"{self.frames} frames | {self.recent_fps():.1f} FPS | latency p50 {lat.recent_p(50):.0f} "
                    f"p95 {lat.recent_p(95):.0f} p99 {lat.recent_p(99):.0f} ms | {stages} ms | dropped {self.dropped}{extra}")

    def summary(self) -> dict:
        with self._lock:
            lat = self.latency.summary()
            return {"frames": self.frames, "fps": round(self.fps(), 3),
                    "latency_ms": {k: lat[k] for k in ("p50", "p95", "p99", "mean")},
                    "stages": {s: self.stages[s].summary() for s in STAGES if self.stages[s].count},
                    "dropped": self.dropped}


def _short(stage: str) -> str:
    return {"capture": "cap", "preprocess": "pre", "infer": "infer", "postprocess": "post", "render": "render",
            "write": "write"}[stage]
