"""`edgeseg zoo`: the architectures and the shipped models."""
from __future__ import annotations

HELP = "list the zoo's architectures (with their options) and the shipped models"


def add_arguments(p) -> None:
    from edgeseg.sizes import argparse_hw

    p.add_argument("--receptive-field", metavar="ARCH", default=None,
                   help="print ARCH's theoretical receptive field and output stride per stage instead")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE", help="model option for --receptive-field")
    p.add_argument("--size", type=argparse_hw, default="256x256", metavar="HxW",
                   help="input size for --receptive-field (strides and global context do not depend on it)")


def run(args) -> int:
    import inspect

    from edgeseg.models import available, checkpoint, registry

    if args.receptive_field:
        return _receptive_field(args)
    print("architectures:")
    for arch in available():
        cls = registry.model_class(arch)
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


def _receptive_field(args) -> int:
    from edgeseg.models import create
    from edgeseg.models.receptive_field import format_report, receptive_fields
    from edgeseg.models.registry import parse_options
    from edgeseg.sizes import fit

    model = create(args.receptive_field, 11, **parse_options(args.opt))
    size = fit(args.size, model.size_divisor)
    print(format_report(args.receptive_field, receptive_fields(model, size), size))
    return 0
