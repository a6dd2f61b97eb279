"""`edgeseg kernels`: build the native FlowWarp kernels (CPU op, CUDA kernel, TensorRT plugin) or show what is found."""
from __future__ import annotations

import json

HELP = "build the native FlowWarp kernels (ONNX Runtime CPU op, CUDA, TensorRT plugin) or show what is built"


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    b = sub.add_parser("build", help="configure and build with CMake; says what it built and what it skipped and why")
    b.add_argument("--build-dir", help="build folder (default: $EDGESEG_CACHE/kernels, else ~/.cache/edgeseg/kernels)")
    b.add_argument("--cuda-arch", help="CUDA architectures, e.g. '87' or '75;86;87' (default: every one this nvcc supports of 53;72;75;86;87;89;90)")
    b.add_argument("--ort-include", help="folder with ONNX Runtime's onnxruntime_c_api.h (default: fetch Debian's libonnxruntime-dev headers)")
    b.add_argument("--tensorrt-root", help="TensorRT install root (default: $TENSORRT_ROOT or standard paths)")
    b.add_argument("--clean", action="store_true", help="delete the build folder first")
    i = sub.add_parser("info", help="print which kernel libraries are found and the last build's summary")
    i.add_argument("--json", action="store_true", help="print JSON")


def run(args) -> int:
    from edgeseg.kernels import cmake

    if args.action == "build":
        summary = cmake.build(args.build_dir, cuda_archs=args.cuda_arch, ort_include=args.ort_include,
                                tensorrt_root=args.tensorrt_root, clean=args.clean)
        return 0 if summary["built"] else 1
    found = cmake.info()
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    print("searched: " + ", ".join(found["search_dirs"]))
    for key, what in (("ort", "ONNX Runtime CPU op"), ("cuda", "CUDA kernel"), ("trt", "TensorRT plugin")):
        print(f"{what:20s} {found[key] or 'not built'}")
    for target, why in found["last_build"]["skipped"].items():
        print(f"last build skipped {target}: {why}")
    return 0
