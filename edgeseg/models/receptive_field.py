"""Theoretical receptive field and output stride of every stage of a model, read from one forward pass.

Each tensor carries (receptive field, jump) per axis, in input pixels: the jump is the distance between
neighbouring outputs (the output stride). A k x k convolution or pool with stride s and dilation d maps
(r, j) to (r + (k - 1) d j, s j); a transposed one to (r + (k - 1) d j / s, j / s); bilinear resizing adds one
input sample (r + j) and scales the jump by in/out, nearest resizing only scales it; unpooling halves the jump.
Ops that mix positions without bound (spatial means, adaptive pooling, matrix products over flattened pixels,
grid sampling with learned offsets) make the field global. Any other op with several inputs (add, concat,
where) takes the largest field and the finest jump. The values are traced with a torch function mode, so
branches, skips and functional calls (not only module layers) count, in execution order.

The mask form of SegNet's unpooling pools its comparison once more, so it reports one more pooling window per
unpooling than the indices form (`unpool=indices`), which is the exact figure.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from edgeseg.sizes import fit

INF = math.inf
SPATIAL = (nn.Conv2d, nn.ConvTranspose2d, nn.MaxPool2d, nn.AvgPool2d)
POOLS = ("max_pool2d", "max_pool2d_with_indices", "avg_pool2d")
GLOBAL = ("adaptive_avg_pool2d", "adaptive_max_pool2d", "matmul", "bmm", "einsum", "grid_sample")
REDUCTIONS = ("mean", "sum", "amax", "amin", "std", "var")


@dataclass(frozen=True)
class Field:
    rf: tuple[float, float]
    jump: tuple[float, float]

    def text(self) -> tuple[str, str]:
        rf = "global" if INF in self.rf else _pair(self.rf)
        return _pair(self.jump), rf


def _pair(v) -> str:
    a, b = (f"{x:g}" for x in v)
    return a if a == b else f"{a}x{b}"


def _two(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _arg(args, kwargs, i, name, default):
    return args[i] if len(args) > i else kwargs.get(name, default)


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)


class _Tracer(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.fields: dict[int, Field] = {}
        self.rows: list[tuple[str, Field]] = []
        self.scope: list[str] = []

    def get(self, t) -> Field | None:
        return self.fields.get(id(t))

    def set(self, t, f: Field) -> None:
        if id(t) not in self.fields:
            weakref.finalize(t, self.fields.pop, id(t), None)
        self.fields[id(t)] = f

    def record(self, name: str, out) -> None:
        outs = [t for t in _tensors(out) if t.dim() == 4 and t.dtype.is_floating_point and id(t) in self.fields]
        for i, t in enumerate(outs):
            self.rows.append((name if len(outs) == 1 else f"{name}[{i}]", self.get(t)))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        ins = [f for t in _tensors(list(args) + list(kwargs.values())) if (f := self.get(t)) is not None]
        if not ins:
            return out
        name = getattr(func, "__name__", "")
        x = ins[0]
        f = self._rule(name, x, ins, args, kwargs, out)
        for t in _tensors(out):
            self.set(t, f)
        return out

    @staticmethod
    def _rule(name, x, ins, args, kwargs, out) -> Field:
        if name in ("conv2d", "conv_transpose2d") or name in POOLS:
            if name.startswith("conv"):
                k = tuple(args[1].shape[-2:])
                s = _two(_arg(args, kwargs, 3, "stride", 1))
                d = _two(_arg(args, kwargs, 7 if name == "conv_transpose2d" else 5, "dilation", 1))
            else:
                k = _two(_arg(args, kwargs, 1, "kernel_size", 1))
                s = _two(_arg(args, kwargs, 2, "stride", None) or k)
                d = _two(_arg(args, kwargs, 4, "dilation", 1)) if name != "avg_pool2d" else (1, 1)
            if name == "conv_transpose2d":
                jump = tuple(j / si for j, si in zip(x.jump, s))
                return Field(tuple(r + (ki - 1) * di * j for r, ki, di, j in zip(x.rf, k, d, jump)), jump)
            return Field(tuple(r + (ki - 1) * di * j for r, ki, di, j in zip(x.rf, k, d, x.jump)),
                         tuple(j * si for j, si in zip(x.jump, s)))
        if name == "grid_sample":  # learned offsets reach anywhere; the output lies on the grid's positions
            return Field((INF, INF), ins[-1].jump)
        if name in GLOBAL:  # the output grid: the input's, rescaled when the product changes H or W (bin pooling)
            src = next((t for t in _tensors(args) if t.dim() == 4), None)
            jump = x.jump
            if isinstance(out, torch.Tensor) and out.dim() == 4 and src is not None:
                jump = tuple(j * i / o for j, i, o in zip(x.jump, src.shape[-2:], out.shape[-2:]))
            return Field((INF, INF), jump)
        if name in REDUCTIONS:
            dim = _arg(args, kwargs, 1, "dim", None)
            dims = set(range(4)) if dim is None else set(_two(dim) if not isinstance(dim, int) else (dim,))
            if dims & {2, 3, -1, -2}:
                return Field((INF, INF), x.jump)
            return x
        if name == "interpolate":
            inp = args[0]
            out_hw = _arg(args, kwargs, 1, "size", None)
            if out_hw is None:
                sf = _two(_arg(args, kwargs, 2, "scale_factor", 1))
                ratio = tuple(1 / v for v in sf)
            else:
                ratio = tuple(i / o for i, o in zip(inp.shape[-2:], _two(out_hw)))
            linear = _arg(args, kwargs, 3, "mode", "nearest") in ("bilinear", "bicubic", "linear")
            if tuple(inp.shape[-2:]) == tuple(out.shape[-2:]):
                return x  # a resize to the same size is the identity
            return Field(tuple(r + (j if linear else 0) for r, j in zip(x.rf, x.jump)),
                         tuple(j * q for j, q in zip(x.jump, ratio)))
        if name == "max_unpool2d":
            s = _two(_arg(args, kwargs, 3, "stride", None) or _arg(args, kwargs, 2, "kernel_size", 2))
            rf = tuple(max(v) for v in zip(*(f.rf for f in ins)))
            return Field(rf, tuple(j / si for j, si in zip(x.jump, s)))
        if len(ins) > 1:
            return Field(tuple(max(v) for v in zip(*(f.rf for f in ins))), tuple(min(v) for v in zip(*(f.jump for f in ins))))
        return x


def _has_spatial(m: nn.Module) -> bool:
    return any(isinstance(s, SPATIAL) for s in m.modules())


def receptive_fields(model: nn.Module, size: tuple[int, int] = (256, 256), depth: int = 3) -> list[tuple[str, Field]]:
    """[(stage, Field)] in execution order: the output of each pool and of each module with children, down to
    `depth`, that holds a convolution or pool (single convolutions are left out), and the model's `output`."""
    tracer = _Tracer()
    hooks = []
    for name, m in model.named_modules():
        stage = isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) or (next(m.children(), None) is not None and _has_spatial(m))
        if not name or name.count(".") >= depth or not stage:
            continue

        def pre(mod, inp, name=name):
            tracer.scope.append(name)

        def post(mod, inp, out, name=name):
            tracer.scope.pop()
            tracer.record(name, out)

        hooks += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    x = torch.randn(1, 3, *fit(size, getattr(model, "size_divisor", 1)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), tracer:
            tracer.set(x, Field((1.0, 1.0), (1.0, 1.0)))
            out = model(x)
        tracer.record("output", out)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    rows = []
    for row in tracer.rows:
        if not rows or rows[-1] != row:
            rows.append(row)
    return rows


def format_report(arch: str, rows, size) -> str:
    width = max(len(n) for n, _ in rows)
    lines = [f"{arch}: theoretical receptive field (input pixels, dilations included) at a {size[0]}x{size[1]} input",
             f"  {'stage':<{width}}  {'stride':>7}  receptive field"]
    for name, f in rows:
        stride, rf = f.text()
        lines.append(f"  {name:<{width}}  {stride:>7}  {rf}")
    return "\n".join(lines)
