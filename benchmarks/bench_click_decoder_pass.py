"""Click a missed cell, step 4: does one more decoder pass guided by the click recover cells?

    .venv/bin/python benchmarks/bench_click_decoder_pass.py --data ../shared/data/revvity25 \\
        [--weights weights/iaunet_default.pt] [--max-images N] [--out docs/benchmarks]

For every missed cell (no detection at IoU ≥ 0.5; click = its most interior pixel, as in
``bench_click_candidates.py``) the model answers the click with one extra query
(:meth:`Segmenter.answer_click`): its content is the stride-4 mask feature at the click, its
position the sine embedding there; it runs through every decoder block beside the learned
queries (it attends to them, they do not see it), then the usual class and mask heads — from the
context the segmentation kept, so only the click query runs. A model trained with click queries
(``napari-iaunet train --click-queries``) learnt to answer them; one that was not is asked all
the same (its answer measures what the decoder does untaught).

Per missed cell: the IoU of the first candidate of :func:`candidates_at` without the click pass
(the segmentation's queries, default ranking), of the click pass's mask (its part holding the
click, at the segmentation's mask threshold) and of the first candidate with both (what the edit
tools offer: with the piece of a repeated cell split off first, ``--split-min-distance``).
Summary: ``recovered_candidate``, ``recovered_decoder_pass``, ``recovered_first`` (IoU ≥ 0.5;
``recovered_3``: within three), ``first_is_a_split_piece``,
``recovered_only_by_the_click_pass`` and ``ms_per_click`` (one :func:`candidates_at` call with
the click pass; CPU median). Writes
``<out>/<name>.{json,md}`` (default name ``click_decoder_pass_<data folder name>``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C
from bench_click_candidates import DEFAULT_WEIGHTS
from napari_iaunet.evaluation.edits import interior_point
from napari_iaunet.evaluation.metrics import pairwise_iou
from napari_iaunet.inference import Segmenter
from napari_iaunet.inference.candidates import (
    SPLIT_MIN_DISTANCE,
    SPLIT_OVERSIZE,
    Candidates,
    candidates_at,
)
from napari_iaunet.io.coco import coco_to_instances, read_coco
from napari_iaunet.io.images import read_image
from napari_iaunet.layers import split_into_layers


def _first_iou(picks: list, box, crop) -> float:
    """IoU of the first candidate with the cell (0 when there is none)."""
    return round(picks[0].iou_with(box, crop), 4) if picks else 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--out", type=Path, default=C.RESULTS_DIR)
    C.add_image_choice(p)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--split-min-distance", type=float, default=SPLIT_MIN_DISTANCE,
                   help="candidates_at's split_min_distance (0: never split a repeated cell)")
    p.add_argument("--split-oversize", type=float, default=SPLIT_OVERSIZE,
                   help="candidates_at's split_oversize (also split a first answer this many "
                        "times the median accepted cell's area; 0: only repeated cells)")
    p.add_argument("--name", default=None,
                   help="result name (default: click_decoder_pass_<data folder name>)")
    args = p.parse_args()
    C.set_cpu_threads(args.threads)
    seg = Segmenter.from_checkpoint(args.weights, device="cpu")
    trained = bool(getattr(seg.config, "click_queries", False))
    if not trained:  # ask an untaught decoder all the same (what it does without training)
        seg.model.config = seg.config.replace(click_queries=True)
    rows, times = [], []
    for entry, gt, *_ in C.chosen_images(
            coco_to_instances(read_coco(args.data / "annotations.json")), args):
        image = read_image(args.data / "images" / entry["file_name"])
        found, cands = seg.segment(image, candidates=True)
        best = pairwise_iou(gt, found).max(axis=1) if len(found) else np.zeros(len(gt))
        accepted = split_into_layers(found)
        for i in np.flatnonzero(best < 0.5).tolist():
            r, c = interior_point(gt.crops[i])
            click = (int(gt.boxes[i][0]) + r, int(gt.boxes[i][1]) + c)
            box, crop = gt.boxes[i], gt.crops[i]
            plain = candidates_at(cands, click, accepted=accepted, limit=1, click_pass=False)
            source = seg.answer_click(cands, click)
            answer = candidates_at(Candidates(gt.image_shape, [source]), click, limit=1,
                                   thresholds=None)
            t0 = time.perf_counter()
            offered = candidates_at(cands, click, accepted=accepted, limit=3,
                                    split_min_distance=args.split_min_distance or None,
                                    split_oversize=args.split_oversize or None)
            times.append(time.perf_counter() - t0)
            rows.append({"file": entry["file_name"], "cell": i,
                         "candidate": _first_iou(plain, box, crop),
                         "decoder_pass": _first_iou(answer, box, crop),
                         "first": _first_iou(offered, box, crop),
                         "best_of_3": max([_first_iou([c], box, crop) for c in offered],
                                          default=0.0),
                         "first_source": offered[0].source if offered else None,
                         "decoder_pass_class": round(float(source.class_probs[0]), 4)})
    n = len(rows)

    def rate(hit) -> float | None:
        return round(sum(bool(hit(r)) for r in rows) / n, 4) if n else None

    summary = {
        "missed_cells": n,
        "recovered_candidate": rate(lambda r: r["candidate"] >= 0.5),
        "recovered_decoder_pass": rate(lambda r: r["decoder_pass"] >= 0.5),
        "recovered_first": rate(lambda r: r["first"] >= 0.5),
        "recovered_3": rate(lambda r: r["best_of_3"] >= 0.5),
        "first_is_a_split_piece": rate(lambda r: r["first_source"] == -2),
        "recovered_only_by_the_click_pass": rate(
            lambda r: r["candidate"] < 0.5 <= r["decoder_pass"]),
        "mean_iou_decoder_pass": round(float(np.mean([r["decoder_pass"] for r in rows])), 4)
        if n else None,
        "ms_per_click": round(statistics.median(times) * 1e3, 1) if times else None,
        "ms_per_click_max": round(max(times) * 1e3, 1) if times else None,
    }
    payload = {"command": C.command_line(), "machine": C.machine_info(),
               "data": str(args.data), "weights": str(args.weights),
               "click_trained": trained, "split_min_distance": args.split_min_distance,
               "split_oversize": args.split_oversize,
               **summary, "clicks": rows}
    name = args.name or f"click_decoder_pass_{args.data.resolve().name}"
    md = "\n".join([f"# Click-guided decoder pass: {args.data.resolve().name}", "",
                    f"Command: `{payload['command']}`  ",
                    f"Model trained with click queries: {'yes' if trained else 'no'}.", "",
                    C.md_table([summary], [(k, k) for k in summary])])
    C.write_results(name, payload, md, out_dir=args.out)


if __name__ == "__main__":
    main()
