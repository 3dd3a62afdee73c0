"""``napari-iaunet fidelity``: our parameter and multiply-add counts next to the paper's."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DEFAULT_BACKBONES = ("resnet50", "resnet101", "swin_small", "swin_base")
DEFAULT_QUERIES = (100, 300, 1000)


def add_parser(p: argparse.ArgumentParser) -> None:
    """Options of the ``fidelity`` command."""
    p.add_argument(
        "--backbones",
        nargs="+",
        default=list(DEFAULT_BACKBONES),
        metavar="NAME",
        help=f"backbones to count (default: {' '.join(DEFAULT_BACKBONES)})",
    )
    p.add_argument(
        "--queries",
        nargs="+",
        type=int,
        default=list(DEFAULT_QUERIES),
        metavar="N",
        help="numbers of queries (default: 100 300 1000)",
    )
    p.add_argument(
        "--size",
        type=int,
        default=512,
        help="square input side in pixels, a multiple of 32 (default: 512, as in the paper)",
    )
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the rows as JSON")


def run(args: argparse.Namespace) -> int:
    """Count every (backbone, queries) pair on the meta device and print a markdown table."""
    from napari_iaunet.model.complexity import fidelity_table, format_fidelity_table
    from napari_iaunet.model.encoder import BACKBONES

    unknown = [b for b in args.backbones if b not in BACKBONES]
    if unknown:
        raise ValueError(f"unknown backbone(s) {unknown}; choose from {sorted(BACKBONES)}")
    if args.size <= 0 or args.size % 32:
        raise ValueError(f"--size must be a positive multiple of 32, got {args.size}")
    if any(q <= 0 for q in args.queries):
        raise ValueError("--queries must be positive")

    input_shape = (1, 3, args.size, args.size)
    rows = fidelity_table(args.backbones, args.queries, input_shape=input_shape)
    print(format_fidelity_table(rows, input_shape))
    print(
        "\nMACs = multiply-accumulates of one eval-mode forward pass with all 9 heads "
        "(the paper's 'GFLOPs' are fvcore multiply-add counts)."
    )
    if args.json is not None:
        payload = {"input_shape": list(input_shape), "rows": rows}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
