"""Fault probes: outputs that would destroy an input, bad option values, damaged files and streams. Each ends with
one line (exit 2) before any work starts, or is survived as the README says."""
from __future__ import annotations

import http.server
import json
import socketserver
import threading

import numpy as np
import pytest
import torch
from runtime_helpers import SIZE, camvid_frames, camvid_meta, conv_net, export_onnx, write_video

from edgeseg.cli import main
from edgeseg.errors import EdgesegError
from edgeseg.fileio import remove_stale_temporaries, write_error
from edgeseg.meta import make_meta, parse_meta
from edgeseg.models import checkpoint, create


def _fails(argv, message, capsys) -> str:
    """`edgeseg ARGV` ends with exit 2 and one line holding `message`."""
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    return err[0]


def _usage_error(argv, message, capsys) -> None:
    """`edgeseg ARGV` is refused by the option parser (exit 2, its one-line error)."""
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1], err


@pytest.fixture()
def folder(tmp_path):
    """An image folder as a run source."""
    import cv2

    src = tmp_path / "frames"
    src.mkdir()
    for i in range(2):
        cv2.imwrite(str(src / f"{i}.png"), np.full((48, 64, 3), 60 * i, np.uint8))
    return src


def test_outputs_over_or_inside_the_input_are_refused_and_the_input_survives(tmp_path, folder, capsys):
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    video = tmp_path / "in.mp4"
    video.write_bytes(b"not really a video, never read")
    model = tmp_path / "m.onnx"  # never opened: outputs are checked first
    _fails(["run", "--model", model, "--source", folder, "--save-labels", folder], "is the input", capsys)
    _fails(["run", "--model", model, "--source", folder, "--sink", f"{folder}/*.png"], "is the input", capsys)
    _fails(["run", "--model", model, "--source", f"{folder}/*.png", "--sink", folder / "out"], "is inside the input", capsys)
    _fails(["run", "--model", model, "--source", video, "--sink", video], "is the input", capsys)
    model.write_bytes(b"weights")
    _fails(["run", "--model", model, "--source", video, "--json", model], "is the input", capsys)
    assert model.read_bytes() == b"weights"
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert video.read_bytes() == b"not really a video, never read"


def test_outputs_under_a_file_fail_before_the_work(tmp_path, folder, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    model = tmp_path / "missing.onnx"  # would fail later: the output check comes first
    _fails(["run", "--model", model, "--source", folder, "--json", blocker / "r.json"], "is a file", capsys)
    _fails(["run", "--model", model, "--source", folder, "--save-labels", blocker / "labels"], "is a file", capsys)
    _fails(["run", "--model", model, "--source", folder, "--sink", blocker / "o.mp4"], "is a file", capsys)
    _fails(["eval", "--model", model, "--data", tmp_path, "--json", blocker / "m.json"], "--json", capsys)
    _fails(["bench", "--arch", "unet", "--out", blocker / "b"], "--out", capsys)
    _fails(["train", "--arch", "sfnet", "--data", folder, "--out", blocker / "run"], "is a file", capsys)


def test_a_new_run_never_overwrites_a_best_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "best.pt").write_bytes(b"the best weights")
    data = tmp_path / "data"
    data.mkdir()
    _fails(["train", "--arch", "sfnet", "--data", data, "--out", out], "already holds a training run (best.pt)", capsys)
    assert (out / "best.pt").read_bytes() == b"the best weights"
    _fails(["train", "--arch", "sfnet", "--data", data, "--out", data / "run"], "is inside the input", capsys)


@pytest.mark.parametrize("argv, message", [
    (["run", "--model", "m.onnx", "--source", "0", "--size", "20x20"], "between 32 and 8192"),
    (["run", "--model", "m.onnx", "--source", "0", "--size", "8x8"], "between 32 and 8192"),
    (["run", "--model", "m.onnx", "--source", "0", "--size", "100000x100000"], "between 32 and 8192"),
    (["run", "--model", "m.onnx", "--source", "0", "--rate", "-5"], "argument --rate: -5: must be greater than 0"),
    (["run", "--model", "m.onnx", "--source", "0", "--max-frames", "-1"], "argument --max-frames"),
    (["run", "--model", "m.onnx", "--source", "0", "--input-width", "100000"], "between 32 and 8192 pixels"),
    (["train", "--arch", "a", "--data", "d", "--out", "o", "--epochs", "0"], "argument --epochs: 0: must be at least 1"),
    (["train", "--arch", "a", "--data", "d", "--out", "o", "--batch-size", "0"], "argument --batch-size"),
    (["train", "--arch", "a", "--data", "d", "--out", "o", "--batch-size", "-2"], "argument --batch-size"),
    (["train", "--arch", "a", "--data", "d", "--out", "o", "--lr", "nan"], "argument --lr: 'nan': give a finite number"),
    (["train", "--arch", "a", "--data", "d", "--out", "o", "--crop", "8x8"], "argument --crop"),
    (["eval", "--model", "m", "--data", "d", "--limit", "0"], "argument --limit: 0: must be at least 1"),
    (["eval", "--model", "m", "--data", "d", "--scales", "abc"], "argument --scales: 'abc' is not a number"),
])
def test_bad_option_values_are_refused_by_the_parser(argv, message, capsys):
    _usage_error(argv, message, capsys)


