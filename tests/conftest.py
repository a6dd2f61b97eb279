"""Shared fixtures: the real CamVid copy beside the repository, small real-data folders made from it, a cache
folder of the test run's own, and the FlowWarp kernels built into it once before the tests that use them.

The suite never writes into the user's installation: EDGESEG_CACHE points into pytest's temporary folder for
the whole run, so exports and the kernels are made there. Under CI (CI=true) a test skipped because a kernel
is not built fails instead: this machine can build them, so a skip would hide a broken build.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import pytest

ROOT = Path(__file__).resolve().parents[1]
CAMVID = Path(os.environ.get("EDGESEG_CAMVID", ROOT.parent / "shared" / "data" / "camvid"))
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# Modules with tests that run the FlowWarp op where it is built (and skip where it is not).
KERNEL_USERS = {"test_export", "test_bench", "test_flowwarp_op", "test_runtime"}
NOT_BUILT = ("not built", "kernels build")  # how those skips say why


@pytest.fixture(scope="session", autouse=True)
def edgeseg_cache(tmp_path_factory) -> Path:
    """$EDGESEG_CACHE for the whole run: a temporary folder, never ~/.cache/edgeseg."""
    root = tmp_path_factory.mktemp("edgeseg-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGESEG_CACHE", str(root))
    yield root
    mp.undo()


@pytest.fixture(scope="session")
def kernels_built(edgeseg_cache) -> dict:
    """Build the kernels into the run's cache once; the summary, or {"error": why} where they cannot build."""
    from edgeseg.errors import EdgesegError
    from edgeseg.kernels import cmake

    try:
        return cmake.build(log=lambda *_: None)
    except EdgesegError as e:
        if CI:
            pytest.fail(f"CI: the kernels must build on this machine: {e}")
        return {"error": str(e), "built": [], "skipped": {}}


@pytest.fixture(scope="module", autouse=True)
def _kernels_before_their_users(request):
    """Tests of KERNEL_USERS modules find the kernels already built (they check for the library, they do not build);
    module scope, so that the build also precedes those modules' own module-scoped fixtures."""
    if request.module.__name__.rsplit(".", 1)[-1] in KERNEL_USERS:
        request.getfixturevalue("kernels_built")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if CI and report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2])
        if any(s in reason for s in NOT_BUILT):
            report.outcome = "failed"
            report.longrepr = f"CI: skipped although this machine builds the kernels: {reason}"


@pytest.fixture(scope="session")
def camvid() -> Path:
    if not (CAMVID / "images" / "val").is_dir():
        pytest.skip(f"CamVid not found at {CAMVID} (set EDGESEG_CAMVID)")
    return CAMVID


def shrink_camvid(src: Path, dst: Path, n_train: int = 8, n_val: int = 4, size=(96, 128)) -> Path:
    """A CamVid-format folder with the first real frames, resized (labels with nearest neighbour)."""
    for split, n in (("train", n_train), ("val", n_val)):
        (dst / "images" / split).mkdir(parents=True, exist_ok=True)
        (dst / "labels" / split).mkdir(parents=True, exist_ok=True)
        for p in sorted((src / "images" / split).iterdir())[:n]:
            img = cv2.imread(str(p))
            lab = cv2.imread(str(src / "labels" / split / p.name), cv2.IMREAD_UNCHANGED)
            cv2.imwrite(str(dst / "images" / split / p.name), cv2.resize(img, size[::-1], interpolation=cv2.INTER_AREA))
            cv2.imwrite(str(dst / "labels" / split / p.name), cv2.resize(lab, size[::-1], interpolation=cv2.INTER_NEAREST))
    return dst


@pytest.fixture(scope="session")
def tiny_camvid(camvid, tmp_path_factory) -> Path:
    return shrink_camvid(camvid, tmp_path_factory.mktemp("tiny_camvid"))
