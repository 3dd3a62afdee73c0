"""How far a model's mirror views confirm its unflipped view, per image, on images of the kinds
it learnt and on kinds it never saw.

    .venv/bin/python benchmarks/bench_view_agreement.py [--data ../shared/data] [--weights W]

For each image, ``Segmenter(flips=4).segment`` and its ``last_agreement``
(:class:`napari_iaunet.inference.flips.ViewAgreement`): the unflipped view's queries with class
probability ≥ 0.5, how many of them end in a cell the four views together are sure of, and
whether ``segment`` warns (fewer than a quarter confirmed); and, against each image's ground
truth, the edits (:func:`napari_iaunet.evaluation.edits.count_edits`: deletes, adds, redraws)
that four views and one view leave, which says whether one view would serve a warned image
better. Images: the Revvity-25 pair, the ISBI 2014 and Usiigaci validation images of the
default's recipe, the synthetic sample and three more seeds, and the first DSB 2018 images
(fluorescent nuclei). Writes ``docs/benchmarks/view_agreement.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C
from napari_iaunet.evaluation.edits import count_edits
from napari_iaunet.inference import Segmenter
from napari_iaunet.io.coco import coco_to_instances, read_coco
from napari_iaunet.io.images import read_image
from napari_iaunet.training.synthetic import generate_one, sample_data

REAL = {
    "revvity25": ["R01C03F14.png", "R01C02F13.png"],
    "isbi2014": [f"isbi_{k}.tif" for k in range(25, 31)],
    "usiigaci": ["set_09.tif", "set_10.tif", *[f"set_{k}.tif" for k in range(27, 31)]],
}


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it."""
    try:
        return str(Path(path).resolve().relative_to(C.REPO))
    except ValueError:
        return str(path)


def _real(path: Path, truth: Any) -> tuple[np.ndarray, Any]:
    return read_image(path), truth


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=C.REPO.parent / "shared" / "data")
    p.add_argument("--weights", type=Path, default=None, help="checkpoint (default: bundled)")
    p.add_argument("--dsb-images", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=C.RESULTS_DIR)
    args = p.parse_args()
    C.set_cpu_threads(args.threads)
    seg = Segmenter.from_checkpoint(args.weights, device="cpu", flips=4)

    images: list[tuple[str, str, Any]] = []  # (kind, name, load() -> (image, truth))
    for folder in (*REAL, "dsb2018"):
        ann = args.data / folder / "annotations.json"
        if not ann.is_file():
            continue
        pairs = coco_to_instances(read_coco(ann))  # (image entry, truth), in the file's order
        wanted = REAL.get(folder) or [e["file_name"] for e, *_ in pairs[:args.dsb_images]]
        truth = {e["file_name"]: t for e, t, *_ in pairs}
        images += [(folder, n, partial(_real, args.data / folder / "images" / n, truth[n]))
                   for n in wanted if (args.data / folder / "images" / n).is_file()]
    images.append(("synthetic", "sample (512 px)", partial(sample_data, 512)))
    images += [("synthetic", f"seed {k} (512 px)",
                partial(generate_one, np.random.default_rng(k), 512)) for k in range(3)]

    rows = []
    for kind, name, load in images:
        image, truth = load()
        seg.flips = 4
        found = seg.segment(image)
        a = seg.last_agreement
        seg.flips = 1
        one = seg.segment(image)
        rows.append({"kind": kind, "image": name[:24], "sure": a.confident,
                     "confirmed": a.confirmed,
                     "fraction": None if a.fraction is None else round(a.fraction, 3),
                     "warns": a.is_low(), "cells": len(found), "truth": len(truth),
                     "edits4": count_edits(truth, found).total,
                     "edits1": count_edits(truth, one).total})
        print(rows[-1], flush=True)
    table = C.md_table(rows, [("kind", "images"), ("image", "image"),
                              ("sure", "sure in the unflipped view"),
                              ("confirmed", "confirmed by the four views"),
                              ("fraction", "fraction"), ("warns", "segment warns"),
                              ("cells", "cells at score ≥ 0.5"), ("truth", "true cells"),
                              ("edits4", "edits, four views"), ("edits1", "edits, one view")])
    md = (f"# Mirror-view agreement per image\n\nCommand: `{C.command_line()}`  \n"
          f"Model: {_shown(seg.checkpoint_info.path)}; "
          f"CPU, {args.threads} threads.\n\n{table}\n")
    C.write_results("view_agreement", {"command": C.command_line(), "rows": rows,
                                       "machine": C.machine_info()}, md, args.out)


if __name__ == "__main__":
    main()
