"""``napari-iaunet`` command line: one sub-command per module in :mod:`napari_iaunet._cli`.

Each sub-command module defines ``add_parser(subparsers)`` and ``run(args) -> int``; modules are
imported only when their command runs, so ``napari-iaunet --help`` stays fast.

Every refusal ends the command with exit code 1 (2 for a bad option) and one ``error:`` line on
stderr; the Python traceback is shown only with ``--debug`` or ``NAPARI_IAUNET_DEBUG=1``.
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
    debug_help = "show the full Python traceback of an error (also NAPARI_IAUNET_DEBUG=1)"
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help=debug_help)
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
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help=debug_help)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``napari-iaunet`` console script."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never let timm reach for a model hub
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a bad option (2, argparse printed why)
        return exc.code if isinstance(exc.code, int) else 2
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    if args.command in BULK_COMMANDS:
        from .allocator import keep_freed_memory

        keep_freed_memory()
    debug = getattr(args, "debug", False) or os.environ.get("NAPARI_IAUNET_DEBUG", "") not in (
        "", "0")
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("napari-iaunet: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one sentence, no traceback, unless asked for
        if debug:
            raise
        print(f"napari-iaunet {args.command}: error: {error_text(exc)}", file=sys.stderr)
        return 1


# errors whose message is ours (a sentence for the user); anything else is unexpected
_EXPECTED = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
             ValueError, OSError, RuntimeError, FloatingPointError)


def error_text(exc: BaseException) -> str:
    """The one-line message of ``exc`` for the ``error:`` line."""
    if isinstance(exc, MemoryError):
        return ("out of memory; try smaller images or --tile-size, a smaller --batch-size, or "
                "a machine with more memory (--debug shows where)")
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, _EXPECTED):
        return text
    return (f"unexpected {type(exc).__name__}: {text} (this is a bug in napari-iaunet or an "
            f"input it does not check yet; run again with --debug and report the traceback)")


if __name__ == "__main__":
    sys.exit(main())
