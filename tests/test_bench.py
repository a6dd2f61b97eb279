"""`edgeseg bench`: grid parsing, the Pareto front, failing rows, and a small real run writing every report."""
from __future__ import annotations

import csv
import json
import time

import cv2
import numpy as np
import pytest

from edgeseg.benchmark.bench import parse_request
from edgeseg.benchmark.grid import Grid, Settings
from edgeseg.benchmark.machine import best_peaks, peak_for
from edgeseg.benchmark.report import pareto_front
from edgeseg.benchmark.timing import cpu_seconds, measure, others_share
from edgeseg.cli import main
from edgeseg.errors import EdgesegError
from edgeseg.sizes import parse_hw


def test_pareto_front_against_brute_force():
    pts = [(10, 0.5), (20, 0.7), (15, 0.4), (30, 0.7), (5, 0.1), (25, 0.8), (20, 0.7), (12, 0.6)]
    front = pareto_front(pts)
    assert [pts[i] for i in front] == [(5, 0.1), (10, 0.5), (12, 0.6), (20, 0.7), (20, 0.7), (25, 0.8)]
    rng = np.random.default_rng(0)
    for _ in range(20):
        pts = [tuple(v) for v in rng.integers(0, 6, (12, 2)).tolist()]
        want = {i for i, (lat, acc) in enumerate(pts)
                if not any(l2 <= lat and a2 >= acc and (l2, a2) != (lat, acc) for l2, a2 in pts)}
        assert set(pareto_front(pts)) == want
    assert pareto_front([]) == []


def test_parse_request_and_bad_input():
    req = parse_request("unet", None, "torch,ort", "fp32,int8", "360x480, 64X96", "1,2")
    assert req["archs"] == ["unet"] and req["sizes"] == [(360, 480), (64, 96)] and req["batches"] == [1, 2]
    everything = parse_request("all", None, "ort", "fp32", "64x64", "1")["archs"]
    assert parse_request(None, None, "ort", "fp32", "64x64", "1")["archs"] == everything and "unet" in everything
    for bad, match in (({"arch": "resnet9000"}, "resnet9000"), ({"size": "360by480"}, "360by480"), ({"size": "0x10"}, "0x10"),
                       ({"backend": "onnx"}, "onnx"), ({"precision": "int4"}, "int4"), ({"batch": "0"}, "batch")):
        args = {"arch": "unet", "model": None, "backend": "ort", "precision": "fp32", "size": "64x64", "batch": "1", **bad}
        with pytest.raises(EdgesegError, match=match):
            parse_request(**args)
    with pytest.raises(EdgesegError):
        parse_hw("360x")


@pytest.mark.parametrize("argv, named", [(["--arch", "nosuch"], "nosuch"), (["--size", "big"], "big"),
                                          (["--model", "missing.pt"], "missing.pt"), (["--baseline", "nosuch.json"], "nosuch.json")])
