"""Temporal mode: the network on key frames only; between them the last key frame's output is warped onto the
current frame along a cheap optical flow (runtime/motion.py).

What is warped (`target`): the key frame's class IDs (nearest neighbour, cv2.remap; the default), or its logits
(bilinear, the FlowWarp op) where logits are needed after the warp (confidence maps). Both agree with the every-
frame labels alike on real video (bench/bench_temporal.py), and a label map costs a seventh of the logits' warp.

Three parts, called by the pipeline stages in frame order:
- `plan(slot)` (preprocess stage) makes the frame's small grey image, decides whether it is a key frame, and for a
  warped frame computes the flow from the key frame to it; warped frames need no model input.
- `run(slot, out, backend)` (infer stage) runs the network on a key frame; for a warped frame it warps the kept
  logits with the frame's flow into `out` (target logits) or returns None (target labels).
- `labels(slot, y, post)` (postprocess stage): the frame's class IDs at model resolution: of its own logits (a key
  frame's are kept for the frames after it), or the key frame's warped along the frame's flow.

Key frames: `fixed:K` every K-th source frame; `auto` when a cheap signal says the warp is no longer good enough
(the image warped by the same flow leaves a residual above `residual`, or more than `border` of the frame samples
outside the key frame), and at the latest every `max_gap` source frames. In every mode a frame becomes a key frame
(and the logic resets) on a scene cut (grey histograms disagree, or the residual is above `cut_residual`), a frame
of another size, a live source that stalled for more than `max_stall_s`, or a flow that could not be computed: no frame is
ever shown warped along a flow that does not exist.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import cv2
import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.runtime.motion import DisFlow, FlowWarp, MotionEstimator, sample_maps
from edgeseg.runtime.stats import Series

TEMPORAL_HELP = ("off: the network on every frame; fixed:K: on every K-th frame, warping its output to the frames "
                 "between; auto: key frames chosen from the motion (at least every 10th frame)")
REASONS = ("first", "schedule", "motion", "cut", "size", "stall", "flow")


@dataclass(frozen=True)
class TemporalSpec:
    mode: str                   # fixed | auto
    k: int = 0                  # fixed: the key-frame period in source frames
    max_gap: int = 10           # auto: a key frame at least every max_gap source frames
    residual: float = 7.0       # auto: mean |warped key grey - grey| (0-255) above which the frame is a key frame
    border: float = 0.08        # auto: fraction of pixels sampling outside the key frame above which likewise
    cut_residual: float = 40.0  # every mode: a residual this large is a scene cut
    cut_hist: float = 0.6       # every mode: grey-histogram correlation with the key frame below this is a cut
    max_stall_s: float = 1.0    # live sources: a frame captured this long after the key frame is a key frame

    @property
    def text(self) -> str:
        return f"fixed:{self.k}" if self.mode == "fixed" else "auto"


def parse_temporal(text: str | None) -> TemporalSpec | None:
    """'off' -> None, 'fixed:K' (K >= 1), 'auto'; anything else is a one-line EdgesegError."""
    t = (text or "off").strip().lower()
    if t == "off":
        return None
    if t == "auto":
        return TemporalSpec("auto")
    if t.startswith("fixed:"):
        try:
            k = int(t[len("fixed:"):])
        except ValueError:
            k = 0
        if k >= 1:
            return TemporalSpec("fixed", k=k)
        raise EdgesegError(f"--temporal {text!r}: K must be a whole number >= 1, e.g. fixed:3 (fixed:1 runs the "
                           f"network on every frame)")
    raise EdgesegError(f"--temporal {text!r}: choose off, fixed:K (e.g. fixed:3) or auto")


class Plan:
    """What plan() decided for one frame: a key frame (and why), or the flow [2,h,w] (flow-image pixels) to warp."""

    __slots__ = ("flow", "key", "motion", "reason", "residual")

    def __init__(self, key: bool, reason: str | None = None, flow: np.ndarray | None = None,
                 residual: float | None = None, motion: float | None = None):
        self.key, self.reason, self.flow, self.residual, self.motion = key, reason, flow, residual, motion


class Temporal:
    """Key-frame logic and warping for one stream at one model input size (H, W).

    The flow runs on grey frames at `flow_scale` of the model size; it is upsampled to the model size to warp the
    logits there (bilinear, DESIGN.md's FlowWarp: the `edgeseg::FlowWarp` op when built, else cv2.remap).
    """

    def __init__(self, spec: TemporalSpec, model_hw: tuple[int, int], motion: MotionEstimator | None = None,
                 warp: FlowWarp | None = None, flow_scale: float = 0.5, threads: int | None = None,
                 live: bool = False, target: str = "labels"):
        # A file's frames are captured when the pipeline has room for them: only a live source's capture times
        # tell a stall.
        if target not in ("labels", "logits"):
            raise EdgesegError(f"temporal warp target {target!r}: choose labels or logits")
        self.spec, self.model_hw, self.live, self.target = spec, tuple(model_hw), live, target
        self.motion = motion or DisFlow()
        self.warper = (warp or FlowWarp("auto", threads=threads)) if target == "logits" else None
        self._key_labels = None  # postprocess stage (target labels): the last key frame's class IDs
        h, w = self.model_hw
        self.flow_hw = (max(8, round(h * flow_scale)), max(8, round(w * flow_scale)))
        self._key = None  # plan stage: (grey, histogram, frame shape, source index, capture time) of the last key
        self._key_y = None  # infer stage: the last key frame's network output
        self._flow_full = None
        self.counts = dict.fromkeys(REASONS, 0)
        self.warped = 0
        self.series = {name: Series() for name in ("flow_ms", "warp_ms", "motion_px", "residual")}

    # ---- plan stage ----
    def _grey(self, frame: np.ndarray) -> np.ndarray:
        h, w = self.flow_hw
        small = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
        return cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)

    def plan(self, slot) -> bool:
        """Decide for slot (index, t0, frame) and set slot.plan; True when the frame will be warped (it needs no
        model input)."""
        grey = self._grey(slot.frame)
        hist = cv2.calcHist([grey], [0], None, [32], [0, 256])
        p = self._decide(slot, grey, hist)
        if p.key:
            self.counts[p.reason] += 1
            self._key = (grey, hist, slot.frame.shape, slot.index, slot.t0)
        else:
            self.warped += 1
        slot.plan = p
        return not p.key

    def _decide(self, slot, grey: np.ndarray, hist: np.ndarray) -> Plan:
        if self._key is None:
            return Plan(True, "first")
        kgrey, khist, kshape, kindex, kt0 = self._key
        if slot.frame.shape != kshape:
            return Plan(True, "size")
        if self.live and slot.t0 - kt0 > self.spec.max_stall_s:
            return Plan(True, "stall")
        gap = slot.index - kindex
        if cv2.compareHist(khist, hist, cv2.HISTCMP_CORREL) < self.spec.cut_hist:
            return Plan(True, "cut")
        if self.spec.mode == "fixed" and gap >= self.spec.k:
            return Plan(True, "schedule")
        if self.spec.mode == "auto" and gap >= self.spec.max_gap:
            return Plan(True, "schedule")
        t = time.perf_counter()
        try:
            flow = self.motion.flow(kgrey, grey)
        except cv2.error:
            return Plan(True, "flow")
        if flow is None or flow.shape != (2, *grey.shape) or not np.isfinite(flow).all():
            return Plan(True, "flow")
        residual, border, motion = self._signal(kgrey, grey, flow)
        self.series["flow_ms"].add((time.perf_counter() - t) * 1e3)
        self.series["motion_px"].add(motion)
        self.series["residual"].add(residual)
        if residual > self.spec.cut_residual:
            return Plan(True, "cut", residual=residual, motion=motion)
        if self.spec.mode == "auto" and (residual > self.spec.residual or border > self.spec.border):
            return Plan(True, "motion", residual=residual, motion=motion)
        return Plan(False, flow=flow, residual=residual, motion=motion)

    @staticmethod
    def _signal(kgrey: np.ndarray, grey: np.ndarray, flow: np.ndarray) -> tuple[float, float, float]:
        """(mean |key grey warped by flow - grey| over pixels sampling inside, fraction sampling outside, mean
        flow magnitude in flow-image pixels)."""
        h, w = grey.shape
        mx = flow[0] + np.arange(w, dtype=np.float32)[None, :]
        my = flow[1] + np.arange(h, dtype=np.float32)[:, None]
        inside = (mx >= 0) & (mx <= w - 1) & (my >= 0) & (my <= h - 1)
        warped = cv2.remap(kgrey, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        n = int(inside.sum())
        diff = cv2.absdiff(warped, grey)
        residual = float(diff[inside].mean()) if n else 255.0
        motion = float(np.sqrt(flow[0] ** 2 + flow[1] ** 2).mean())
        return residual, 1.0 - n / inside.size, motion

    # ---- infer stage ----
    def run(self, slot, out: np.ndarray, backend) -> np.ndarray | None:
        """The network's output for slot into `out` on a key frame; on a warped frame the key frame's logits warped
        into `out` (target logits), or None: the postprocess stage warps the labels (`labels`)."""
        p = slot.plan
        if p.key:
            t = time.perf_counter()
            y = backend.infer(slot.x, out=out)
            slot.times["infer"] = (time.perf_counter() - t) * 1e3
            if self.target == "logits":
                if self._key_y is None or self._key_y.shape != y.shape or self._key_y.dtype != y.dtype:
                    self._key_y = np.empty_like(y)
                np.copyto(self._key_y, y)
            return y
        if self.target == "labels":
            return None
        t = time.perf_counter()
        y = self.warper.warp(self._key_y, self._model_flow(p.flow, out.shape[-2:]), out=out)
        self.series["warp_ms"].add((time.perf_counter() - t) * 1e3)
        p.flow = None
        return y

    def labels(self, slot, y: np.ndarray | None, post) -> np.ndarray:
        """slot's class IDs at the output's resolution: `post.labels(y)` of its own (or warped) logits, or the last
        key frame's labels warped along its flow (nearest; a pixel sampling outside takes the nearest edge's)."""
        p = slot.plan
        if y is not None:
            labels = post.labels(y)
            if p.key and self.target == "labels":
                if self._key_labels is None or self._key_labels.shape != labels.shape:
                    self._key_labels = np.empty_like(labels)
                np.copyto(self._key_labels, labels)
            return labels
        t = time.perf_counter()
        hw = self._key_labels.shape
        mx, my = sample_maps(self._model_flow(p.flow, hw), hw)
        out = cv2.remap(self._key_labels, mx, my, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)
        self.series["warp_ms"].add((time.perf_counter() - t) * 1e3)
        p.flow = None
        return out

    def _model_flow(self, flow: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
        """The flow-image flow resampled to the output grid, in its pixels."""
        H, W = hw
        if flow.shape[1:] == (H, W):
            return flow
        if self._flow_full is None or self._flow_full.shape[1:] != (H, W):
            self._flow_full = np.empty((2, H, W), np.float32)
        for c, scale in ((0, W / flow.shape[2]), (1, H / flow.shape[1])):
            cv2.resize(flow[c], (W, H), dst=self._flow_full[c], interpolation=cv2.INTER_LINEAR)
            self._flow_full[c] *= scale
        return self._flow_full

    def summary(self) -> dict:
        keys = sum(self.counts.values())
        return {"mode": self.spec.text, "key_frames": keys, "warped_frames": self.warped,
                "key_reasons": {k: v for k, v in self.counts.items() if v}, "motion": self.motion.name,
                "warped": self.target, "warp": self.warper.backend if self.warper else "opencv",
                "flow_size": list(self.flow_hw),
                **{name: s.summary() for name, s in self.series.items()}}
