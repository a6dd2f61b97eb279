"""The runtime is lean: `edgeseg run` works in a process where importing torch (or onnx, the exporters) fails,
and imports nothing beyond numpy, opencv and onnxruntime."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from runtime_helpers import SIZE, camvid_frames, camvid_meta, export_onnx, sfnet, write_video

from edgeseg.runtime.sources import read_video_frames

BLOCKED = ("torch", "torchvision", "onnx", "onnxscript", "onnxslim", "onnxconverter_common", "matplotlib", "tensorrt")
ALLOWED = {"edgeseg", "numpy", "cv2", "onnxruntime"}

# Runs `edgeseg` with a meta path finder that refuses the blocked packages; then lists the third-party top-level
# modules that the command imported.
WRAPPER = f"""
import importlib.abc, json, sys
BLOCKED = {BLOCKED!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is blocked: the runtime must not import it")
sys.meta_path.insert(0, Block())
before = set(sys.modules)
from edgeseg.cli import main
code = main(sys.argv[2:])
new = sorted({{m.split(".")[0] for m in set(sys.modules) - before}} - set(sys.stdlib_module_names))
open(sys.argv[1], "w").write(json.dumps(new))
sys.exit(code)
"""


def test_blocker_blocks_torch():
    r = subprocess.run([sys.executable, "-c", WRAPPER.replace("from edgeseg.cli import main", "import torch"), "x"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "torch is blocked" in r.stderr


def test_edgeseg_run_without_torch(camvid, tmp_path):
    model = export_onnx(sfnet(), tmp_path / "sfnet.onnx", camvid_meta(), torch.zeros(1, 3, *SIZE))
    video = write_video(tmp_path / "clip.mp4", camvid_frames(camvid, 6))
    mods = tmp_path / "modules.json"
    r = subprocess.run([sys.executable, "-c", WRAPPER, str(mods), "run", "--model", str(model), "--source", str(video),
                        "--sink", str(tmp_path / "out.mp4"), "--save-labels", str(tmp_path / "labels"),
                        "--json", str(tmp_path / "run.json"), "--quiet"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "run.json").read_text())["frames"] == 6
    assert len(read_video_frames(tmp_path / "out.mp4")) == 6 and len(list((tmp_path / "labels").iterdir())) == 6
    imported = set(json.loads(mods.read_text()))
    assert imported <= ALLOWED, imported


@pytest.mark.parametrize("args", [["run", "--help"], ["--help"]])
def test_help_without_torch(tmp_path, args):
    r = subprocess.run([sys.executable, "-c", WRAPPER, str(tmp_path / "m.json"), *args], capture_output=True, text=True)
    assert r.returncode == 0 and "usage: edgeseg" in r.stdout, r.stderr