def test_cli_bad_input_is_one_line(argv, named, tmp_path, capsys):
    assert main(["bench", *argv, "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert named in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_measure_honours_min_runs_and_min_time():
    calls = []
    stats = measure(lambda: calls.append(time.sleep(0.001)), min_time=0.05, min_runs=5, warmup=3)
    assert stats["runs"] >= 5 and stats["measured_s"] >= 0.05 and len(calls) == stats["runs"] + 3
    assert 0 < stats["min"] <= stats["median"] <= stats["p90"] <= stats["p99"]


def test_others_share_of_the_cpu():
    import os

    cores = os.cpu_count()
    before, after = {"own": 1.0, "machine": 100.0}, {"own": 3.0, "machine": 102.0 + cores}  # others: cores s in 2 s
    assert others_share(before, after, 2.0) == pytest.approx(0.5)
    assert others_share(before, {"own": 3.0, "machine": 101.0}, 2.0) == 0.0 and others_share({"own": 0}, after, 2.0) is None
    now = cpu_seconds()
    assert now["own"] > 0 and now.get("machine", 1) > 0


def test_peak_for_picks_the_roof_of_the_precision():
    peaks = {"cpu": {"fp32": 100.0, "int8": 400.0}, "cuda": {"fp32": 50e3, "fp16": 400e3, "int8": 800e3}}
    assert peak_for(peaks, "cpu", "fp16") == 100.0 and peak_for(peaks, "cpu", "int8") == 400.0
    assert peak_for(peaks, "cuda", "fp16") == 400e3 and peak_for({"cpu": {"fp32": 1.0}}, "cpu", "int8") is None
    busy, idle = {"cpu": {"fp32": 60.0, "int8": 500.0}}, {"cpu": {"fp32": 180.0, "int8": 300.0}}
    assert best_peaks(busy, idle) == {"cpu": {"fp32": 180.0, "int8": 500.0}}


def test_measured_peaks_include_onnx_runtime_int8():
    """The int8 roof is the faster of torch's int8 GEMM and ONNX Runtime's MatMulInteger (what int8 graphs run);
    operand sizes grow only until a product takes 0.1 s, so a reference-loop kernel costs seconds."""
    from edgeseg.benchmark.machine import measure_peaks

    t = time.perf_counter()
    peaks = measure_peaks(1, max_n=512, reps=1)["cpu"]
    assert peaks["fp32"] > 0 and peaks["int8"] > 0 and time.perf_counter() - t < 60


def test_a_failing_row_is_reported_and_the_grid_goes_on(tmp_path):
    """A row below the model's minimum size (possible from Python; the CLI refuses such sizes) is an error row; the
    other size still runs and the table marks the error."""
    from edgeseg.benchmark.bench import benchmark

    request = {**parse_request("unet", None, "torch", "fp32", "64x96", "1"), "sizes": [(16, 16), (64, 96)]}
    doc = benchmark(request, Settings(min_time=0, min_runs=1, warmup=0, threads=1, cache=tmp_path / "cache"),
                    tmp_path / "out", progress=False)
    status = {r["size"]: (r["status"], r.get("error", "")) for r in doc["rows"]}
    assert status["16x16"][0] == "error" and "smaller than 32" in status["16x16"][1]
    assert status["64x96"][0] == "ok" and "**error**" in (tmp_path / "out" / "bench.md").read_text()


def test_random_weight_int8_rows_measure_latency_whatever_their_agreement(tmp_path):
    """Random logits are nearly tied, so int8 flips most of a random Segmenter's labels: its row still measures
    latency (the agreement is shown), where a trained model's int8 stays held to the gates."""
    from edgeseg.benchmark.bench import benchmark

    doc = benchmark(parse_request("segmenter", None, "ort-cpu", "int8", "64x96", "1"),
                    Settings(min_time=0, min_runs=1, warmup=0, threads=1, cache=tmp_path / "cache"), tmp_path / "out",
                    progress=False)
    (row,) = doc["rows"]
    assert row["status"] == "ok" and row["latency_median_ms"] > 0 and row["agreement"] < 0.95, row
    (report,) = (tmp_path / "cache" / "onnx").rglob("int8-*/report.json")
    checks = json.loads(report.read_text())["validation"]
    assert checks["int8"]["argmax_agreement"] < 0.95 and "argmax agreement >= 0.00%" in checks["int8"]["limit"]
    assert "argmax agreement >= 99.00%" in checks["fp32"]["limit"]  # its difference limit stands


def test_an_exported_onnx_file_is_benchmarked_as_it_is(tiny_camvid, tmp_path):
    """`--model X.onnx` (what `edgeseg export` wrote, from any source): rows at its own precision on ONNX runtimes,
    parameters and FLOPs from the file, mIoU with --data; PyTorch and other precisions skipped with the reason."""
    import torch

    from edgeseg.benchmark.flops import count_params
    from edgeseg.data import SegFolder
    from edgeseg.export import export_model
    from edgeseg.models import checkpoint, create

    torch.manual_seed(0)
    ckpt = tmp_path / "mine.pt"
    checkpoint.save(checkpoint.model_record(create("unet", 11, width=8), SegFolder(tiny_camvid, "val").classes), ckpt)
    rep = export_model(ckpt, tmp_path / "exported", ("fp32",), data=str(tiny_camvid), sizes=((64, 96),), guard=False,
                       validate_images=1, progress=False)
    onnx_path = rep["outputs"]["fp32"]["path"]
    out = tmp_path / "out"
    assert main(["bench", "--model", onnx_path, "--backend", "torch,ort", "--precision", "fp32,int8", "--size", "64x96",
                 "--data", str(tiny_camvid), "--eval-limit", "2", "--threads", "1", "--min-time", "0", "--min-runs", "2",
                 "--warmup", "0", "--cache", str(tmp_path / "cache"), "--out", str(out)]) == 0
    doc = json.loads((out / "bench.json").read_text())
    (row,) = doc["rows"]
    assert row["status"] == "ok" and row["model"] == "mine.fp32" and row["weights"] == "onnx" and row["backend"] == "ort"
    assert row["params_m"] == pytest.approx(count_params(onnx_path) / 1e6) and row["gflop"] > 0
    assert 0 <= row["miou"] <= 1 and row["eval_images"] == 2
    reasons = {(s["backend"], s["precision"]): s["reason"] for s in doc["skipped"]}
    assert "no PyTorch module" in reasons[("torch", "fp32")] and "holds the fp32 graph" in reasons[("ort", "int8")]
    assert not (tmp_path / "cache" / "onnx").exists()  # measured as it is: nothing exported again


def test_worker_failure_is_the_rows_error(tmp_path):
    """A runtime that raises in the row's process gives an error result; the grid's process carries on."""
    bogus = tmp_path / "bogus.onnx"
    bogus.write_text("not an onnx graph")
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 3, 8, 8), np.float32))
    grid = Grid([], [], [], [], [], Settings(cache=tmp_path, row_timeout=300), {}, None)
    spec = {"backend": "ort", "precision": "fp32", "files": {"onnx": str(bogus)}, "input": str(x), "reference": None,
            "batch": 1, "threads": 1, "min_time": 0, "min_runs": 1, "warmup": 0, "eval": None}
    result = grid.measure(spec, tmp_path)
    assert result["status"] == "error" and "bogus.onnx" in result["error"]


