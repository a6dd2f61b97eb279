"""Cheap motion between frames: dense optical flow on small grey images, and the warp that applies it.

`MotionEstimator.flow(prev, cur)` returns the backward flow [2,H,W] (float32, pixels of the images given): for each
pixel x of `cur`, `cur(x) ~ prev(x + flow[:, x])`, so an output computed on `prev` is carried onto `cur` by sampling
it at x + flow. The CPU implementation is OpenCV's DIS; a GPU flow (NVIDIA's optical-flow engine, cv2.cuda) would
implement the same method.

`FlowWarp` applies a pixel flow to [N,C,H,W] maps with DESIGN.md's FlowWarp semantics (bilinear, zeros outside,
align_corners=0: pixel centres), through the `edgeseg::FlowWarp` ONNX Runtime op when it is built, else through
cv2.remap on the same sampling positions. OpenCV quantises bilinear weights to 1/32 of a pixel, so the fallback
differs from the op by at most 1/64 of the step between two neighbouring values; the sampling points, the zeros
padding and the edges are the same.
"""
from __future__ import annotations

import cv2
import numpy as np

from edgeseg.errors import EdgesegError

DIS_PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
               "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}


class MotionEstimator:
    """Dense backward flow between two grey uint8 images of one size: `flow(prev, cur) -> [2,H,W]` float32 pixels."""

    name = "motion"

    def flow(self, prev: np.ndarray, cur: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class DisFlow(MotionEstimator):
    """OpenCV's DIS optical flow (CPU, coarse-to-fine patch search); ~1 ms at 240x180 with the ultrafast preset."""

    def __init__(self, preset: str = "ultrafast"):
        if preset not in DIS_PRESETS:
            raise EdgesegError(f"DIS preset {preset!r}: choose one of {', '.join(DIS_PRESETS)}")
        self.name = f"dis-{preset}"
        self._dis = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])

    def flow(self, prev, cur):
        if prev.shape != cur.shape:
            raise EdgesegError(f"flow between frames of different sizes {prev.shape} and {cur.shape}")
        # OpenCV's flow is forward (I0(x) ~ I1(x + f)): asking it from cur to prev gives the backward flow. No output
        # buffer is passed: DIS reads what it is given as an initial flow (garbage in a reused buffer crashes it).
        f = self._dis.calc(cur, prev, None)
        return np.ascontiguousarray(f.transpose(2, 0, 1))


