"""What the default duplicate filter (mask IoU 0.5) costs on top of post-processing.

    .venv/bin/python benchmarks/bench_duplicate_filter.py [--repeats 15] [--threads 2]

Cases: 10 / 100 / 1000 DSB-like nuclei on a 1024² image (some touching or overlapping), each with
a shifted repeat of every fifth nucleus added (what a query model's duplicates look like), and,
when ``../shared/data/revvity25`` is present, the bundled model's detections (score ≥ 0.5, filter
off) on the held-out Revvity-25 image. Times :func:`remove_duplicates` alone (median of
interleaved rounds) and counts what it drops. Writes ``docs/benchmarks/duplicate_filter.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C
from _fixtures import nuclei_instances
from napari_iaunet.inference import PostprocessSettings
from napari_iaunet.inference.postprocess import remove_duplicates
from napari_iaunet.instances import Instances

REVVITY = C.REPO.parent / "shared" / "data" / "revvity25" / "images" / "R01C03F14.png"


def with_repeats(cells: Instances, every: int = 5, shift: int = 1) -> Instances:
    """``cells`` plus a copy of every ``every``-th one moved ``shift`` px right, scored lower."""
    picked = np.arange(0, len(cells), every)
    boxes = cells.boxes[picked].copy()
    boxes[:, [1, 3]] += shift
    inside = boxes[:, 3] <= cells.image_shape[1]
    copies = Instances(cells.image_shape, boxes[inside],
                       [cells.crops[i] for i in picked[inside]],
                       scores=cells.scores[picked[inside]] * 0.9)
    return Instances.concatenate([cells, copies])


def revvity_detections() -> Instances | None:
    """The bundled model's detections on the held-out Revvity-25 image, no filter applied."""
    if not REVVITY.exists():
        return None
    from napari_iaunet.inference import Segmenter
    from napari_iaunet.io.images import read_image

    seg = Segmenter.from_checkpoint(C.REPO / "weights" / "iaunet_default.pt", device="cpu",
                                    settings=PostprocessSettings(duplicate_iou=None))
    return seg.segment(read_image(REVVITY))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--name", default="duplicate_filter")
    args = p.parse_args()
    C.set_cpu_threads(args.threads)
    iou = PostprocessSettings().duplicate_iou
    cases: dict[str, Instances] = {
        f"{n} nuclei + {len(range(0, n, 5))} repeats": with_repeats(nuclei_instances(n, seed=n))
        for n in (10, 100, 1000)}
    real = revvity_detections()
    if real is not None:
        cases["bundled model, held-out Revvity-25 image (score ≥ 0.5)"] = real
    stats, run = C.interleaved({k: (lambda v=v: remove_duplicates(v, iou)) for k, v in
                                cases.items()}, repeats=args.repeats, warmup=1, verbose=False)
    rows: list[dict[str, Any]] = []
    for name, inst in cases.items():
        rows.append({"case": name, "instances": len(inst),
                     "dropped": len(inst) - len(remove_duplicates(inst, iou)),
                     "median_ms": C.fmt_ms(stats[name].median),
                     "samples_ms": [round(t * 1e3, 3) for t in stats[name].wall]})
    payload = {"command": C.command_line(), "machine": C.machine_info(), "duplicate_iou": iou,
               "threads": args.threads, "run": run, "rows": rows}
    md = "\n".join([
        "# Duplicate filter: cost of `remove_duplicates` (mask IoU "
        f"{iou}, the default)", "",
        f"Command: `{payload['command']}`  ",
        f"Machine: {payload['machine']['host_cpu']}, {args.threads} thread(s); median of "
        f"{args.repeats} interleaved rounds.", "",
        C.md_table(rows, [("case", "case"), ("instances", "instances"), ("dropped", "dropped"),
                          ("median_ms", "median ms")]), "",
        "Nuclei: `_fixtures.nuclei_instances` (1024², some touching or overlapping) plus a copy of "
        "every fifth nucleus shifted 1 px. Drops beyond the copies are fixture nuclei lying on "
        "top of another (mask IoU > 0.5: the fixture places them at random; the nuclei of DSB "
        "2018 never overlap)."])
    C.write_results(args.name, payload, md)


if __name__ == "__main__":
    main()
