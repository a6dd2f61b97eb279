"""The one size parser, the one divisor rounding, the one cache scheme and the data-root lookup."""
from __future__ import annotations

from pathlib import Path

import pytest

from edgeseg.errors import EdgesegError
from edgeseg.paths import cache_dir, data_root
from edgeseg.sizes import MAX_SIZE, fit, parse_hw, parse_hw_list


def test_parse_hw_accepts_hxw_and_squares():
    assert parse_hw("360x480") == (360, 480)
    assert parse_hw(" 64X96 ") == (64, 96)
    assert parse_hw("512") == (512, 512)
    assert parse_hw_list("360x480, 64x96,360x480") == ((360, 480), (64, 96))


@pytest.mark.parametrize("text", ["360x", "x480", "360by480", "-3x4", "1.5x2", "", "20x20", "8x8", "0x10",
                                  f"{MAX_SIZE + 1}x64", "100000x100000"])
def test_parse_hw_refuses_in_one_line(text):
    with pytest.raises(EdgesegError) as e:
        parse_hw(text)
    assert repr(text) in str(e.value) and "\n" not in str(e.value)


def test_parse_hw_list_needs_one_size():
    with pytest.raises(EdgesegError, match="one or more"):
        parse_hw_list(" , ")


@pytest.mark.parametrize("hw, d, want", [((360, 480), 16, (368, 480)), ((352, 480), 16, (352, 480)),
                                         ((359, 487), 32, (352, 480)), ((5, 7), 16, (16, 16)), ((65, 97), 1, (65, 97)),
                                         ((65, 97), 0, (65, 97))])
def test_fit_rounds_to_the_nearest_multiple_halves_up(hw, d, want):
    assert fit(hw, d) == want


def test_cache_dirs_follow_one_scheme(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGESEG_CACHE", str(tmp_path / "c"))
    assert cache_dir("kernels") == tmp_path / "c" / "kernels"
    monkeypatch.delenv("EDGESEG_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir("exports") == tmp_path / "xdg" / "edgeseg" / "exports"
    with pytest.raises(ValueError):
        cache_dir("elsewhere")


def test_data_root_comes_from_the_user(monkeypatch, tmp_path):
    monkeypatch.delenv("EDGESEG_DATA", raising=False)
    with pytest.raises(EdgesegError, match="pass --data DIR or set EDGESEG_DATA.*SegNet"):
        data_root(None)
    with pytest.raises(EdgesegError, match=r"--data .*nowhere: no such folder"):
        data_root(tmp_path / "nowhere")
    monkeypatch.setenv("EDGESEG_DATA", str(tmp_path))
    assert data_root(None) == Path(tmp_path)
    (tmp_path / "x").mkdir()
    assert data_root(str(tmp_path / "x"), what="--calib") == tmp_path / "x"
