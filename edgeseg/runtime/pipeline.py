"""The streaming loop: capture -> preprocess -> infer -> postprocess -> render/write, one thread per stage, bounded
channels between them, so the stages overlap in time.

Live sources get the latest-frame policy: capture overwrites a frame that preprocessing has not taken yet, and
preprocessing overwrites a prepared frame that inference has not taken yet (both counted in `dropped`), so each
inference starts on the freshest frame.
Files are never dropped: a full channel makes the producer wait. Frame, input, output and label buffers come from
pools and are reused; nothing large is allocated per frame after the first few.

Stopping (a signal, a closed window, --max-frames) ends capture, preprocessing and inference at once; frames
already inferred are still rendered and written, then the sinks are finalised. A stage stuck in a blocking call
(a stalled camera) is abandoned: its thread is a daemon.
"""
from __future__ import annotations

import sys
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.meta import classes_of
from edgeseg.runtime.postprocess import Postprocessor, label_dtype, upsample
from edgeseg.runtime.preprocess import Preprocessor, model_size
from edgeseg.runtime.render import Renderer
from edgeseg.runtime.sinks import ImageDirSink, Sink
from edgeseg.runtime.stats import Stats
from edgeseg.runtime.temporal import Temporal, parse_temporal

END, STOP = object(), object()  # a channel's producer finished / the pipeline is stopping
POLICIES = ("auto", "latest", "all")
STOP_GRACE_S = 0.8  # after a stop request, frames already inferred get this long to be written


