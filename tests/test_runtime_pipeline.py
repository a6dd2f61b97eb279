"""The streaming pipeline end to end on real models, videos and local streams: every frame of a file, the
latest-frame policy, reconnects, stalls, signals, and one-line errors. Nothing may hang (pytest-timeout)."""
from __future__ import annotations

import http.server
import json
import signal
import socketserver
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest
import torch
from runtime_helpers import SIZE, camvid_frames, camvid_meta, conv_net, export_onnx, sfnet, write_video

from edgeseg.cli import main
from edgeseg.cli.run import run_stream
from edgeseg.runtime.sources import read_video_frames

DESIGN_KEYS = {"frames", "fps", "latency_ms", "stages", "dropped"}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    net = sfnet()
    return export_onnx(net, tmp_path_factory.mktemp("m") / "sfnet.onnx", camvid_meta(), torch.zeros(1, 3, *SIZE)), net


@pytest.fixture(scope="module")
def frames(camvid):
    return camvid_frames(camvid, 8)


@pytest.fixture(scope="module")
def video(frames, tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("v") / "clip.avi", frames)


def _run(model_path, source, sinks=("null",), source_kw=None, **pipeline_kw):
    pipeline_kw.setdefault("status", False)
    summary, _ = run_stream(model_path, str(source), [str(s) for s in sinks], source_kw=source_kw, pipeline_kw=pipeline_kw)
    return summary


