"""Outputs named by URI: `display://`, a video file, an image folder, `null`. Every file appears whole or not at all.

A video is written under a hidden temporary name and renamed when it is closed, so a killed run leaves either a
playable file or nothing at the destination. Images (frames, class-ID PNGs, confidence maps) are written one by
one through a temporary name.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import cv2
import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.fileio import atomic_path, remove_stale_temporaries, write_error

VIDEO_CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG", ".webm": "VP90"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
QUIT_KEYS = (27, ord("q"))  # Esc, q


def gui_available() -> bool:
    """True when this OpenCV can open windows and there is a display to open them on."""
    info = cv2.getBuildInformation()
    gui = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.strip().startswith("GUI:")), "NONE")
    has_display = sys.platform != "linux" or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return gui.upper() != "NONE" and has_display


def frame_name(index: int, name: str | None) -> str:
    """Output file stem of a frame: the source image's stem, else the frame number."""
    return name or f"{index:06d}"


class Sink:
    """`write(image, index, name, t)` returns False when the user asked to stop (a closed window); `close()`
    finalises. `t` (seconds, any origin) is the frame's capture time where frames may be dropped: a video then
    holds each frame until the next one's time, so it plays as long as the run took."""

    uri = "null"

    def write(self, image: np.ndarray, index: int, name: str | None = None, t: float | None = None) -> bool:
        return True

    def close(self) -> None:
        pass


class DisplaySink(Sink):
    uri = "display://"

    def __init__(self, title: str = "edgeseg"):
        if not gui_available():
            raise EdgesegError("display://: this OpenCV has no GUI or there is no display (opencv-python-headless, or DISPLAY "
                               "unset); install opencv-python for windows, or use --sink out.mp4 / --sink null")
        self.title, self._open = title, False

    def write(self, image, index, name=None, t=None):
        if not self._open:
            cv2.namedWindow(self.title, cv2.WINDOW_NORMAL)
            cv2.resizeWindow(self.title, image.shape[1], image.shape[0])
            self._open = True
        cv2.imshow(self.title, image)
        key = cv2.waitKey(1) & 0xFF
        return key not in QUIT_KEYS and cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) >= 1

    def close(self):
        if self._open:
            cv2.destroyWindow(self.title)
            cv2.waitKey(1)


class VideoSink(Sink):
    """A video file; its size is the first frame's (later frames of another size are resized to it)."""

    def __init__(self, path: Path, fps: float, codec: str | None = None):
        self.path, self.fps = Path(path), float(fps)
        self.codec = codec or VIDEO_CODECS.get(self.path.suffix.lower(), "mp4v")
        if len(self.codec) != 4:
            raise EdgesegError(f"--codec {self.codec!r}: a codec is a four-character code such as mp4v, MJPG, avc1")
        self.uri = str(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise write_error(self.path, e) from None
        remove_stale_temporaries(self.path.parent)
        # The temporary keeps the suffix: OpenCV picks the container from it.
        self.tmp = self.path.with_name(f".{self.path.stem}.tmp{os.getpid()}{self.path.suffix}")
        self.writer, self.size, self.frames, self._t0 = None, None, 0, None

    def write(self, image, index, name=None, t=None):
        if self.writer is None:
            try:  # a folder we cannot write is a write error, not a codec problem
                self.tmp.touch()
            except OSError as e:
                raise write_error(self.path, e) from None
            self.size = (image.shape[1], image.shape[0])
            self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*self.codec), self.fps, self.size)
            if not self.writer.isOpened():
                self.writer = None
                raise EdgesegError(f"{self.path}: OpenCV cannot write {self.codec} video to a {self.path.suffix} file here; "
                                   f"try --codec mp4v with .mp4, or MJPG with .avi")
        if (image.shape[1], image.shape[0]) != self.size:
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
        copies = 1
        if t is not None:  # fill the time since the last written frame (frames dropped in between)
            self._t0 = t if self._t0 is None else self._t0
            copies = max(1, int((t - self._t0) * self.fps) + 1 - self.frames)
        for _ in range(copies):
            self.writer.write(image)
        self.frames += copies
        return True

    def close(self):
        if self.writer is not None:
            self.writer.release()
            self.writer = None
        if self.tmp.exists():
            if self.frames:
                os.replace(self.tmp, self.path)
            else:
                self.tmp.unlink()


class ImageDirSink(Sink):
    """One image per frame in a folder, named after the source image or the frame number."""

    def __init__(self, folder: Path, suffix: str = ".jpg"):
        self.folder, self.suffix = Path(folder), suffix
        self.uri = str(self.folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise EdgesegError(f"{self.folder}: cannot create the output folder ({e.strerror}); choose another path") from None
        remove_stale_temporaries(self.folder)
        self.frames = 0

    def write(self, image, index, name=None, t=None):
        ok, data = cv2.imencode(self.suffix, image)
        if not ok:
            raise EdgesegError(f"{self.folder}: OpenCV cannot encode a {image.dtype} image as {self.suffix}")
        with atomic_path(self.folder / f"{frame_name(index, name)}{self.suffix}") as tmp:
            tmp.write_bytes(data.tobytes())
        self.frames += 1
        return True


def parse_sink(uri: str, codec: str | None = None) -> tuple[str, Path | None, str | None]:
    """(kind, path, image suffix) of a sink URI; kind: display, null, video or images."""
    s = str(uri).strip()
    if s in ("display://", "display", "display://0"):
        return "display", None, None
    if s in ("null", "null://", "none"):
        return "null", None, None
    if s.startswith("file://"):
        s = s[len("file://"):]
    p = Path(s)
    if p.suffix.lower() in VIDEO_CODECS or (codec and p.suffix):
        return "video", p, None
    if p.name.startswith("*") and p.suffix.lower() in IMAGE_SUFFIXES:  # frames/*.png
        return "images", p.parent, p.suffix.lower()
    if s.endswith(("/", os.sep)) or p.is_dir() or not p.suffix:
        return "images", p, ".jpg"
    raise EdgesegError(f"--sink {uri}: unknown output; use display://, null, a video file (.mp4, .avi, .mkv), "
                       f"or a folder (DIR/ for JPEGs, 'DIR/*.png' for PNGs)")


def open_sink(uri: str, fps: float = 30.0, codec: str | None = None) -> Sink:
    """`display://` | `null` | a video file (.mp4 .avi .mkv ...) | an image folder (`DIR/`, an existing folder, or a
    `DIR/*.png`-style pattern giving the image format)."""
    kind, path, suffix = parse_sink(uri, codec)
    if kind == "display":
        return DisplaySink()
    if kind == "null":
        return Sink()
    if kind == "video":
        return VideoSink(path, fps, codec)
    return ImageDirSink(path, suffix)
