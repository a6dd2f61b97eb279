"""Video sources named by URI, as in jetson-inference: one `read()` for cameras, streams, files and image folders.

    0, /dev/video0, v4l2:///dev/video0   V4L2 camera (live)
    csi://0                              Jetson CSI camera through GStreamer nvarguscamerasrc (live)
    rtsp://..., rtmp://..., http(s)://   network stream through FFMPEG (live)
    "... ! appsink"                      a GStreamer pipeline of your own (live)
    clip.mp4, file://clip.mp4            video file
    DIR, "frames/*.png", image.jpg       image folder, glob or single image

Live sources reconnect with backoff when they fail and end after `max_retries` failed attempts; files end at
their end (or loop). Frames that cannot be decoded are skipped and counted in `corrupt`.
"""
from __future__ import annotations

import glob
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgeseg.data.folders import IMAGE_EXTS
from edgeseg.errors import EdgesegError

NETWORK_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
CSI_DEFAULT = (1280, 720, 30)
MAX_BACKOFF_S = 4.0


@dataclass
class SourceSpec:
    kind: str          # camera | csi | network | gstreamer | video | images
    uri: str           # as the user wrote it
    target: object     # what is opened: a device index or path, a URL, a pipeline, a file, a list of images
    live: bool


def parse_source(uri: str, width: int | None = None, height: int | None = None, rate: float | None = None) -> SourceSpec:
    """Classify a source URI; a missing file or folder is an error here, before anything is opened."""
    s = str(uri).strip()
    if s.isdigit():
        return SourceSpec("camera", s, int(s), True)
    if s.startswith("v4l2://"):
        return SourceSpec("camera", s, s[len("v4l2://"):] or "/dev/video0", True)
    if s.startswith("/dev/video"):
        return SourceSpec("camera", s, s, True)
    if s.startswith("csi://"):
        sensor = s[len("csi://"):] or "0"
        if not sensor.isdigit():
            raise EdgesegError(f"{s}: a CSI source is csi://N with N the sensor id (e.g. csi://0)")
        return SourceSpec("csi", s, csi_pipeline(int(sensor), width, height, rate), True)
    if s.lower().startswith(NETWORK_SCHEMES):
        return SourceSpec("network", s, s, True)
    if "!" in s:
        return SourceSpec("gstreamer", s, s, True)
    path = s[len("file://"):] if s.startswith("file://") else s
    if glob.has_magic(path):
        files = [Path(p) for p in sorted(glob.glob(path)) if Path(p).suffix.lower() in IMAGE_EXTS]
        if not files:
            raise EdgesegError(f"{s}: the pattern matches no images ({', '.join(IMAGE_EXTS)}); check --source")
        return SourceSpec("images", s, files, False)
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise EdgesegError(f"{p}: the folder holds no images ({', '.join(IMAGE_EXTS)}); check --source")
        return SourceSpec("images", s, files, False)
    if p.is_file():
        try:
            with open(p, "rb") as f:
                empty = not f.read(1)
        except OSError as e:
            raise EdgesegError(f"{s}: cannot read the file ({e.strerror}); check its permissions") from None
        if empty:
            raise EdgesegError(f"{s}: the file is empty (0 bytes); check --source")
        if p.suffix.lower() in IMAGE_EXTS:
            return SourceSpec("images", s, [p], False)
        return SourceSpec("video", s, str(p), False)
    raise EdgesegError(f"{s}: no such file or folder, and not a camera (0, /dev/video0, csi://0) or stream URL (rtsp://...); check --source")


def csi_pipeline(sensor: int, width=None, height=None, rate=None) -> str:
    """The GStreamer pipeline of a Jetson CSI camera (nvarguscamerasrc, converted to BGR for appsink)."""
    w, h, r = width or CSI_DEFAULT[0], height or CSI_DEFAULT[1], int(round(rate or CSI_DEFAULT[2]))
    return (f"nvarguscamerasrc sensor-id={sensor} ! video/x-raw(memory:NVMM), width=(int){w}, height=(int){h}, "
            f"framerate=(fraction){r}/1, format=(string)NV12 ! nvvidconv ! video/x-raw, format=(string)BGRx ! "
            f"videoconvert ! video/x-raw, format=(string)BGR ! appsink drop=true max-buffers=1 sync=false")


def _has_gstreamer() -> bool:
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return line.split(":", 1)[1].strip().upper().startswith("YES")
    return False