def test_file_pipeline_writes_every_frame_and_matches_the_sequential_reference(model, frames, video, tmp_path):
    path, net = model
    s = _run(path, video, [tmp_path / "out.mp4"], labels_dir=tmp_path / "labels", confidence_dir=tmp_path / "conf")
    assert DESIGN_KEYS <= set(s) and {"p50", "p95", "p99"} <= set(s["latency_ms"])
    assert set(s["stages"]) == {"capture", "preprocess", "infer", "postprocess", "render", "write"}
    assert (s["frames"], s["dropped"], s["corrupt"], s["end"]) == (8, 0, 0, "end of file")
    assert s["fps"] > 0 and s["latency_ms"]["p50"] > 0 and s["model_input"] == list(SIZE)
    decoded = read_video_frames(video)  # the pipeline sees the decoded (MJPG) frames
    for i, frame in enumerate(decoded):
        x = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB).astype(np.float32) / 255
        x = (x - np.float32([0.485, 0.456, 0.406])) / np.float32([0.229, 0.224, 0.225])
        with torch.inference_mode():
            ref = net(torch.from_numpy(x.transpose(2, 0, 1)[None].copy())).numpy()[0].argmax(0)
        got = cv2.imread(str(tmp_path / "labels" / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED)
        assert got.shape == SIZE and (got == ref).mean() > 0.999
        conf = cv2.imread(str(tmp_path / "conf" / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED)
        assert conf.dtype == np.uint8 and conf.shape == SIZE and conf.min() >= 255 // 11
    out = read_video_frames(tmp_path / "out.mp4")
    assert len(out) == 8 and out[0].shape == (*SIZE, 3)


def test_model_size_and_side_by_side_output(model, video, tmp_path):
    s = _run(model[0], video, [tmp_path / "both.avi", tmp_path / "frames/"], size=(32, 48), vis="both",
             labels_dir=tmp_path / "labels")
    assert s["model_input"] == [32, 48] and s["frame_size"] == list(SIZE)
    out = read_video_frames(tmp_path / "both.avi")
    assert len(out) == 8 and out[0].shape == (SIZE[0], 2 * SIZE[1], 3)
    assert len(list((tmp_path / "frames").glob("*.jpg"))) == 8
    assert cv2.imread(str(tmp_path / "labels" / "000000.png"), cv2.IMREAD_UNCHANGED).shape == SIZE  # full resolution


def test_latest_frame_policy_drops_stale_frames_and_counts_them(model, frames, tmp_path):
    clip = write_video(tmp_path / "long.avi", frames * 5)  # 40 frames delivered at 1000 FPS, faster than inference
    s = _run(model[0], clip, source_kw={"rate": 1000}, policy="latest", size=(256, 384))  # slow on any CPU
    assert s["live"] and s["dropped"] > 0 and s["frames"] + s["dropped"] == 40
    s = _run(model[0], clip, source_kw={"rate": 1000}, policy="all")
    assert not s["live"] and (s["frames"], s["dropped"]) == (40, 0)


def test_a_paced_file_runs_like_a_camera_and_its_video_keeps_the_run_s_timing(model, frames, tmp_path):
    """--rate on a file: the latest-frame policy by default, and the video holds each written frame until the next
    one's capture time, so it lasts as long as the run (not len(written frames) / rate)."""
    clip = write_video(tmp_path / "long.avi", frames * 5)
    # 40 frames at 200 FPS into a 256x384 model input (16x the test frames' pixels): inference cannot keep up on any
    # CPU, so most frames are dropped and the video's length is the run's, not the processed frames'
    s = _run(model[0], clip, [tmp_path / "out.mp4"], source_kw={"rate": 200}, size=(256, 384))
    assert s["live"] and s["paced"] and s["dropped"] > s["frames"]
    written = len(read_video_frames(tmp_path / "out.mp4"))
    # frames captured during the model's warm-up come in a burst, so a little less than frames + dropped
    assert s["frames"] + s["dropped"] / 2 < written <= s["frames"] + s["dropped"] + 1
    assert s["stages"]["capture"]["p50"] < 1000 / 200  # decoding, not the pacing wait
    s = _run(model[0], clip, [tmp_path / "all.mp4"])  # unpaced: every frame, once
    assert not s["live"] and len(read_video_frames(tmp_path / "all.mp4")) == s["frames"] == 40


def test_max_frames_and_corrupt_images_in_a_folder(model, frames, tmp_path):
    for i, f in enumerate(frames[:5]):
        cv2.imwrite(str(tmp_path / f"f{i}.png"), f)
    (tmp_path / "f1.png").write_bytes(b"\x89PNG broken")
    s = _run(model[0], tmp_path, labels_dir=tmp_path / "labels")
    assert (s["frames"], s["corrupt"]) == (4, 1)
    assert sorted(p.stem for p in (tmp_path / "labels").iterdir()) == ["f0", "f2", "f3", "f4"]
    s = _run(model[0], tmp_path, max_frames=2)
    assert (s["frames"], s["end"]) == (2, "max frames")
    s = _run(model[0], tmp_path, source_kw={"loop": -1}, policy="latest", max_frames=3)
    assert (s["frames"], s["end"]) == (3, "max frames")


class _Server:
    """A local HTTP server for a video file: the first request gets half of it, then (mode) drops, stalls, or
    serves the whole file once more; later requests get 404."""

    def __init__(self, data: bytes, mode: str):
        self.requests = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests += 1
                n = server.requests
                if n > 2 or (n == 2 and mode != "recover"):
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "video/x-msvideo")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data if n == 2 else data[: len(data) // 2])
                self.wfile.flush()
                if mode == "stall" and n == 1:
                    time.sleep(20)

        self.httpd = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/clip.avi"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["drop", "stall", "recover"])
def test_network_stream_reconnects_with_backoff_then_ends_cleanly(model, frames, tmp_path, mode):
    clip = write_video(tmp_path / "clip.avi", frames * 2)  # 16 frames; the first connection delivers about half
    server = _Server(clip.read_bytes(), mode)
    try:
        t = time.perf_counter()
        s = _run(model[0], server.url, [tmp_path / "out.mp4"], source_kw={"max_retries": 2, "timeout_s": 1.0}, policy="all")
        elapsed = time.perf_counter() - t
    finally:
        server.close()
    assert s["end"] == "source lost after 2 reconnect attempts" and s["reconnects"] == (3 if mode == "recover" else 2)
    first = s["frames"] - (16 if mode == "recover" else 0)
    assert 4 <= first < 16 and s["dropped"] == 0
    assert len(read_video_frames(tmp_path / "out.mp4")) == s["frames"]
    assert elapsed < 15  # backoff 0.5 + 1 s, plus the 1 s read timeout of a stall


def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "edgeseg", "run", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_run_stops_fast_and_leaves_a_playable_video(model, video, tmp_path, sig):
    out, summary = tmp_path / "out.mp4", tmp_path / "run.json"
    proc = _cli("--model", model[0], "--source", video, "--loop", "--sink", out, "--json", summary, "--quiet")
    try:
        deadline = time.monotonic() + 60
        while not any(tmp_path.glob(".out.tmp*.mp4")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(0.5)  # some frames into the video
        t = time.monotonic()
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=10)
        elapsed = time.monotonic() - t
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert elapsed < 1.5, f"took {elapsed:.2f} s to stop"
    s = json.loads(summary.read_text())
    assert s["end"] == ("terminated" if sig == signal.SIGTERM else "interrupted") and s["frames"] > 0
    assert len(read_video_frames(out)) == s["frames"]
    assert not list(tmp_path.glob(".*tmp*")) and "frames in" in stdout


def test_errors_are_one_line_without_traceback(model, video, tmp_path, capsys):
    fixed = export_onnx(conv_net(), tmp_path / "fixed.onnx", camvid_meta(), torch.zeros(1, 3, 32, 48), dynamic=False)
    (tmp_path / "text.mp4").write_text("not a video")
    cases = [
        (["--model", model[0], "--source", tmp_path / "missing.mp4"], "missing.mp4: no such file or folder"),
        (["--model", model[0], "--source", tmp_path / "text.mp4"], "text.mp4: OpenCV cannot open this video"),
        (["--model", fixed, "--source", video, "--size", "64x96"], "--size 64x96: this model only takes 32x48"),
        (["--model", tmp_path / "none.onnx", "--source", video], "none.onnx: model file not found"),
        (["--model", model[0], "--source", video, "--sink", tmp_path / "x.xyz"], "x.xyz: unknown output"),
    ]
    for args, message in cases:
        assert main(["run", *map(str, args), "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("edgeseg run: error: ") and message in err[0], err
    with pytest.raises(SystemExit) as e:  # option values are checked by the parser, before anything opens
        main(["run", "--model", str(model[0]), "--source", str(video), "--alpha", "3", "--sink", str(tmp_path / "o.mp4")])
    assert e.value.code == 2 and "argument --alpha: 3: must be between 0 and 1" in capsys.readouterr().err
    assert not (tmp_path / "o.mp4").exists()


def test_fixed_size_model_runs_any_frame_size(tmp_path, video):
    fixed = export_onnx(conv_net(), tmp_path / "fixed.onnx", camvid_meta(), torch.zeros(1, 3, 32, 48), dynamic=False)
    s = _run(fixed, video, labels_dir=tmp_path / "labels")
    assert s["model_input"] == [32, 48] and s["frames"] == 8
    assert cv2.imread(str(tmp_path / "labels" / "000007.png"), cv2.IMREAD_UNCHANGED).shape == SIZE


def test_status_line_is_printed(model, video, capsys):
    main(["run", "--model", str(model[0]), "--source", str(video)])
    out, err = capsys.readouterr()
    assert "8 frames" in err and "FPS" in err and "latency p50" in err and "dropped 0" in err and f"input {SIZE[0]}x{SIZE[1]}" in err
    assert out.startswith("8 frames in") and "stages, mean ms: capture" in out

