"""`edgeseg` command line. Each subcommand lives in `edgeseg/cli/<name>.py` with HELP, add_arguments(p), run(args).

Subcommand modules import heavy libraries (torch, tensorrt) inside run(), so `edgeseg run --help` and
the runtime never pull in torch.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from edgeseg import __version__
from edgeseg.errors import EdgesegError

COMMANDS = ["zoo", "train", "eval", "export", "build", "run", "bench", "demo", "kernels", "inspect", "compare"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" where it tells the reader something: not to on/off flags (their name says it), not
    to options without a default, and not where the help text already names its default."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (action.nargs == 0 or default is None or default is argparse.SUPPRESS or default in ("", [])
                or "default" in text or "unset" in text):
            return text
        return super()._get_help_string(action)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `command`, only that subcommand's options are built (some, like export's, import the export
    stage to derive them: `edgeseg run` and `edgeseg --help` must not pull it in)."""
    parser = argparse.ArgumentParser(prog="edgeseg", description="Train, export, run and benchmark semantic segmentation on edge GPUs.")
    parser.add_argument("--version", action="version", version=f"edgeseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        mod = importlib.import_module(f"edgeseg.cli.{name}")
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP, formatter_class=HelpFormatter)
        if command in (None, name):
            mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    args = build_parser(next((w for w in words if w in COMMANDS), "")).parse_args(argv)
    try:
        return args._run(args) or 0
    except EdgesegError as e:
        print(f"edgeseg {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"edgeseg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
