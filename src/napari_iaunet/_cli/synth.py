"""``napari-iaunet synth --out DIR -n N --size S``: a synthetic brightfield data set as COCO."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", "-o", type=Path, required=True,
                   help="folder for images/ and annotations.json")
    p.add_argument("-n", "--num-images", type=int, default=100, help="number of images")
    p.add_argument("--size", type=int, default=512, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0, help="image i depends only on (seed, i)")
    p.add_argument("--scale", type=float, default=None,
                   help="image pixels per Revvity-25 pixel (default: size / 1080, i.e. a whole "
                        "1080-pixel field of view scaled to --size)")
    p.add_argument("--preset", default="revvity", choices=("revvity", "clear"),
                   help="revvity: as faint and crowded as Revvity-25 (default); clear: higher "
                        "contrast, fewer cells, less overlap")
    p.add_argument("--workers", type=int, default=1,
                   help="render in this many processes (same images for any number)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing data set")


def run(args: argparse.Namespace) -> int:
    import time

    from ..training.synthetic import SynthParams, write_synthetic_coco

    if args.num_images < 1:
        raise ValueError("-n must be at least 1")
    t0 = time.time()
    path = write_synthetic_coco(args.out, args.num_images, args.size, args.seed,
                                overwrite=args.overwrite,
                                params=SynthParams.preset(args.preset, args.scale),
                                workers=args.workers)
    print(f"wrote {args.num_images} images and {path} in {time.time() - t0:.1f} s")
    return 0