class Channel:
    """A bounded FIFO between two stages. close(): the producer is done (get returns END once empty); abort(): get
    returns STOP at once and put refuses."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: deque = deque()
        self._cond = threading.Condition()
        self._closed = self._aborted = False

    def put(self, item) -> bool:
        with self._cond:
            while len(self._items) >= self.capacity and not self._aborted:
                self._cond.wait(0.1)
            if self._aborted:
                return False
            self._items.append(item)
            self._cond.notify_all()
            return True

    def put_latest(self, item):
        """Put without waiting; when full, the oldest item makes room and is returned (else None)."""
        with self._cond:
            old = self._items.popleft() if len(self._items) >= self.capacity else None
            self._items.append(item)
            self._cond.notify_all()
            return old

    def get(self):
        with self._cond:
            while not self._items and not self._closed and not self._aborted:
                self._cond.wait(0.1)
            if self._aborted:
                return STOP
            if self._items:
                item = self._items.popleft()
                self._cond.notify_all()
                return item
            return END

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def abort(self) -> None:
        with self._cond:
            self._aborted = True
            self._cond.notify_all()


class Pool:
    """At most `size` buffers made by `factory` on demand, then reused; acquire() waits for a release, or returns
    STOP once `stop` is set."""

    def __init__(self, size: int, factory, stop: threading.Event):
        self._free: deque = deque()
        self._made, self._size, self._factory, self._stop = 0, size, factory, stop
        self._cond = threading.Condition()

    def acquire(self):
        with self._cond:
            while not self._free and self._made >= self._size:
                if self._stop.is_set():
                    return STOP
                self._cond.wait(0.1)
            if self._free:
                return self._free.popleft()
            self._made += 1
        return self._factory()

    def release(self, buf) -> None:
        if buf is None:
            return
        with self._cond:
            self._free.append(buf)
            self._cond.notify()


class Slot:
    """One frame in flight and what the stages made of it."""

    __slots__ = ("index", "name", "t0", "frame", "x", "y", "labels", "conf", "times", "plan")

    def __init__(self, index: int, name: str | None, frame: np.ndarray, capture_ms: float):
        self.index, self.name, self.frame = index, name, frame
        self.t0 = time.perf_counter()
        self.x = self.y = self.labels = self.conf = self.plan = None
        self.times = {"capture": capture_ms}


class Pipeline:
    """Run `backend` on `source` and write to `sinks`; run() returns the summary dict (see Stats.summary).

    The pipeline closes the source and the sinks; the backend stays the caller's (close it once `busy` is False).
    """

    def __init__(self, source, backend, sinks: list[Sink] = (), *, labels_dir: Path | None = None,
                 confidence_dir: Path | None = None, vis: str = "overlay", alpha: float = 0.5, legend: bool = True,
                 caption: bool = True, size: tuple[int, int] | None = None, policy: str = "auto", max_frames: int = 0,
                 status: bool = True, status_stream=None, temporal: str | None = None):
        if policy not in POLICIES:
            raise EdgesegError(f"--policy {policy!r}: choose one of {', '.join(POLICIES)}")
        self.temporal_spec, self.temporal = parse_temporal(temporal), None
        if self.temporal_spec and backend.meta["head"] != "logits":
            raise EdgesegError(f"--temporal {temporal}: {backend.path.name} has an argmax head; warping needs a logits model")
        self.source, self.backend, self.sinks = source, backend, list(sinks)
        self.meta = backend.meta
        self.classes = classes_of(self.meta)
        if confidence_dir and self.meta["head"] != "logits":
            raise EdgesegError(f"--save-confidence: {backend.path.name} has an argmax head (labels only); use a logits model")
        self.label_sink = ImageDirSink(labels_dir, ".png") if labels_dir else None
        self.conf_sink = ImageDirSink(confidence_dir, ".png") if confidence_dir else None
        visual = [s for s in self.sinks if type(s) is not Sink]
        self.renderer = Renderer(self.classes, vis, alpha, legend) if visual else None
        self.caption = caption
        self.requested_size, self.max_frames = size, max_frames
        # A file paced with --rate is a camera stand-in: it gets a camera's latest-frame policy.
        self.live = (source.live or source.paced) if policy == "auto" else policy == "latest"
        self.status, self.status_stream = status, status_stream or sys.stderr
        self.stats = Stats()
        self.stop = source.stop  # one event: a stop also ends the source's backoff and pacing waits
        self.hard_stop = threading.Event()
        self.end_reason = ""
        self.error: BaseException | None = None
        self.model_hw = self.frame_hw = None
        # One frame between stages is enough to keep inference busy (every other stage is far faster); more would
        # only add queueing latency.
        self.q_cap, self.q_pre, self.q_inf, self.q_post = (Channel(1) for _ in range(4))

    # ---- control ----
    def request_stop(self, reason: str) -> None:
        if not self.stop.is_set():
            self.end_reason = self.end_reason or reason
            self.stop.set()
            self.q_cap.abort()
            self.q_pre.abort()

    def _fail(self, e: BaseException) -> None:
        if self.error is None:
            self.error = e
        self.request_stop("error")
        self.hard_stop.set()
        self.q_inf.abort()
        self.q_post.abort()

    # ---- startup: sizes, buffers, warm-up ----
    def _startup(self) -> Slot:
        t = time.perf_counter()
        got = self.source.read()
        if got is None:
            raise EdgesegError(f"{self.source.name}: no frame could be read ({self.source.end_reason or 'stopped'}); "
                               f"check the source")
        frame, name = got
        capture_ms = (time.perf_counter() - t - self.source.waited) * 1e3
        self.frame_hw = frame.shape[:2]
        self.model_hw = model_size(self.frame_hw, self.meta, self.backend.preferred_hw, self.requested_size)
        self.pre = Preprocessor(self.meta, self.model_hw)
        x = self.pre(frame)
        out_shape = self.backend.output_shape(x.shape)  # also the warm-up run
        head, n = self.meta["head"], len(self.classes.names)
        if head == "logits" and (len(out_shape) != 4 or out_shape[1] != n):
            raise EdgesegError(f"{self.backend.path.name}: output {list(out_shape)} is not logits [N,{n},H,W] for the "
                               f"{n} classes of its metadata; re-export the model")
        if head == "argmax" and len(out_shape) != 3:
            raise EdgesegError(f"{self.backend.path.name}: output {list(out_shape)} is not labels [N,H,W] as its metadata says")
        self.post = Postprocessor(head, n, out_shape[-2:], scores_hw=self.model_hw)
        if self.temporal_spec:
            # confidence maps need the logits of every frame: then the logits are warped, else the labels
            self.temporal = Temporal(self.temporal_spec, self.model_hw, live=self.live,
                                     target="logits" if self.conf_sink is not None else "labels")
        caps = [q.capacity for q in (self.q_cap, self.q_pre, self.q_inf, self.q_post)]
        self.frames = Pool(sum(caps) + 6, lambda: None, self.stop)  # None: the decoder allocates, then it is reused
        self.inputs = Pool(self.q_pre.capacity + 2, self.pre.new_input, self.stop)
        self.outputs = Pool(self.q_inf.capacity + 2, lambda: np.empty(out_shape, self.backend.output_dtype), self.stop)
        dtype = label_dtype(n)
        self.label_bufs = Pool(self.q_post.capacity + 2, lambda: np.empty(self.frame_hw, dtype), self.hard_stop)
        self.conf_bufs = Pool(self.q_post.capacity + 2, lambda: np.empty(self.frame_hw, np.uint8), self.hard_stop)
        self.inputs.release(x)
        return Slot(0, name, frame, capture_ms)

    # ---- stages ----
    def _stage(self, fn, out: Channel | None):
        def body():
            try:
                fn()
            except BaseException as e:  # reported by run() after the sinks are finalised
                self._fail(e)
            finally:
                if out is not None:
                    out.close()
        return body

    def _capture(self):
        src, index = self.source, 1
        try:
            while not self.stop.is_set():
                if self.max_frames and not self.live and index >= self.max_frames:
                    self.end_reason = self.end_reason or "max frames"
                    return
                buf = self.frames.acquire()
                if buf is STOP:
                    return
                t = time.perf_counter()
                got = src.read(buf)
                if got is None:
                    self.end_reason = self.end_reason or src.end_reason
                    return
                slot = Slot(index, got[1], got[0], (time.perf_counter() - t - src.waited) * 1e3)  # decode, not pacing
                index += 1
                if self.live:
                    old = self.q_cap.put_latest(slot)
                    if old is not None:
                        self.stats.drop()
                        self.frames.release(old.frame)
                elif not self.q_cap.put(slot):
                    return
        finally:
            src.close()

    def _preprocess(self):
        while True:
            slot = self.q_cap.get()
            if slot is END or slot is STOP:
                return
            warped = self.temporal is not None and self.temporal.plan(slot)  # a warped frame needs no model input
            x = None if warped else self.inputs.acquire()
            if x is STOP:
                return
            t = time.perf_counter()
            if x is not None:
                slot.x = self.pre(slot.frame, out=x)
            slot.times["preprocess"] = (time.perf_counter() - t) * 1e3
            # Temporal mode plans every frame it is given (key frames are chosen here), so none may be dropped
            # after planning; the capture stage still keeps only the latest frame.
            if self.live and self.temporal is None:  # keep the freshest frame ready for inference; a newer one replaces it
                old = self.q_pre.put_latest(slot)
                if old is not None:
                    self.stats.drop()
                    self.inputs.release(old.x)
                    self.frames.release(old.frame)
            elif not self.q_pre.put(slot):
                return

    def _infer(self):
        while not self.stop.is_set():
            slot = self.q_pre.get()
            if slot is END or slot is STOP:
                return
            y = self.outputs.acquire()
            if y is STOP:
                return
            t = time.perf_counter()
            if self.temporal is not None:  # the network on key frames, a warp of its output on the others
                slot.y = self.temporal.run(slot, y, self.backend)
                if slot.y is None:  # the labels are warped in the postprocess stage
                    self.outputs.release(y)
            else:
                slot.y = self.backend.infer(slot.x, out=y)
                slot.times["infer"] = (time.perf_counter() - t) * 1e3
            self.inputs.release(slot.x)
            slot.x = None
            if not self.q_inf.put(slot):
                return

    def _postprocess(self):
        while True:
            slot = self.q_inf.get()
            if slot is END or slot is STOP:
                return
            t = time.perf_counter()
            hw = slot.frame.shape[:2]
            labels = self.temporal.labels(slot, slot.y, self.post) if self.temporal else self.post.labels(slot.y)
            buf = self.label_bufs.acquire()
            if buf is STOP:
                return
            slot.labels = upsample(labels, hw, out=buf)
            if self.conf_sink is not None:
                buf = self.conf_bufs.acquire()
                if buf is STOP:
                    return
                slot.conf = upsample(self.post.confidence(slot.y), hw, out=buf, nearest=False)
            if slot.y is not None:
                self.outputs.release(slot.y)
            slot.y = None
            slot.times["postprocess"] = (time.perf_counter() - t) * 1e3
            if not self.q_post.put(slot):
                return

    def _output(self):
        try:
            while True:
                slot = self.q_post.get()
                if slot is END or slot is STOP:
                    return
                self._write(slot)
                self.frames.release(slot.frame)
                self.label_bufs.release(slot.labels)
                self.conf_bufs.release(slot.conf)
        finally:
            self._close_sinks()

    def _write(self, slot: Slot) -> None:
        if self.max_frames and self.stats.frames >= self.max_frames:
            self.request_stop("max frames")
            return
        keep = True
        if self.renderer is not None:
            t = time.perf_counter()
            canvas = self.renderer(slot.frame, slot.labels, self._caption() if self.caption else None)
            slot.times["render"] = (time.perf_counter() - t) * 1e3
        t = time.perf_counter()
        for sink in self.sinks:
            if type(sink) is not Sink:
                keep = sink.write(canvas, slot.index, slot.name, slot.t0 if self.live else None) and keep
        if self.label_sink is not None:
            self.label_sink.write(slot.labels, slot.index, slot.name)
        if self.conf_sink is not None:
            self.conf_sink.write(slot.conf, slot.index, slot.name)
        done = time.perf_counter()
        slot.times["write"] = (done - t) * 1e3
        self.stats.frame_done(slot.t0, done, slot.times)
        if not keep:
            self.request_stop("window closed")
        elif self.max_frames and self.stats.frames >= self.max_frames:
            self.request_stop("max frames")

    def _caption(self) -> str:
        fps = self.stats.recent_fps()
        lat = self.stats.latency.recent_p(50)
        fps_text = f"{fps:.1f} FPS" if fps else "-- FPS"
        lat_text = f"{lat:.0f} ms" if lat == lat else "-- ms"
        if not self.live:  # a file is read ahead of the model: its latency is queueing, not what a viewer waits
            infer = self.stats.stages["infer"].recent_p(50)
            lat_text = f"infer {infer:.0f} ms" if infer == infer else "infer -- ms"
        return f"{fps_text} | {lat_text} | {self.meta['arch']} {self.meta.get('precision', '')} {self.backend.name}"

    def _close_sinks(self) -> None:
        for sink in [*self.sinks, self.label_sink, self.conf_sink]:
            if sink is not None:
                try:
                    sink.close()
                except BaseException as e:
                    if self.error is None:
                        self.error = e

    @property
    def busy(self) -> bool:
        """A stage thread still runs (cut short in a blocking call): the backend may still be in use."""
        return any(t.is_alive() for t in getattr(self, "threads", {}).values())

    # ---- run ----
    def run(self) -> dict:
        t_start = time.perf_counter()
        try:
            first = self._startup()
        except BaseException:
            self._close_sinks()
            self.source.close()
            raise
        self.q_cap.put(first)
        first.t0 = time.perf_counter()
        stages = [("capture", self._capture, self.q_cap), ("preprocess", self._preprocess, self.q_pre),
                  ("infer", self._infer, self.q_inf), ("postprocess", self._postprocess, self.q_post),
                  ("output", self._output, None)]
        self.threads = {name: threading.Thread(target=self._stage(fn, out), name=f"edgeseg-{name}", daemon=True)
                        for name, fn, out in stages}
        for t in self.threads.values():
            t.start()
        self._wait(self.threads["output"])
        deadline = time.perf_counter() + 0.3  # the other stages end at once, unless stuck in a blocking call
        for t in self.threads.values():
            t.join(timeout=max(0.0, deadline - time.perf_counter()))
        wall = time.perf_counter() - t_start
        if self.status:
            self._print_status(final=True)
        if self.error is not None:
            raise self.error
        summary = self.stats.summary()
        summary.update({
            "end": self.end_reason or self.source.end_reason or "end of stream",
            "corrupt": self.source.corrupt, "reconnects": self.source.reconnects, "wall_s": round(wall, 3),
            "source": self.source.name, "live": self.live, "paced": self.source.paced, "frame_size": list(self.frame_hw),
            "model_input": list(self.model_hw),
            "model": str(self.backend.path), "backend": self.backend.name, "precision": self.meta.get("precision"),
            "outputs": [s.uri for s in self.sinks],
        })
        if self.temporal is not None:
            summary["temporal"] = self.temporal.summary()
        return summary

    def _wait(self, output: threading.Thread) -> None:
        """Print the status line until the output stage ends; after a stop, give it STOP_GRACE_S, then cut it short."""
        tty = self.status and getattr(self.status_stream, "isatty", lambda: False)()
        period, last, stop_seen = (0.25 if tty else 5.0), time.perf_counter(), None
        while output.is_alive():
            output.join(timeout=0.05)
            now = time.perf_counter()
            if self.status and now - last >= period:
                self._print_status(tty=tty)
                last = now
            if self.stop.is_set():
                stop_seen = stop_seen or now
                if now - stop_seen > STOP_GRACE_S and not self.hard_stop.is_set():
                    self.hard_stop.set()
                    self.q_inf.abort()
                    self.q_post.abort()

    def _print_status(self, tty: bool = False, final: bool = False) -> None:
        extra = f" | corrupt {self.source.corrupt}" if self.source.corrupt else ""
        if self.model_hw:
            extra += f" | input {self.model_hw[0]}x{self.model_hw[1]}"
        line = self.stats.status_line(extra)
        if tty or (final and getattr(self.status_stream, "isatty", lambda: False)()):
            self.status_stream.write(f"\r{line}\x1b[K" + ("\n" if final else ""))
        else:
            self.status_stream.write(line + "\n")
        self.status_stream.flush()