def test_bench_end_to_end(tiny_camvid, tmp_path, capsys):
    """Random-weight unet (untrained) and a checkpoint (mIoU measured) on torch and ort: the table, CSV, JSON,
    machine info and plot."""
    import torch

    from edgeseg.data import SegFolder
    from edgeseg.models import checkpoint, create

    torch.manual_seed(1)
    ckpt = tmp_path / "mine.pt"
    checkpoint.save(checkpoint.model_record(create("unet", 11, width=8), SegFolder(tiny_camvid, "val").classes), ckpt)
    out = tmp_path / "out"
    rc = main(["bench", "--arch", "unet", "--model", str(ckpt), "--backend", "torch,ort", "--precision", "fp32",
               "--size", "64x96", "--data", str(tiny_camvid), "--eval-limit", "2", "--threads", "1",
               "--min-time", "0", "--min-runs", "3", "--warmup", "1", "--cache", str(tmp_path / "cache"), "--out", str(out)])
    assert rc == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "bench: row 4/4 " in captured.err and "\r" not in captured.err  # a line per row in a log, no bar
    doc = json.loads((out / "bench.json").read_text())
    rows = doc["rows"]
    assert len(rows) == 2 * 2
    for r in rows:
        assert r["status"] == "ok", r
        for k in ("latency_median_ms", "latency_p90_ms", "latency_p99_ms", "fps", "rss_peak_mb", "params_m", "gflop",
                  "gflops_per_s", "peak_fraction"):
            assert r[k] > 0, (k, r)
        assert r["latency_median_ms"] <= r["latency_p90_ms"] <= r["latency_p99_ms"] and r["runs"] >= 3
        assert r["agreement"] > 0.99  # every runtime computes what PyTorch fp32 computes
        assert 0 <= r["others_cpu"] <= 1
        if r["model"] == "mine":
            assert 0 <= r["miou"] <= 1 and r["eval_images"] == 2
        else:
            assert r["weights"] == "random" and r.get("miou") is None
    ok = {(r["model"], r["backend"]): r for r in rows if r["status"] == "ok"}
    assert ok[("mine", "torch")]["miou"] == pytest.approx(ok[("mine", "ort")]["miou"], abs=0.02)
    assert ok[("unet", "torch")]["gflop"] == ok[("unet", "ort")]["gflop"]
    assert doc["machine"]["cpu"]["logical_cores"] >= 1 and doc["peaks_gflops"]["cpu"]["fp32"] > 0
    assert doc["machine"]["libraries"]["onnxruntime"] and doc["machine"]["libraries"]["numpy"]
    table = (out / "bench.md").read_text()
    assert "| Model |" in table and "untrained" in table and table in printed
    with open(out / "bench.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    assert json.loads((out / "machine.json").read_text())["machine"]["cpu"]
    img = cv2.imread(str(out / "bench.png"))
    assert img is not None and img.shape[0] > 100 and img.std() > 0

    # the same grid again, against the first run: every measured row gets its ratio, the header a summary
    again = main(["bench", "--model", str(ckpt), "--backend", "torch,ort", "--precision", "fp32", "--size", "64x96",
                  "--threads", "1", "--min-time", "0", "--min-runs", "3", "--warmup", "1", "--cache", str(tmp_path / "cache"),
                  "--baseline", str(out / "bench.json"), "--out", str(tmp_path / "again")])
    assert again == 0
    doc2 = json.loads((tmp_path / "again" / "bench.json").read_text())
    first = {(r["backend"]): r["latency_median_ms"] for r in rows if r["model"] == "mine" and r["status"] == "ok"}
    for r in doc2["rows"]:
        assert r["vs_baseline"] == pytest.approx(r["latency_median_ms"] / first[r["backend"]])
    s = doc2["baseline"]
    assert s["rows"] == 2 and 0 <= s["within"] <= 2 and s["geomean"] > 0 and s["peak_ratio"]["fp32"] > 0
    assert "vs base" in (tmp_path / "again" / "bench.md").read_text() and "Against the baseline" in capsys.readouterr().out
    (tmp_path / "foreign.json").write_text('{"rows": [{"model": 1}]}')
    assert main(["bench", "--model", str(ckpt), "--baseline", str(tmp_path / "foreign.json"), "--out", str(tmp_path / "x")]) == 2
    assert "not a bench.json" in capsys.readouterr().err and not (tmp_path / "x").exists()

    # torch only, merged into the first run's folder: its torch rows are replaced, the others carried with their date
    assert main(["bench", "--model", str(ckpt), "--backend", "torch", "--precision", "fp32", "--size", "64x96",
                 "--threads", "1", "--min-time", "0", "--min-runs", "3", "--warmup", "1", "--cache", str(tmp_path / "cache"),
                 "--merge", str(out / "bench.json"), "--out", str(out)]) == 0
    doc3 = json.loads((out / "bench.json").read_text())
    carried = [r for r in doc3["rows"] if r.get("run_date")]
    assert len(doc3["rows"]) == 4 and {(r["model"], r["backend"]) for r in carried} == {("unet", "torch"), ("unet", "ort"),
                                                                                        ("mine", "ort")}
    assert all(r["run_date"] == doc["date"] for r in carried)
    new = next(r for r in doc3["rows"] if not r.get("run_date"))
    assert (new["model"], new["backend"]) == ("mine", "torch") and new.get("miou") is None  # no --data this time
    table = (out / "bench.md").read_text()
    assert table.count(f"run of {doc['date'][:10]}") == 3 and "3 rows carried from" in table
    with open(out / "bench.csv") as f:
        assert sum(bool(r["run_date"]) for r in csv.DictReader(f)) == 3
    capsys.readouterr()
    assert main(["bench", "--model", str(ckpt), "--merge", str(tmp_path / "foreign.json"), "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert "--merge" in err and "not a bench.json" in err and not (tmp_path / "y").exists()


def test_flow_warp_models_run_the_flowwarp_op_on_onnx_runtime(tiny_camvid, tmp_path):
    """Where the CPU op is built, ONNX Runtime rows of a flow-warp model run the edgeseg::FlowWarp graph (what a
    user of this CPU deploys) and still compute what PyTorch computes; the other backends keep GridSample."""
    import torch

    from edgeseg.data import SegFolder
    from edgeseg.kernels import find_library
    from edgeseg.models import checkpoint, create

    if find_library("ort") is None:
        pytest.skip("the FlowWarp ONNX Runtime op is not built (`edgeseg kernels build`)")
    torch.manual_seed(0)
    ckpt = tmp_path / "warps.pt"
    model = create("sfnet", 11, fpn_dim=16, aux=False)
    checkpoint.save(checkpoint.model_record(model, SegFolder(tiny_camvid, "val").classes), ckpt)
    out = tmp_path / "out"
    assert main(["bench", "--model", str(ckpt), "--backend", "ort,opencv", "--precision", "fp32", "--size", "64x96",
                 "--threads", "1", "--min-time", "0", "--min-runs", "3", "--warmup", "1", "--cache",
                 str(tmp_path / "cache"), "--out", str(out)]) == 0
    rows = {r["backend"]: r for r in json.loads((out / "bench.json").read_text())["rows"]}
    assert rows["ort"]["status"] == "ok" and rows["ort"]["agreement"] > 0.99
    assert rows["ort"]["graph"] == "edgeseg::FlowWarp" and "edgeseg::FlowWarp graph" in rows["ort"]["note"]
    assert "graph" not in rows["opencv"] and "FlowWarp" not in rows["opencv"].get("note", "")
