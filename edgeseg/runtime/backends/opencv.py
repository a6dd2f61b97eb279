"""OpenCV DNN (`cv2.dnn.readNetFromONNX`) on its default CPU backend: a peer the benchmark compares with."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.runtime.backends.base import Backend


def _cv_error_line(e: Exception) -> str:
    # "OpenCV(5.0.0) /path/file.cpp:61: error: (-210:...) Clip: unsupported depth in function 'typeMax'"
    text = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    return text.split(" error: ", 1)[-1]


class OpenCVBackend(Backend):
    formats = (".onnx",)

    def __init__(self, path: Path, name: str = "opencv", threads: int | None = None):
        import cv2

        from edgeseg.runtime.backends.ort import ort_session  # the metadata and I/O types, read once

        if threads:
            cv2.setNumThreads(int(threads))
        try:
            self.net = cv2.dnn.readNetFromONNX(str(path))
        except cv2.error as e:
            raise EdgesegError(f"{path}: OpenCV DNN cannot read the graph: {_cv_error_line(e)}") from None
        from edgeseg.meta import META_KEY, parse_meta

        session = ort_session(path, optimization="disable")
        inp = session.get_inputs()[0]
        text = session.get_modelmeta().custom_metadata_map.get(META_KEY)
        if text is None:
            raise EdgesegError(f"{path}: no edgeseg metadata in the ONNX; export it with `edgeseg export`")
        self.name = name
        super().__init__(path, parse_meta(text, str(path)), inp.shape, np.float32, np.float32)
        del session

    def output_shape(self, input_shape):
        return tuple(self.infer(np.zeros(input_shape, self.input_dtype)).shape)

    def infer(self, x, out=None):
        import cv2

        self.check_input(x)
        try:
            self.net.setInput(np.ascontiguousarray(x))
            y = self.net.forward()
        except cv2.error as e:
            raise EdgesegError(f"{self.path.name}: OpenCV DNN cannot run the graph: {_cv_error_line(e)}") from None
        if out is None:
            return y
        np.copyto(out, y)
        return out

    def close(self):
        super().close()
        self.net = None
