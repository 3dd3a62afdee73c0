"""``napari-iaunet`` command line: one sub-command per module in :mod:`napari_iaunet._cli`.

Each sub-command module defines ``add_parser(subparsers)`` and ``run(args) -> int``; modules are
imported only when their command runs, so ``napari-iaunet --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# commands whose tensors come and go in bulk: glibc malloc keeps freed memory for them
BULK_COMMANDS = ("segment", "train", "evaluate")

# command name -> (module under napari_iaunet._cli, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "segment": ("segment", "segment images into overlapping instances, write COCO JSON"),
    "info": ("info", "print what a checkpoint holds"),
    "fidelity": ("fidelity", "print parameter and multiply-add counts next to the paper's"),
    "train": ("train", "train or fine-tune a model on COCO annotations"),
    "evaluate": ("evaluate", "score predictions or a checkpoint against COCO ground truth"),
    "synth": ("synth", "write a synthetic brightfield data set as COCO"),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available sub-command."""
    parser = argparse.ArgumentParser(
        prog="napari-iaunet",
        description="IAUNet cell instance segmentation: segment, train, evaluate.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        try:
            mod = importlib.import_module(f"napari_iaunet._cli.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"napari_iaunet._cli.{module}":
                raise
            continue  # command not built yet
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod.add_parser(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``napari-iaunet`` console script."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never let timm reach for a model hub
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    if args.command in BULK_COMMANDS:
        from .allocator import keep_freed_memory

        keep_freed_memory()
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("napari-iaunet: interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, RuntimeError, OSError) as exc:
        if os.environ.get("NAPARI_IAUNET_DEBUG"):
            raise
        print(f"napari-iaunet {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
