"""The classic architectures beyond the shared model test: SegNet's index-free unpooling, UNet++'s pruned heads,
AlignSeg's flow warps, the graph-reasoning context units, and TensorRT-parsable op types."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from test_archs_transformer import ORT_CPU, TENSORRT_OPS, export
from test_models import randomize
from torch import nn
from torch.overrides import TorchFunctionMode

from edgeseg.export.flowwarp import count_flowwarp, fuse_flowwarp
from edgeseg.export.torch_export import Deployable, export_onnx
from edgeseg.kernels import DOMAIN, OP_TYPE, find_library, register_ort_ops
from edgeseg.models import create
from edgeseg.models.archs.alignseg import AlignCM, AlignFA
from edgeseg.models.archs.segnet import SwitchPool, unpool

pytestmark = pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export",
                                        "ignore:The feature will be removed")
NUM_CLASSES = 5


def op_types(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in model.graph.node}


# ---------------------------------------------------------------- SegNet
class RoundTrip(nn.Module):
    """A SegNet pool -> unpool round trip. The decoder values differ from the pooled maxima, so a value put at the
    wrong position of its window shows."""

    def __init__(self, form: str = "mask"):
        super().__init__()
        self.pool = SwitchPool(form)

    def forward(self, x):
        pooled, switch = self.pool(x)
        return unpool(2 * pooled + 1, switch)


def reference_unpool(x: torch.Tensor) -> torch.Tensor:
    pooled, idx = F.max_pool2d(x, 2, 2, ceil_mode=True, return_indices=True)
    return F.max_unpool2d(2 * pooled + 1, idx, 2, 2, output_size=x.shape[-2:])


def unpool_inputs(h: int, w: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values, and ties: few levels, 2x2 blocks on the pool grid (four-way ties in every window) and 2x2
    blocks a row or a column off it (a window's maximum tied within a row, or within a column)."""
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randn(2, 3, h // 2 + 2, w // 2 + 2, generator=g).repeat_interleave(2, 2).repeat_interleave(2, 3)
    return {"random": torch.randn(2, 3, h, w, generator=g),
            "levels": torch.randint(0, 3, (2, 3, h, w), generator=g).float(),
            "aligned blocks": blocks[..., :h, :w].contiguous(),
            "row-shifted blocks": blocks[..., 1:h + 1, :w].contiguous(),
            "column-shifted blocks": blocks[..., :h, 1:w + 1].contiguous()}


@pytest.mark.parametrize("h,w", [(8, 12), (7, 9), (16, 21)])  # odd sizes: ceil mode's partial windows
def test_segnet_mask_unpool_is_max_unpool2d(h, w):
    for kind, x in unpool_inputs(h, w).items():
        got, ref = RoundTrip()(x), reference_unpool(x)
        assert torch.equal(got, ref), f"{kind} {h}x{w}: {int((got != ref).sum())} positions differ"
        assert int((got != 0).sum()) == 2 * 3 * -(-h // 2) * -(-w // 2)  # one value per window, ties included


@pytest.mark.parametrize("form", ["mask", "indices"])
def test_segnet_unpool_onnx_at_other_sizes(form):
    graph = export(RoundTrip(form), (10, 14))
    sess = ort.InferenceSession(graph, providers=ORT_CPU)
    for h, w in [(7, 9), (16, 21)]:
        for kind, x in unpool_inputs(h, w, seed=1).items():
            got = sess.run(None, {"images": x.numpy()})[0]
            ref = reference_unpool(x).numpy()
            assert got.shape == ref.shape and np.array_equal(got, ref), f"{form} {kind} {h}x{w}: ONNX Runtime differs"


def test_segnet_unpool_modes_agree_with_the_same_weights():
    """Behind ReLUs whole windows are 0: the tie rule decides where the decoder's values land."""
    torch.manual_seed(0)
    mask = randomize(create("segnet_basic", NUM_CLASSES, width=16))
    indices = create("segnet_basic", NUM_CLASSES, width=16, unpool="indices").eval()
    indices.load_state_dict(mask.state_dict())
    x = torch.randn(1, 3, 65, 97)
    with torch.no_grad():
        torch.testing.assert_close(mask(x), indices(x), rtol=0, atol=0)


# ---------------------------------------------------------------- UNet++
@pytest.fixture(scope="module")
def unetpp_full() -> nn.Module:
    torch.manual_seed(0)
    return randomize(create("unetpp", NUM_CLASSES, width=8))


@pytest.mark.parametrize("level", [1, 2, 3, 4])
def test_unetpp_pruned_model_is_the_full_models_head(unetpp_full, level):
    pruned = create("unetpp", NUM_CLASSES, width=8, prune=level).eval()
    keys = pruned.load_state_dict(unetpp_full.state_dict(), strict=False)
    assert keys.missing_keys == []  # the sub-network's names are the full model's
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        top = unetpp_full.decoder(unetpp_full.encoder(x))
        ref = unetpp_full.heads[level - 1](top[level - 1])
        torch.testing.assert_close(pruned(x), ref, rtol=1e-5, atol=1e-5)
        if level < 4:  # the comparison tells the heads apart
            assert (unetpp_full(x) - ref).abs().max() > 1e-2


def test_a_trained_unetpp_exports_and_benchmarks_at_a_pruned_level(tiny_camvid, tmp_path, capsys):
    """`--opt prune=L` on a full UNet++ checkpoint: the export is the full model's head L; bench gives a row per level;
    options that would need retraining are refused in one line."""
    from edgeseg.cli import main
    from edgeseg.data import CAMVID
    from edgeseg.models import checkpoint

    torch.manual_seed(0)
    full = randomize(create("unetpp", CAMVID.num_classes, width=8)).eval()
    ckpt = tmp_path / "unetpp.pt"
    checkpoint.save(checkpoint.model_record(full, CAMVID), ckpt)
    out = tmp_path / "exp"
    assert main(["export", "--model", str(ckpt), "--opt", "prune=2", "--out", str(out), "--data", str(tiny_camvid),
                 "--no-guard", "--validate-sizes", "64x96,96x128", "--validate-images", "1"]) == 0
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        want = full.heads[1](full.decoder(full.encoder(x))[1]).numpy()
    sess = ort.InferenceSession(str(out / "unetpp-prune2.fp32.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0], want, rtol=1e-4, atol=1e-4)

    capsys.readouterr()
    assert main(["bench", "--model", str(ckpt), "--opt", "prune=1,2", "--backend", "ort-cpu", "--size", "64x96",
                 "--threads", "1", "--min-time", "0", "--min-runs", "2", "--warmup", "0", "--cache",
                 str(tmp_path / "cache"), "--out", str(tmp_path / "bench")]) == 0
    rows = json.loads((tmp_path / "bench" / "bench.json").read_text())["rows"]
    assert [r["model"] for r in rows] == ["unetpp-prune1", "unetpp-prune2"] and all(r["status"] == "ok" for r in rows)
    assert rows[0]["gflop"] < rows[1]["gflop"] and rows[0]["params_m"] < rows[1]["params_m"]

    for argv, named in ((["export", "--model", str(ckpt), "--opt", "width=16", "--out", str(tmp_path / "e2")], "width=16"),
                        (["bench", "--model", str(ckpt), "--opt", "prune", "--out", str(tmp_path / "b2")], "prune")):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert named in err and len(err.splitlines()) == 1 and not (tmp_path / argv[-1]).exists()


# ---------------------------------------------------------------- AlignSeg
class CountGridSample(TorchFunctionMode):
    """Counts F.grid_sample calls in the code it runs."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += func is F.grid_sample
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def alignseg() -> dict:
    """A randomized AlignSeg (its offset convolutions start at zero: random ones make every warp move), its
    exported graph and the graph after the FlowWarp rewrite."""
    torch.manual_seed(0)
    model = randomize(create("alignseg", NUM_CLASSES, dim=32))
    graph = export_onnx(Deployable(model), torch.randn(1, 3, 64, 96))
    fused, info = fuse_flowwarp(graph)
    return {"model": model, "graph": graph, "fused": fused, "info": info}


def test_alignseg_flowwarp_pass_finds_every_warp(alignseg):
    model, offsets = alignseg["model"], []
    convs = [m.offsets for m in model.modules() if isinstance(m, AlignFA)]
    convs += [m.offset for m in model.modules() if isinstance(m, AlignCM)]
    hooks = [c.register_forward_hook(lambda m, i, out: offsets.append(float(out.abs().max()))) for c in convs]
    with torch.no_grad(), CountGridSample() as counter:
        model(torch.randn(1, 3, 64, 96))
    for h in hooks:
        h.remove()
    assert counter.calls == model.num_warps and min(offsets) > 0.5  # warps that move features by pixels
    assert sum(n.op_type == "GridSample" for n in alignseg["graph"].graph.node) == counter.calls
    fused = alignseg["fused"]
    assert alignseg["info"]["replaced"] == count_flowwarp(fused) == counter.calls
    assert "GridSample" not in op_types(fused)
    assert {n.domain for n in fused.graph.node if n.op_type == OP_TYPE} == {DOMAIN}


def test_alignseg_fused_graph_matches_gridsample_graph(alignseg, kernels_built):
    """`kernels_built` builds the op once per run where this machine can (under CI a skip here fails)."""
    if find_library("ort") is None:
        pytest.skip("the FlowWarp ONNX Runtime op is not built (`edgeseg kernels build`)")
    opts = ort.SessionOptions()
    assert register_ort_ops(opts)
    plain = ort.InferenceSession(alignseg["graph"].SerializeToString(), providers=ORT_CPU)
    fused = ort.InferenceSession(alignseg["fused"].SerializeToString(), opts, providers=ORT_CPU)
    for h, w in [(64, 96), (65, 97), (96, 128)]:
        x = torch.randn(1, 3, h, w)
        with torch.no_grad():
            ref = alignseg["model"](x).numpy()
        want = plain.run(None, {"images": x.numpy()})[0]
        got = fused.run(None, {"images": x.numpy()})[0]
        assert got.shape == want.shape == ref.shape and np.abs(ref).max() > 0.05
        assert np.abs(got - want).max() <= 1e-4, f"at {h}x{w}: max |FlowWarp - GridSample| = {np.abs(got - want).max():.2e}"
        assert np.abs(want - ref).max() <= 1e-4, f"at {h}x{w}: max |GridSample - torch| = {np.abs(want - ref).max():.2e}"


# ---------------------------------------------------------------- TensorRT
@pytest.mark.parametrize("arch,options", [("segnet", {}), ("segnet", {"unpool": "indices"}), ("segnet_basic", {}),
                                          ("segnet_basic", {"unpool": "indices"}), ("alignseg", {}), ("unetpp", {}),
                                          ("u2netp", {}), ("deeplabv1", {}), ("deeplabv2", {}), ("deeplabv3", {}),
                                          ("espnet", {})])
def test_export_op_types_are_in_tensorrts_parser(arch, options):
    model = create(arch, NUM_CLASSES, **options).eval()
    graph = export_onnx(Deployable(model), torch.randn(1, 3, 64, 96))
    for m in [graph] + ([fuse_flowwarp(graph)[0]] if arch == "alignseg" else []):
        ops = op_types(m) - {OP_TYPE}
        assert ops - TENSORRT_OPS == set(), f"{arch} {options}: not in onnx-tensorrt's list: {sorted(ops - TENSORRT_OPS)}"
        assert {(n.domain, n.op_type) for n in m.graph.node if n.domain not in ("", "ai.onnx")} <= {(DOMAIN, OP_TYPE)}
    if arch.startswith("segnet"):  # TensorRT's parser takes MaxPool without its indices output only
        indexed = [n.name for n in graph.graph.node if n.op_type == "MaxPool" and len(n.output) > 1 and n.output[1]]
        assert bool(indexed) == (options.get("unpool") == "indices")


# ---------------------------------------------------------------- context units
@pytest.mark.parametrize("arch", ["fcn8s", "deeplabv3"])
@pytest.mark.parametrize("context", ["glore", "gcu"])
def test_context_units_export_at_every_size(arch, context):
    torch.manual_seed(0)
    model = randomize(create(arch, NUM_CLASSES, context=context))
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():  # the unit changes the logits, so the parity below covers it
        with_unit = model(x)
        unit, model.decoder.context = model.decoder.context, nn.Identity()
        without = model(x)
        model.decoder.context = unit
    assert (with_unit - without).abs().max() > 1e-2
    graph = export_onnx(Deployable(model), x)
    assert [d.dim_param or d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim] == ["N", 3, "H", "W"]
    assert "MatMul" in op_types(graph) and op_types(graph) <= TENSORRT_OPS
    # GloRe's node features sum over all H*W pixels (unnormalised, as in the authors' code), so random weights give
    # logits in the hundreds at some sizes: fp32 rounding there is 1e-6 of the logits, and the bound is relative
    sess = ort.InferenceSession(graph.SerializeToString(), providers=ORT_CPU)
    for h, w in [(65, 97), (40, 130), (96, 128)]:
        x = torch.randn(1, 3, h, w)
        with torch.no_grad():
            ref = model(x).numpy()
        got = sess.run(None, {"images": x.numpy()})[0]
        scale = max(1.0, float(np.abs(ref).max()))
        assert got.shape == ref.shape == (1, NUM_CLASSES, h, w)
        assert np.abs(got - ref).max() <= 1e-4 * scale, f"at {h}x{w}: max |onnx - torch| = {np.abs(got - ref).max():.2e} (logits up to {scale:.1f})"
