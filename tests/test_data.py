import json

import cv2
import numpy as np
import pytest

from edgeseg.data import CAMVID, ClassInfo, EvalTransform, SegFolder, TrainTransform, normalize
from edgeseg.errors import EdgesegError
from edgeseg.meta import IMAGENET_MEAN, IMAGENET_STD
from tests.conftest import shrink_camvid


def test_camvid_splits_and_labels(camvid):
    train, val = SegFolder(camvid, "train"), SegFolder(camvid, "val")
    assert (len(train), len(val)) == (367, 101)
    assert train.classes == CAMVID and train.classes.ignore_index == 11
    img, lab = val[0]
    assert img.shape == (360, 480, 3) and img.dtype == np.uint8 and lab.shape == (360, 480)
    assert set(np.unique(lab)) <= set(range(12))
    assert train.items[0][0].stem == train.items[0][1].stem


def test_generic_folder_with_classes_file(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(tmp_path / "images" / f"f{i}.jpg"), rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))
        cv2.imwrite(str(tmp_path / "masks" / f"f{i}.png"), rng.choice([0, 1, 255], (40, 50)).astype(np.uint8))
    (tmp_path / "classes.json").write_text(json.dumps({"names": ["bg", "thing"], "palette": [[0, 0, 0], [255, 0, 0]], "ignore_index": 255}))
    ds = SegFolder(tmp_path, "train")
    assert len(ds) == 3 and ds.classes.names == ("bg", "thing")
    img, lab = ds[2]
    assert img.shape == (40, 50, 3) and set(np.unique(lab)) <= {0, 1, 255}


def _bad(tmp_path, camvid, mutate):
    root = shrink_camvid(camvid, tmp_path / "d", n_train=2, n_val=1)
    mutate(root)
    with pytest.raises(EdgesegError) as e:
        ds = SegFolder(root, "train")
        [ds[i] for i in range(len(ds))]
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_bad_inputs_name_the_file(tmp_path, camvid):
    first = lambda root: sorted((root / "labels" / "train").iterdir())[0]  # noqa: E731
    msg = _bad(tmp_path / "a", camvid, lambda r: first(r).unlink())
    assert "no label" in msg and "0001TP_006690" in msg
    msg = _bad(tmp_path / "b", camvid, lambda r: cv2.imwrite(str(first(r)), np.zeros((10, 10), np.uint8)))
    assert "10x10" in msg and "0001TP_006690" in msg
    msg = _bad(tmp_path / "c", camvid, lambda r: cv2.imwrite(str(first(r)), np.full((96, 128), 40, np.uint8)))
    assert "label value 40 is out of range" in msg
    msg = _bad(tmp_path / "d", camvid, lambda r: first(r).write_bytes(b"not a png"))
    assert "cannot read the label" in msg
    msg = _bad(tmp_path / "e", camvid, lambda r: [p.unlink() for p in (r / "images" / "train").iterdir()])
    assert "no images" in msg
    with pytest.raises(EdgesegError, match="data folder not found"):
        SegFolder(tmp_path / "missing", "train")


def test_classes_file_errors(tmp_path):
    with pytest.raises(EdgesegError, match="'palette' needs one"):
        ClassInfo.from_dict({"names": ["a", "b"], "palette": [[0, 0, 0]]})
    with pytest.raises(EdgesegError, match="'palette' needs one"):  # two values per colour
        ClassInfo.from_dict({"names": ["a", "b"], "palette": [[0, 0], [1, 1]]})
    with pytest.raises(EdgesegError, match="is a class index"):
        ClassInfo.from_dict({"names": ["a", "b"], "ignore_index": 1})
    path = tmp_path / "c.json"
    path.write_text("{oops")
    with pytest.raises(EdgesegError, match="c.json"):
        ClassInfo.load(path)
    path.write_text('{"names": "SkyBuilding"}')  # a string is not read letter by letter
    with pytest.raises(EdgesegError, match="c.json: 'names' must be a list"):
        ClassInfo.load(path)
    path.write_text('{"names": []}')
    with pytest.raises(EdgesegError, match="c.json: 'names' must list at least one class"):
        ClassInfo.load(path)
    path.write_bytes(b"\x80\x81{}")
    with pytest.raises(EdgesegError, match="c.json: the classes file is not UTF-8"):
        ClassInfo.load(path)
    path.write_text('{"names": ["sky", "road"], "palette": [[1, 2, 3], [4, 5, 6]]}', encoding="utf-16")  # with a BOM
    assert ClassInfo.load(path) == ClassInfo(("sky", "road"), ((1, 2, 3), (4, 5, 6)), 255)


def test_train_transform_crop_pad_and_determinism(camvid):
    img, lab = SegFolder(camvid, "val")[0]
    t = TrainTransform((256, 320), ignore_index=11, scale=(0.5, 0.5), flip=False)  # 180x240: must pad
    x, y = t(img, lab, np.random.default_rng(1))
    assert x.shape == (3, 256, 320) and x.dtype == np.float32 and y.shape == (256, 320)
    assert (y[180:] == 11).all() and (y[:, 240:] == 11).all()  # padding is ignored
    assert np.allclose(x[:, 200:, 300:], 0, atol=0.03)  # padded with the mean colour
    x2, y2 = t(img, lab, np.random.default_rng(1))
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    big = TrainTransform((128, 128), ignore_index=11, scale=(2.0, 2.0), jitter=0)
    _, y3 = big(img, lab, np.random.default_rng(2))
    assert set(np.unique(y3)) <= set(np.unique(lab))  # nearest-neighbour labels invent no classes


def test_normalize_and_eval_transform():
    img = np.full((4, 6, 3), 255, np.uint8)
    x = normalize(img)
    assert x.shape == (3, 4, 6)
    assert np.allclose(x[:, 0, 0], (1 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD), atol=1e-6)
    assert EvalTransform((8, 12))(img).shape == (3, 8, 12)
