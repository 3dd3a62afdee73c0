"""Click a missed cell: how often the model's own candidates under the click recover it.

    .venv/bin/python benchmarks/bench_click_candidates.py --data ../shared/data/revvity25 \\
        [--weights weights/iaunet_default.pt] [--max-images N] [--out docs/benchmarks]

Each image is segmented once with the default settings, keeping every query
(``Segmenter.segment(image, candidates=True)``). A *missed cell* is a ground-truth cell that no
detection overlaps with mask IoU ≥ 0.5. Its click is its most interior pixel (maximum of the
distance transform of its mask); :func:`candidates_at` ranks the candidates containing the click,
with the detections as the accepted cells. Per ranking:

* ``recovered_first``: fraction of missed cells whose first candidate has IoU ≥ 0.5 with it;
* ``recovered_3``: … that one of the first three candidates (two Tab presses) has;
* ``mean_iou_first``: mean IoU of the first candidate (0 where there is none);
* ``no_candidate``: fraction of clicks where no candidate contains the point (draw instead);
* ``ms_per_click``: wall time of one :func:`candidates_at` call on the CPU (median).

``box_*`` does the same with the cell's bounding box as a box drag (no point). Writes
``<out>/click_candidates_<data folder name>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C
from napari_iaunet.evaluation.edits import interior_point
from napari_iaunet.evaluation.metrics import pairwise_iou
from napari_iaunet.inference import Segmenter
from napari_iaunet.inference.candidates import (
    DEFAULT_RANKING,
    RANKINGS,
    candidates_at,
)
from napari_iaunet.io.coco import coco_to_instances, read_coco
from napari_iaunet.io.images import read_image
from napari_iaunet.layers import split_into_layers

DEFAULT_WEIGHTS = C.REPO / "weights" / "iaunet_default.pt"


def summarise(ious: list[list[float]], times: list[float]) -> dict[str, Any]:
    """Recovery figures of one ranking from the IoUs of each click's first three candidates."""
    n = len(ious)
    first = [row[0] if row else 0.0 for row in ious]
    return {
        "clicks": n,
        "recovered_first": round(sum(v >= 0.5 for v in first) / n, 4) if n else None,
        "recovered_3": round(sum(any(v >= 0.5 for v in row[:3]) for row in ious) / n, 4)
        if n else None,
        "mean_iou_first": round(float(np.mean(first)), 4) if n else None,
        "no_candidate": round(sum(not row for row in ious) / n, 4) if n else None,
        "ms_per_click": round(statistics.median(times) * 1e3, 2) if times else None,
        "ms_per_click_mean": round(float(np.mean(times)) * 1e3, 2) if times else None,
        "ms_per_click_max": round(max(times) * 1e3, 2) if times else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, type=Path, help="COCO folder: annotations.json + "
                   "images/")
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--out", type=Path, default=C.RESULTS_DIR)
    C.add_image_choice(p)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--name", default=None, help="result name (default: click_candidates_<data>)")
    args = p.parse_args()
    C.set_cpu_threads(args.threads)
    coco = read_coco(args.data / "annotations.json")
    entries = C.chosen_images(coco_to_instances(coco), args)
    seg = Segmenter.from_checkpoint(args.weights, device="cpu")
    per_ranking: dict[str, list[list[float]]] = {r: [] for r in RANKINGS}
    times: dict[str, list[float]] = {r: [] for r in RANKINGS}
    box_ious: list[list[float]] = []
    box_times: list[float] = []
    images, gt_total, missed_total, memory, seg_s = [], 0, 0, [], []
    for entry, gt, *_ in entries:
        image = read_image(args.data / "images" / entry["file_name"])
        t0 = time.perf_counter()
        found, cands = seg.segment(image, candidates=True)
        seg_s.append(time.perf_counter() - t0)
        memory.append(cands.nbytes)
        # what keeping every query as a boolean crop at image resolution would cost instead
        crops_bytes = sum(crop.size for src in cands.sources
                          for _, crop, _ in src.masks(range(len(src))))
        best = (pairwise_iou(gt, found).max(axis=1) if len(found)
                else np.zeros(len(gt)))
        missed = np.flatnonzero(best < 0.5)
        accepted = split_into_layers(found)
        gt_total += len(gt)
        missed_total += len(missed)
        images.append({"file": entry["file_name"], "shape": list(gt.image_shape),
                       "cells": len(gt), "detections": len(found), "missed": len(missed),
                       "candidates": len(cands), "candidate_mb": round(cands.nbytes / 2**20, 2),
                       "as_full_res_crops_mb": round(crops_bytes / 2**20, 2),
                       "segment_s": round(seg_s[-1], 2)})
        print(f"{entry['file_name']}: {len(gt)} cells, {len(found)} detections, "
              f"{len(missed)} missed", flush=True)
        for i in missed.tolist():
            box, crop = gt.boxes[i], gt.crops[i]
            r, c = interior_point(crop)
            point = (box[0] + r, box[1] + c)
            for ranking in RANKINGS:
                t0 = time.perf_counter()
                picks = candidates_at(cands, point, accepted=accepted, ranking=ranking, limit=3)
                times[ranking].append(time.perf_counter() - t0)
                per_ranking[ranking].append([k.iou_with(box, crop) for k in picks])
            t0 = time.perf_counter()
            picks = candidates_at(cands, box=tuple(box), accepted=accepted, limit=3)
            box_times.append(time.perf_counter() - t0)
            box_ious.append([k.iou_with(box, crop) for k in picks])
    rankings = {r: summarise(per_ranking[r], times[r]) for r in RANKINGS}
    headline = rankings[DEFAULT_RANKING]
    payload = {
        "command": C.command_line(),
        "machine": C.machine_info(),
        "data": str(args.data),
        "weights": str(args.weights),
        "images": len(images),
        "gt_cells": gt_total,
        "missed_cells": missed_total,
        "ranking": DEFAULT_RANKING,
        **{k: headline[k] for k in ("recovered_first", "recovered_3", "mean_iou_first",
                                    "no_candidate", "ms_per_click")},
        "rankings": rankings,
        "box_drag": summarise(box_ious, box_times),
        "candidate_memory_mb_median": round(statistics.median(memory) / 2**20, 2)
        if memory else None,
        "as_full_res_crops_mb_median": round(statistics.median(
            [im["as_full_res_crops_mb"] for im in images]), 2) if images else None,
        "segment_s_median": round(statistics.median(seg_s), 2) if seg_s else None,
        "per_image": images,
    }
    name = args.name or f"click_candidates_{args.data.resolve().name}"
    rows = [{"ranking": r + (" (default)" if r == DEFAULT_RANKING else ""), **rankings[r]}
            for r in RANKINGS]
    rows.append({"ranking": "box drag (cell's box, no point)", **payload["box_drag"]})
    md = "\n".join([
        f"# Click a missed cell: {args.data.resolve().name}", "",
        f"Command: `{payload['command']}`  ",
        f"Machine: {payload['machine']['host_cpu']}, {args.threads} thread(s), load "
        f"{payload['machine']['load_average']}.  ",
        f"{len(images)} image(s), {gt_total} cells, {missed_total} missed by the default "
        f"settings (no detection at IoU ≥ 0.5). Candidates kept per image: "
        f"{payload['candidate_memory_mb_median']} MB per image (median; float16 low-res "
        f"logits; the same queries as boolean crops at image resolution: "
        f"{payload['as_full_res_crops_mb_median']} MB).", "",
        C.md_table(rows, [("ranking", "ranking"), ("clicks", "clicks"),
                          ("recovered_first", "recovered, 1st"),
                          ("recovered_3", "recovered, ≤ 3rd"),
                          ("mean_iou_first", "mean IoU, 1st"),
                          ("no_candidate", "no candidate"),
                          ("ms_per_click", "ms / click (median)"),
                          ("ms_per_click_max", "ms / click (max)")]), ""])
    C.write_results(name, payload, md, out_dir=args.out)


if __name__ == "__main__":
    main()
