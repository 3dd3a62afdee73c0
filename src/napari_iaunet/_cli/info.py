"""``napari-iaunet info [WEIGHTS]``: what a checkpoint is."""

from __future__ import annotations

import argparse
import json


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("weights", nargs="?", default=None,
                   help="checkpoint file (default: the bundled default model)")
    p.add_argument("--json", action="store_true", help="print config and metadata as JSON")


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import read_checkpoint_info
    from ..weights import default_weights

    info = read_checkpoint_info(args.weights or default_weights())
    if args.json:
        print(json.dumps({"path": str(info.path), "source": info.source,
                          "config": info.config.to_dict(), "metadata": info.metadata}, indent=2))
    else:
        print(info.summary())
    return 0