class Source:
    """Frames as BGR uint8 HxWx3. `read(buf)` decodes into buf where it can and returns (image, name) or None at the end.

    Counters: `frames` delivered, `corrupt` skipped, `reconnects` attempted. `end_reason` says why it ended.
    """

    def __init__(self, spec: SourceSpec, *, width: int | None = None, height: int | None = None, rate: float | None = None,
                 loop: int = 0, max_retries: int = 5, timeout_s: float = 10.0, stop: threading.Event | None = None):
        self.spec, self.live = spec, spec.live
        self.width, self.height, self.rate = width, height, rate
        self.loop, self.max_retries, self.timeout_s = loop, max_retries, timeout_s
        self.stop = stop or threading.Event()
        self.frames = self.corrupt = self.reconnects = 0
        self.waited = 0.0  # seconds the last read() spent pacing (not decoding)
        self.end_reason = ""
        self._t0 = None
        self._passes = 0

    @property
    def name(self) -> str:
        return self.spec.uri

    @property
    def fps(self) -> float | None:
        """Frames per second of the source when known (a file's or camera's own, else --rate)."""
        return self.rate

    @property
    def paced(self) -> bool:
        """A file or folder delivered at --rate, like a camera."""
        return not self.live and bool(self.rate)

    def read(self, buf: np.ndarray | None = None):
        raise NotImplementedError

    def close(self) -> None:
        pass

    def _pace(self) -> None:
        """With --rate on a file or folder: deliver frames at that rate, like a camera."""
        self.waited = 0.0
        if self.live or not self.rate:
            return
        now = time.perf_counter()
        if self._t0 is None:
            self._t0 = now
        due = self._t0 + self.frames / self.rate
        if due > now:
            self.stop.wait(due - now)
            self.waited = time.perf_counter() - now

    def _fit(self, img: np.ndarray, buf: np.ndarray | None) -> np.ndarray:
        """Resize to --input-width/--input-height when asked (one of them alone keeps the aspect ratio)."""
        if not (self.width or self.height):
            return img
        h, w = img.shape[:2]
        tw = self.width or round(w * self.height / h)
        th = self.height or round(h * self.width / w)
        if (w, h) == (tw, th):
            return img
        if buf is None or buf.shape != (th, tw, 3):
            buf = np.empty((th, tw, 3), np.uint8)
        return cv2.resize(img, (tw, th), dst=buf, interpolation=cv2.INTER_AREA if tw < w else cv2.INTER_LINEAR)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ImageSource(Source):
    """An image folder, a glob or a single image, in name order. Unreadable images are skipped and counted."""

    def __init__(self, spec: SourceSpec, **kw):
        super().__init__(spec, **kw)
        self.files: list[Path] = spec.target
        self._i = 0

    @property
    def fps(self):
        return self.rate

    def read(self, buf=None):
        while not self.stop.is_set():
            if self._i == len(self.files):
                self._passes += 1
                if self.loop == 0 or (self.loop > 0 and self._passes > self.loop) or self.frames == 0:
                    self.end_reason = "end of images" if self.frames else "no readable image"
                    return None
                self._i = 0
            path = self.files[self._i]
            self._i += 1
            img = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if img is None or img.size == 0:
                self.corrupt += 1
                continue
            self._pace()
            self.frames += 1
            return self._fit(img, buf), path.stem
        self.end_reason = "stopped"
        return None


