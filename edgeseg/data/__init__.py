"""Datasets (CamVid and generic folders) and transforms; torch-free."""
from edgeseg.data.classes import CAMVID, ClassInfo
from edgeseg.data.folders import SegFolder, read_image, read_label
from edgeseg.data.transforms import EvalTransform, TrainTransform, normalize

__all__ = ["CAMVID", "ClassInfo", "SegFolder", "read_image", "read_label", "EvalTransform", "TrainTransform", "normalize"]