def test_damaged_checkpoints_are_one_line(tmp_path, capsys):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    _fails(["eval", "--model", empty, "--data", tmp_path], "empty.pt: the file is empty", capsys)
    with pytest.raises(EdgesegError, match="empty.pt: the file is empty"):
        checkpoint.load_model(str(empty))
    truncated = tmp_path / "torn.pt"
    rec = checkpoint.model_record(create("fcn8s", 3), _classes(3))
    checkpoint.save(rec, tmp_path / "whole.pt")
    truncated.write_bytes((tmp_path / "whole.pt").read_bytes()[:5000])
    _fails(["eval", "--model", truncated, "--data", tmp_path], "torn.pt: not a readable edgeseg checkpoint", capsys)
    del rec["arch"]
    torch.save(rec, tmp_path / "noarch.pt")
    _fails(["eval", "--model", tmp_path / "noarch.pt", "--data", tmp_path], "noarch.pt: the checkpoint record lacks", capsys)


def _classes(n):
    from edgeseg.data.classes import ClassInfo, default_palette

    return ClassInfo(tuple(f"c{i}" for i in range(n)), tuple(map(tuple, default_palette(n))), 255)


def test_bad_model_metadata_is_one_line():
    meta = make_meta("x", _classes(2))
    del meta["input"]["mean"]
    with pytest.raises(EdgesegError, match="m.onnx: edgeseg metadata input lacks mean"):
        parse_meta(json.dumps(meta), "m.onnx")
    meta = make_meta("x", _classes(2))
    meta["palette"] = [[1, 2], [3, 4]]
    with pytest.raises(EdgesegError, match="m.onnx: 'palette' needs one"):
        parse_meta(json.dumps(meta), "m.onnx")
    with pytest.raises(EdgesegError, match="not a JSON object"):
        parse_meta("[1, 2]", "m.onnx")


def test_source_problems_are_named(tmp_path, capsys):
    (tmp_path / "empty.mp4").write_bytes(b"")
    _fails(["run", "--model", tmp_path / "m.onnx", "--source", tmp_path / "empty.mp4"], "empty.mp4: the file is empty", capsys)


def test_write_errors_are_one_line(tmp_path):
    import errno

    e = write_error(tmp_path / "last.pt", OSError(errno.ENOSPC, "No space left on device"))
    assert str(e) == f"{tmp_path / 'last.pt'}: cannot write (the disk is full; free space or choose another folder)"
    e = write_error(tmp_path / "last.pt", RuntimeError("[enforce fail at inline_container.cc:642] . PytorchStreamWriter "
                                                       "failed writing file data/0: file write failed"))
    assert "last.pt: cannot write" in str(e) and "\n" not in str(e)


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has exited
    stale = [tmp_path / f".last.pt.tmp{pid}", tmp_path / f".out.tmp{pid}.mp4", tmp_path / f".export-{pid}"]
    stale[0].write_bytes(b"x")
    stale[1].write_bytes(b"x")
    stale[2].mkdir()
    import os

    live = tmp_path / f".last.pt.tmp{os.getppid()}"  # a process that runs
    live.write_bytes(b"x")
    keep = tmp_path / "last.pt"
    keep.write_bytes(b"x")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert live.exists() and keep.exists() and not any(p.exists() for p in stale)


class _MJPEG:
    """A local HTTP server streaming an MJPEG AVI once, whose 4th frame's JPEG data is damaged."""

    def __init__(self, data: bytes):
        self.requests = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests += 1
                if server.requests > 1:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/cam.avi"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.timeout(120)
def test_a_damaged_frame_in_a_live_stream_is_skipped_not_a_reconnect(camvid, tmp_path):
    from edgeseg.cli.run import run_stream

    frames = camvid_frames(camvid, 8)
    data = bytearray(write_video(tmp_path / "cam.avi", frames).read_bytes())
    starts = [i for i in range(len(data) - 2) if data[i:i + 3] == b"\xff\xd8\xff"]
    k = starts[3]
    end = data.index(b"\xff\xd9", k) + 2
    data[k:end] = bytes(np.random.default_rng(0).integers(0, 256, end - k, dtype=np.uint8))
    model = export_onnx(conv_net(), tmp_path / "m.onnx", camvid_meta(), torch.zeros(1, 3, *SIZE))
    server = _MJPEG(bytes(data))
    try:
        summary, _ = run_stream(str(model), server.url, ["null"], source_kw={"max_retries": 1, "timeout_s": 2.0},
                                pipeline_kw={"policy": "all", "status": False})
    finally:
        server.close()
    assert summary["corrupt"] == 1 and summary["frames"] == 7  # the damaged frame skipped, the others all read
    assert server.requests == 2 and summary["reconnects"] == 1  # reconnected only at the end of the stream
