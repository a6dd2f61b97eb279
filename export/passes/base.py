"""What an export pass is: a step from validated graphs to new graphs, each checked by the pipeline's one checker.

A pass says whether the user asked for it (`wanted`), checks its inputs before any work (`prepare`, so that bad
input stops the export before a file is made), may decline at run time (`skip_reason`), and returns its graphs
(`apply`) with the graph each is validated against and the gates it must meet. A pass that raises fails alone:
the graphs other passes made and validated are still published.
"""
from __future__ import annotations

from dataclasses import dataclass

import onnx


@dataclass
class Output:
    key: str  # report and file key: "fp16", "int8", "fp32-flowwarp", ...
    model: onnx.ModelProto
    precision: str  # "fp32" | "fp16" | "int8": the metadata's precision and the file name's
    reference: str  # the key of the validated graph it is compared with
    max_abs: float | None = None  # gates (Gates fields); None: not checked
    min_agree: float | None = None
    decided_by: str | None = None  # when a measurement other than these comparisons decides (the mIoU guard)
    meta: dict | None = None  # extra metadata entries for this precision


class Pass:
    name = ""

    def wanted(self, opts) -> bool:
        raise NotImplementedError

    def prepare(self, ctx) -> None:
        """Read and check the pass's inputs (calibration images, labelled data) before the export starts."""

    def skip_reason(self, ctx) -> str | None:
        """Why the pass has nothing to do for this model (None: it runs)."""
        return None

    def apply(self, ctx) -> list[Output]:
        raise NotImplementedError