class VideoSource(Source):
    """cv2.VideoCapture for cameras, CSI, network streams, GStreamer pipelines and video files."""

    def __init__(self, spec: SourceSpec, **kw):
        super().__init__(spec, **kw)
        if spec.kind in ("csi", "gstreamer") and not _has_gstreamer():
            raise EdgesegError(f"{spec.uri}: this OpenCV has no GStreamer support; on a Jetson use the system OpenCV of JetPack "
                               f"(python3-opencv) rather than the pip wheel")
        if spec.kind == "network" and spec.uri.startswith("rtsp"):
            os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")  # UDP loses packets on busy links
        self.cap = None
        self._staging = None
        self._fps = None
        self._open_with_retries()

    @property
    def fps(self):
        return self.rate or self._fps

    def _open(self) -> bool:
        spec, ms = self.spec, int(self.timeout_s * 1000)
        if spec.kind == "camera":
            api = cv2.CAP_V4L2 if os.name == "posix" and hasattr(cv2, "CAP_V4L2") else cv2.CAP_ANY
            cap = cv2.VideoCapture(spec.target, api)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the freshest frame, not a queue of stale ones
            if self.width:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            if self.height:
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
            if self.rate:
                cap.set(cv2.CAP_PROP_FPS, self.rate)
        elif spec.kind in ("csi", "gstreamer"):
            cap = cv2.VideoCapture(spec.target, cv2.CAP_GSTREAMER)
        else:  # network streams and files: FFMPEG with open and read timeouts, so a stalled stream cannot hang us
            cap = cv2.VideoCapture(spec.target, cv2.CAP_FFMPEG,
                                   [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
        if not cap.isOpened():
            cap.release()
            return False
        self.cap = cap
        fps = cap.get(cv2.CAP_PROP_FPS)
        self._fps = fps if 0 < fps < 1000 else None
        return True

    def _open_with_retries(self) -> None:
        if self._open():
            return
        if not self.live:
            raise EdgesegError(f"{self.spec.uri}: OpenCV cannot open this video (unsupported container or codec, or a damaged "
                               f"file); check it with `ffprobe` or re-encode it")
        if not self._reconnect():
            raise EdgesegError(f"{self.spec.uri}: cannot open the source ({self.max_retries} retries); check the camera or "
                               f"URL, or raise --max-retries")

    def _reconnect(self) -> bool:
        """Reopen a live source with exponential backoff; False after max_retries failures or on stop."""
        for attempt in range(self.max_retries):
            if self.stop.wait(min(0.5 * 2 ** attempt, MAX_BACKOFF_S)):
                return False
            self.reconnects += 1
            if self._open():
                return True
        return False

    def _grab(self, buf):
        """One decoded frame or None; the decoder writes into buf when its size matches."""
        target = self._staging if (self.width or self.height) else buf
        ok, img = self.cap.read(target)
        if not ok or img is None or img.ndim != 3 or img.shape[2] != 3 or img.size == 0:
            return None
        if self.width or self.height:
            self._staging = img
        return img

    def read(self, buf=None):
        misses = 0
        while not self.stop.is_set():
            t = time.perf_counter()
            img = self._grab(buf)
            if img is not None:
                self.corrupt += misses  # failures followed by a good frame were bad frames, not the end
                self._pace()
                self.frames += 1
                return self._fit(img, buf), None
            if self.stop.is_set():
                break
            if self.live:
                misses += 1
                # A damaged frame (a bad JPEG in an MJPEG stream) fails one read at once and the next one decodes;
                # a lost connection keeps failing, and a stalled one fails only after the read timeout.
                if misses <= 2 and time.perf_counter() - t < self.timeout_s / 2:
                    continue
                misses = 0
                self.cap.release()
                if self._reconnect():
                    continue
                self.end_reason = "stopped" if self.stop.is_set() else f"source lost after {self.max_retries} reconnect attempts"
                return None
            misses += 1
            if misses <= 3 and self._more_frames():
                continue
            if self.loop and self.frames and (self.loop < 0 or self._passes < self.loop):
                self._passes += 1
                self.cap.release()
                if self._open():
                    misses = 0
                    continue
            count = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT))
            short = not self.loop and 0 < self.frames + self.corrupt < count - 1
            self.end_reason = f"end of file after {self.frames} of {count} frames (truncated?)" if short else "end of file"
            return None
        self.end_reason = "stopped"
        return None

    def _more_frames(self) -> bool:
        """After a failed read: does the container say frames remain (a bad frame) or are we at the end?"""
        count = self.cap.get(cv2.CAP_PROP_FRAME_COUNT)
        pos = self.cap.get(cv2.CAP_PROP_POS_FRAMES)
        return count > 0 and pos < count - 1

    def close(self):
        if self.cap is not None:
            self.cap.release()
            self.cap = None


def open_source(uri: str, **kw) -> Source:
    """Open a source URI (see the module doc). kw: width, height, rate, loop, max_retries, timeout_s, stop."""
    spec = parse_source(uri, kw.get("width"), kw.get("height"), kw.get("rate"))
    return ImageSource(spec, **kw) if spec.kind == "images" else VideoSource(spec, **kw)


def read_video_frames(path: str | os.PathLike) -> list[np.ndarray]:
    """Every decodable frame of a video file (BGR), in order: for short clips that are used whole."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    if not frames:
        raise EdgesegError(f"{path}: no frame could be read (a missing file, or a format OpenCV cannot decode); "
                           f"pass a video file")
    return frames