def sample_maps(flow: np.ndarray, in_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Source pixel coordinates (map_x, map_y) of FlowWarp with align_corners=0 and FLOW = 2 * `flow` (pixels).

    DESIGN.md: g = (2x+1)/W - 1 + FLOW/W; grid_sample (align_corners=0) reads source pixel ((g+1) w - 1) / 2.
    """
    H, W = flow.shape[-2:]
    h, w = in_hw
    xs = (np.arange(W, dtype=np.float32) * 2 + 1) / W - 1
    ys = (np.arange(H, dtype=np.float32) * 2 + 1) / H - 1
    gx = xs[None, :] + flow[0] * (2.0 / W)
    gy = ys[:, None] + flow[1] * (2.0 / H)
    return ((gx + 1) * w - 1) * 0.5, ((gy + 1) * h - 1) * 0.5


def flowwarp_model_bytes(elem_type: int = 1) -> bytes:
    """A one-node ONNX model Y = edgeseg::FlowWarp(X, FLOW, align_corners=0), written without the onnx package (the
    runtime does not depend on it). elem_type: ONNX TensorProto type of X, FLOW and Y (1 float32, 10 float16)."""

    def field(number: int, payload: bytes) -> bytes:
        return _varint(number << 3 | 2) + _varint(len(payload)) + payload

    def number(n: int, value: int) -> bytes:
        return _varint(n << 3) + _varint(value)

    def value_info(name: str) -> bytes:  # ValueInfoProto{name, type{tensor_type{elem_type}}}
        return field(1, name.encode()) + field(2, field(1, number(1, elem_type)))

    attr = field(1, b"align_corners") + number(3, 0) + number(20, 2)  # AttributeProto{name, i=0, type=INT}
    node = (field(1, b"X") + field(1, b"FLOW") + field(2, b"Y") + field(3, b"warp") + field(4, b"FlowWarp")
            + field(5, attr) + field(7, b"edgeseg"))
    graph = field(1, node) + field(2, b"flowwarp") + field(11, value_info("X")) + field(11, value_info("FLOW")) \
        + field(12, value_info("Y"))
    opsets = field(8, field(1, b"") + number(2, 17)) + field(8, field(1, b"edgeseg") + number(2, 1))
    return number(1, 9) + opsets + field(7, graph)  # ir_version 9: what ONNX Runtime >= 1.15 reads


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


class FlowWarp:
    """`warp(x, flow, out)`: x [1,C,h,w] float32/16 sampled at each output pixel + flow ([2,H,W] pixels of x's grid
    when h,w == H,W). backend "auto" (the op when built, else OpenCV), "op" or "opencv"."""

    def __init__(self, backend: str = "auto", threads: int | None = None):
        from edgeseg.kernels import find_library

        if backend not in ("auto", "op", "opencv"):
            raise EdgesegError(f"warp backend {backend!r}: choose auto, op or opencv")
        if backend == "op" and find_library("ort") is None:
            from edgeseg.kernels import BUILD_HINT
            raise EdgesegError(f"the edgeseg::FlowWarp op is not built: {BUILD_HINT}")
        self.backend = "op" if backend == "op" or (backend == "auto" and find_library("ort") is not None) else "opencv"
        self.threads = threads
        self._sessions: dict = {}
        self._flow2 = None

    def _session(self, dtype: np.dtype):
        if dtype not in self._sessions:
            import onnxruntime as ort

            from edgeseg.kernels import find_library

            model = flowwarp_model_bytes(10 if dtype == np.float16 else 1)
            so = ort.SessionOptions()
            if self.threads:
                so.intra_op_num_threads = int(self.threads)
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # the cores are shared
            so.register_custom_ops_library(str(find_library("ort")))
            sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
            self._sessions[dtype] = (sess, sess.io_binding())
        return self._sessions[dtype]

    def warp(self, x: np.ndarray, flow: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        if x.ndim != 4 or x.shape[0] != 1 or flow.shape[0] != 2:
            raise EdgesegError(f"warp of {list(x.shape)} by flow {list(flow.shape)}: expected [1,C,h,w] and [2,H,W]")
        H, W = flow.shape[-2:]
        shape = (1, x.shape[1], H, W)
        if out is None:
            out = np.empty(shape, x.dtype)
        if self.backend == "opencv":
            mx, my = sample_maps(flow, x.shape[-2:])
            for c in range(x.shape[1]):
                src = x[0, c] if x.dtype != np.float16 else x[0, c].astype(np.float32)
                dst = cv2.remap(src, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
                np.copyto(out[0, c], dst, casting="unsafe")
            return out
        if self._flow2 is None or self._flow2.shape[1:] != (2, H, W) or self._flow2.dtype != x.dtype:
            self._flow2 = np.empty((1, 2, H, W), x.dtype)
        np.multiply(flow, 2.0, out=self._flow2[0], casting="unsafe")  # FLOW of DESIGN.md = 2 px with align_corners=0
        sess, io = self._session(x.dtype)
        x = np.ascontiguousarray(x)
        io.bind_input("X", "cpu", 0, x.dtype, x.shape, x.ctypes.data)
        io.bind_input("FLOW", "cpu", 0, x.dtype, self._flow2.shape, self._flow2.ctypes.data)
        io.bind_output("Y", "cpu", 0, out.dtype, out.shape, out.ctypes.data)
        sess.run_with_iobinding(io)
        return out
