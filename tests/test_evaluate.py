import numpy as np
import pytest

from edgeseg.data import ClassInfo
from edgeseg.errors import EdgesegError
from edgeseg.evaluate import ConfusionMatrix, evaluate, predict_labels

CLASSES = ClassInfo(("a", "b", "c"), ((0, 0, 0), (1, 1, 1), (2, 2, 2)), ignore_index=255)


def test_confusion_matrix_against_per_class_counts():
    rng = np.random.default_rng(0)
    t = rng.choice([0, 1, 2, 255], (50, 60))
    p = rng.integers(0, 3, (50, 60))
    cm = ConfusionMatrix(3, 255)
    cm.update(p, t)
    m = cm.metrics(CLASSES.names)
    valid = t != 255
    ious = []
    for c in range(3):
        inter = ((p == c) & (t == c) & valid).sum()
        union = (((p == c) | (t == c)) & valid).sum()
        ious.append(inter / union)
        assert m["per_class_iou"][CLASSES.names[c]] == pytest.approx(ious[-1])
    assert m["miou"] == pytest.approx(np.mean(ious))
    acc = [((p == c) & (t == c)).sum() / (t == c).sum() for c in range(3)]
    assert m["macc"] == pytest.approx(np.mean(acc))


def test_absent_class_is_not_averaged():
    cm = ConfusionMatrix(3, 255)
    cm.update(np.array([0, 1, 1]), np.array([0, 1, 1]))
    m = cm.metrics(CLASSES.names)
    assert m["miou"] == 1.0 and m["per_class_iou"]["c"] is None


def _oracle(labels_of):
    """A predictor whose logits put the true class on top (one-hot * 5)."""
    def predict(x):
        lab = labels_of(x)
        return (np.eye(3, dtype=np.float32)[lab].transpose(0, 3, 1, 2) * 5)
    return predict


def test_evaluate_perfect_predictor_with_tta():
    h, w = 20, 30
    truth = np.random.default_rng(1).integers(0, 3, (h, w))
    img = np.zeros((h, w, 3), np.uint8)

    def labels_of(x):  # resize the truth to whatever size the TTA asks for
        import cv2
        lab = cv2.resize(truth.astype(np.uint8), (x.shape[3], x.shape[2]), interpolation=cv2.INTER_NEAREST)
        return np.stack([lab if i == 0 else lab[:, ::-1] for i in range(x.shape[0])])

    data = [(img, truth)]
    assert evaluate(_oracle(labels_of), data, CLASSES, progress=False)["miou"] == 1.0
    tta = evaluate(_oracle(labels_of), data, CLASSES, scales=(0.5, 1.0, 2.0), flip=True, progress=False)
    assert tta["miou"] > 0.6  # resampled oracles still agree on most pixels


def test_argmax_head_refuses_tta():
    img = np.zeros((8, 8, 3), np.uint8)
    labels = lambda x: np.zeros((x.shape[0], 8, 8), np.int64)  # noqa: E731
    assert predict_labels(labels, img).shape == (8, 8)
    with pytest.raises(EdgesegError, match="drop --tta"):
        predict_labels(labels, img, flip=True)
