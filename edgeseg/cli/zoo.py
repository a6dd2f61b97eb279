"""`edgeseg zoo`: the architectures and the shipped models."""
from __future__ import annotations

HELP = "list the zoo's architectures (with their options) and the shipped models"


def add_arguments(p) -> None:
    pass


def run(args) -> int:
    import inspect

    from edgeseg.models import available, checkpoint, registry

    print("architectures:")
    for arch in available():
        cls = registry._REGISTRY[arch]
        opts = [f"{k}={v.default}" for k, v in inspect.signature(cls.__init__).parameters.items()
                if v.default is not inspect.Parameter.empty]
        print(f"  {arch:<14} size_divisor={cls.size_divisor:<3} {' '.join(opts)}")
    print("shipped models:")
    for name, path in checkpoint.SHIPPED.items():
        if not path.exists():
            print(f"  {name:<14} (not in this install)")
            continue
        rec = checkpoint.load_record(name)
        val = rec.get("metrics", {}).get("val", {}).get("miou")
        score = f"val mIoU {100 * val:.1f}" if val is not None else ""
        print(f"  {name:<14} {rec['arch']} {rec['hparams']} {len(rec['classes']['names'])} classes {score}  ({path})")
    return 0
