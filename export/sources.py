"""What an export starts from: a checkpoint, any torch module, or an ONNX file; each gives the export its
metadata, the fp32 graph and the reference that graph is validated against (PyTorch, or ONNX Runtime on the source)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from edgeseg.errors import EdgesegError
from edgeseg.meta import IMAGENET_MEAN, IMAGENET_STD, make_meta
from edgeseg.sizes import fit


class Source:
    kind = ""
    name: str
    path: str  # what the report names as the source
    sha: str
    arch: str
    classes = None  # ClassInfo
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    divisor = 1
    hard_decisions = ""  # see SegModel.hard_decisions
    fixed_size = None  # (h, w) when the graph takes only that size
    key_extra: dict | None = None  # besides sha: what else decides the graph (the cache key)

    def meta(self, opts) -> dict:
        fused = opts.fused_preprocess
        return make_meta(self.arch, self.classes, size_divisor=self.divisor, mean=self.mean, std=self.std,
                         head=opts.head, layout="NHWC" if fused else "NCHW", color="BGR" if fused else "RGB",
                         dtype="uint8" if fused else "float32", source_sha256=self.sha, **self._meta_extra())

    def _meta_extra(self) -> dict:
        return {}

    def fp32(self, opts, size: tuple[int, int]):
        """(fp32 onnx.ModelProto, reference predictor on numpy batches, reference name)."""
        raise NotImplementedError


class _Torch(Source):
    """A torch module as deployed (Deployable): exported with the TorchScript exporter, validated against itself."""
    net = None

    def fp32(self, opts, size):
        import torch

        from edgeseg.export.torch_export import Deployable, example_input, export_onnx, split_thin_convs

        wrapper = Deployable(self.net, opts.head, opts.fused_preprocess, self.mean, self.std)
        deployed = Deployable(split_thin_convs(self.net), opts.head, opts.fused_preprocess, self.mean, self.std)
        model = export_onnx(deployed, example_input(*size, opts.fused_preprocess), opts.opset)

        @torch.inference_mode()
        def reference(x):  # the model as trained
            return wrapper(torch.from_numpy(x)).numpy()
        return model, reference, "pytorch"


class CheckpointSource(_Torch):
    kind = "checkpoint"

    def __init__(self, model: str, options: dict | None = None, name: str | None = None):
        from edgeseg.fileio import sha256_file
        from edgeseg.models import checkpoint

        src = checkpoint.resolve(model)
        self.rec = checkpoint.with_options(checkpoint.load_record(model), options or {}, str(src))
        self.net = checkpoint.build_model(self.rec, str(src))
        self.path, self.sha, self.arch = str(src), sha256_file(src), self.rec["arch"]
        self.name = name or (model if model in checkpoint.SHIPPED else src.stem) + checkpoint.options_suffix(options or {})
        self.key_extra = {"options": options} if options else None
        self.classes = checkpoint.classes_of(self.rec)
        self.mean, self.std = self.rec["mean"], self.rec["std"]
        self.divisor = getattr(self.net, "size_divisor", 1)
        self.hard_decisions = self.net.hard_decisions

    def _meta_extra(self) -> dict:
        return {"metrics": self.rec.get("metrics") or {}, "train_size": self.rec.get("train_size")}


def _class_info(classes):
    from edgeseg.data.classes import ClassInfo

    if isinstance(classes, ClassInfo):
        return classes
    if isinstance(classes, (str, os.PathLike)):
        return ClassInfo.load(classes)
    raise EdgesegError("classes= is required with a module or a foreign ONNX file: a classes.json path or an "
                       "edgeseg.data.classes.ClassInfo")


class ModuleSource(_Torch):
    """Any nn.Module mapping normalised images to per-class scores (see torch_export.Scores)."""
    kind = "module"

    def __init__(self, module, opts, *, classes, mean, std, output, resize_output: bool):
        from edgeseg.export.torch_export import Scores, module_sha, output_stride

        module.eval()
        self.classes = _class_info(classes)
        self.mean, self.std = tuple(mean or IMAGENET_MEAN), tuple(std or IMAGENET_STD)
        self.arch = type(module).__name__
        self.name = opts.name or self.arch.lower()
        self.path, self.sha = f"<{type(module).__module__}.{type(module).__qualname__}>", module_sha(module)
        self.divisor = int(getattr(module, "size_divisor", 1) or 1)
        self.hard_decisions = str(getattr(module, "hard_decisions", "") or "")
        n, self.stride = output_stride(module, fit(opts.sizes[0], self.divisor), output)
        if n != self.classes.num_classes:
            raise EdgesegError(f"{self.arch} outputs {n} class scores but classes= names {self.classes.num_classes} "
                               f"classes; pass the classes the model was trained on")
        resize = bool(resize_output) and self.stride != 1
        self.net = Scores(module, n, output, resize, self.arch)
        self.key_extra = {"output": repr(output), "resize_output": resize, "mean": list(self.mean),
                          "std": list(self.std), "classes": self.classes.to_dict()}

    def meta(self, opts) -> dict:
        meta = super().meta(opts)
        if self.stride != 1 and not self.net.resize and opts.head == "logits":
            meta["output_stride"] = self.stride  # scores at 1/stride of the input: the runtime upsamples them
        elif self.stride != 1 and not self.net.resize:
            raise EdgesegError(f"{self.arch}: an argmax head at 1/{self.stride} resolution would lose the upsampling; "
                               f"pass resize_output=True")
        return meta


class OnnxSource(Source):
    """An ONNX file: with edgeseg's metadata as it is, else adopted first (edgeseg.export.adopt: metadata, dynamic
    H/W); ONNX Runtime on the original file is the reference the fp32 graph is validated against."""
    kind = "onnx"

    def __init__(self, path: Path, opts, *, classes, mean, std, input_name=None, input_layout=None, output=None):
        from edgeseg.export.graph import get_meta, load
        from edgeseg.fileio import sha256_file
        from edgeseg.meta import META_KEY

        if opts.head != "logits" or opts.fused_preprocess:
            raise EdgesegError(f"{path}: --head and --fused-preprocess change a torch model's graph; an ONNX file is "
                               f"exported as it is")
        self.original, self.path, self.sha = path, str(path), sha256_file(path)
        self.name = opts.name or path.name.split(".")[0]
        model = load(path)
        if any(p.key == META_KEY for p in model.metadata_props):
            if input_name or input_layout or output is not None:
                raise EdgesegError(f"{path}: an edgeseg ONNX already names its input and output; --input, --output "
                                   f"and --input-layout describe a foreign one")
            self.graph, meta = path, get_meta(model, str(path))
            if meta.get("precision", "fp32") != "fp32":
                raise EdgesegError(f"{path}: a {meta['precision']} graph; export from the fp32 one (every precision is "
                                   f"made from fp32)")
        else:
            from edgeseg.export.adopt import adopt_onnx

            self._work = tempfile.TemporaryDirectory(prefix="edgeseg-adopt-")  # removed with this object
            self.graph = Path(self._work.name) / path.name
            if output is not None and not isinstance(output, str):
                raise EdgesegError(f"{path}: output={output!r}: name the ONNX output tensor (a string)")
            meta = adopt_onnx(path, self.graph, classes=_class_info(classes), mean=mean, std=std, data=opts.data,
                              arch=opts.name or path.stem, input_name=input_name, input_layout=input_layout or "NCHW",
                              output_name=output)
            self.key_extra = ({k: meta[k] for k in ("classes", "palette", "ignore_index")} | {"input": meta["input"]}
                              | {"adopted": meta.get("adopted")})
        self.meta_in, self.arch = meta, meta.get("arch") or self.name
        self.divisor = int(meta["input"].get("size_divisor") or 1)

    def meta(self, opts) -> dict:
        return dict(self.meta_in, precision="fp32", source={"sha256": self.sha})

    @property
    def fixed_size(self) -> tuple[int, int] | None:
        """The one size a graph whose H and W could not be made dynamic takes."""
        fixed = self.meta_in["input"].get("fixed_size")
        return tuple(fixed) if fixed else None

    def fp32(self, opts, size):
        from edgeseg.export.graph import load
        from edgeseg.runtime.backends.ort import ort_session

        adopted = self.meta_in.get("adopted") if self.graph != self.original else None
        original = _Original(ort_session(self.original), adopted)
        if adopted and original.static:
            # it runs at its export shape only, where the adoption compared the two; other sizes and batches have
            # no reference beyond the adopted graph itself
            from edgeseg.export.validate import OrtPredictor

            shape = "x".join(str(d) for d in original.static)
            return load(self.graph), OrtPredictor(str(self.graph)), f"adopted onnx (matched the original at {shape})"
        return load(self.graph), original, "source onnx"


class _Original:
    """The source ONNX as the reference: fed what the adopted graph takes (NCHW; an NHWC original gets it transposed),
    answering with the output the adoption chose (a [N,1,H,W] label map as [N,H,W])."""

    def __init__(self, session, adopted: dict | None):
        self.session, self.input = session, session.get_inputs()[0].name
        self.output = adopted["output"] if adopted else session.get_outputs()[0].name
        self.nhwc = bool(adopted) and adopted.get("input_layout") == "NHWC"
        if adopted:
            self.input = adopted["input"]
        shape = next(i.shape for i in session.get_inputs() if i.name == self.input)
        nhw = (shape[0], *(shape[1:3] if self.nhwc else shape[2:4]))
        # the original's shape when N, H or W is fixed (an export frozen to one shape); None when they are symbolic
        self.static = tuple(shape) if any(isinstance(d, int) for d in nhw) else None

    def __call__(self, x):
        if self.nhwc:
            x = x.transpose(0, 2, 3, 1).copy()
        y = self.session.run([self.output], {self.input: x})[0]
        return y[:, 0] if y.ndim == 4 and y.shape[1] == 1 else y


def open_source(model, opts, *, classes=None, mean=None, std=None, output=None, resize_output: bool = False,
                input_name: str | None = None, input_layout: str | None = None,
                model_options: dict | None = None) -> Source:
    import torch.nn as nn

    onnx_file = str(model).lower().endswith(".onnx") and not isinstance(model, nn.Module)
    if model_options and (onnx_file or isinstance(model, nn.Module)):
        raise EdgesegError(f"--opt {next(iter(model_options))}: options change a checkpoint's architecture; "
                           f"{model if onnx_file else 'a module'} is built already")
    if (input_name or input_layout) and not onnx_file:
        raise EdgesegError(f"{model}: --input and --input-layout choose the image input of a foreign ONNX file")
    if isinstance(model, nn.Module):
        return ModuleSource(model, opts, classes=classes, mean=mean, std=std, output=output,
                            resize_output=resize_output)
    if onnx_file:
        return OnnxSource(Path(model), opts, classes=classes, mean=mean, std=std, input_name=input_name,
                          input_layout=input_layout, output=output)
    if classes is not None or output is not None:
        raise EdgesegError(f"{model}: classes= and output= describe a module or a foreign ONNX file; a checkpoint "
                           f"carries its own")
    return CheckpointSource(str(model), model_options, opts.name)
