"""`edgeseg bench`: latency per architecture, runtime and precision, with the peers side by side.

bench    benchmark(request, settings, out): the whole run (CLI entry), report header
grid     the grid of rows, preparation in this process, one worker process per row, failures as rows
worker   one row in its own process: open the backend (edgeseg.runtime.backends: the same registry `run` and `eval`
         use), check its output, time it, memory, optional mIoU
sources  zoo archs with random weights, checkpoints and shipped models; reference inputs and outputs
exports  the ONNX / engine files of a row, made and cached by the export stage
flops    FLOPs and parameters from the ONNX graph
timing   latency statistics and resident memory
machine  CPU, GPU, driver and library versions; the measured peak GFLOP/s (the roofline's roof)
report   Markdown table, CSV, JSON and the speed/accuracy plot with its Pareto front
baseline comparison with an earlier run's bench.json
"""
