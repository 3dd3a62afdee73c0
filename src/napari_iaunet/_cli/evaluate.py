"""``napari-iaunet evaluate``: score predictions (or a checkpoint) against COCO ground truth."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .options import open_fraction, positive_int, score_fraction
from .segment import (
    add_duplicate_arguments,
    add_flips_argument,
    flips_option,
    postprocess_settings,
)


def add_parser(p: argparse.ArgumentParser) -> None:
    """Arguments of the ``evaluate`` sub-command."""
    p.add_argument("--gt", required=True, type=Path, help="ground-truth COCO JSON")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--pred", type=Path,
                     help="predictions: a COCO results list or a COCO file with scores")
    src.add_argument("--weights", type=Path,
                     help="segment the ground-truth images with this checkpoint, then evaluate")
    p.add_argument("--images", type=Path, default=None,
                   help="folder of the ground-truth images (with --weights; default: the "
                        "'images' folder beside --gt, else the folder of --gt)")
    p.add_argument("--device", default="auto",
                   help="with --weights: auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--match-brightness", action=argparse.BooleanOptionalAction, default=None,
                   help="with --weights: brightness matching on or off (default: the model's)")
    p.add_argument("--json", type=Path, default=None, help="also write all results as JSON here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument("--iou-threshold", type=open_fraction, default=0.5,
                   help="IoU for precision / recall / F1 / mean IoU (default 0.5)")
    p.add_argument("--score-threshold", type=score_fraction, default=None,
                   help="drop predictions below this score before the matching metrics, PQ and "
                        "AJI (AP always uses all); with --weights the default is the segment "
                        "command's: the checkpoint's recommendation, else 0.5")
    p.add_argument("--max-dets", type=positive_int, nargs="+", default=[100, 300, 1000],
                   help="COCO maxDets; AP is read at the largest (default 100 300 1000)")
    p.add_argument("--per-image", action="store_true", help="add per-image metrics to the JSON")
    add_duplicate_arguments(p)  # with --weights: the segment command's duplicate handling
    add_flips_argument(p)  # and its views


def _images_folder(args: argparse.Namespace) -> Path:
    if args.images is not None:
        if not args.images.is_dir():
            raise FileNotFoundError(f"image folder not found: {args.images}")
        return args.images
    beside = args.gt.parent / "images"
    return beside if beside.is_dir() else args.gt.parent


# --------------------------------------------------------------------------------------------
# HOOK: --weights W [--images DIR] — segment every ground-truth image, then evaluate.
# Contract (owned by napari_iaunet.inference): Segmenter.from_checkpoint(path).segment(image)
# returns Instances of that image. The import is deferred so evaluate works without torch.
# --------------------------------------------------------------------------------------------
def _segment_ground_truth_images(args: argparse.Namespace, gt: dict
                                 ) -> tuple[dict, float | None, int]:
    """Predictions (a COCO dict with scores) made by the checkpoint on every ground-truth image,
    the score threshold the checkpoint recommends (None: it recommends none) and the views each
    image was segmented in."""
    try:
        from ..inference import Segmenter
    except ImportError as exc:
        raise RuntimeError(
            "evaluating a checkpoint (--weights) needs napari_iaunet.inference, which could not "
            f"be imported ({exc}); segment the images first and pass --pred instead"
        ) from exc
    from ..checkpoint import recommended_score_threshold
    from ..io.coco import category_names, instances_to_coco
    from ..io.images import read_image

    folder = _images_folder(args)
    # AP ranks every detection, so keep them all as the reference evaluator does (score > 0.01);
    # the matching metrics apply --score-threshold afterwards.
    segmenter = Segmenter.from_checkpoint(args.weights, device=args.device,
                                          settings=postprocess_settings(args, 0.01),
                                          match_brightness=args.match_brightness,
                                          **flips_option(args))
    info = getattr(segmenter, "checkpoint_info", None)
    recommended = recommended_score_threshold(info.metadata if info else None)
    predictions = []
    for k, image_entry in enumerate(gt["images"]):
        path = folder / image_entry.get("file_name", "")
        print(f"[{k + 1}/{len(gt['images'])}] segmenting {path.name}", file=sys.stderr)
        image = read_image(path)
        instances = segmenter.segment(image)
        if tuple(instances.image_shape) != (image_entry["height"], image_entry["width"]):
            h, w = instances.image_shape
            raise ValueError(f"{path} is {h}×{w} but the ground truth says "
                             f"{image_entry['height']}×{image_entry['width']}")
        predictions.append(instances)
    names = category_names(gt)
    n_classes = 1 + max([int(p.class_ids.max()) for p in predictions if len(p)], default=0)
    names += [f"class {c}" for c in range(len(names), n_classes)]
    pred = instances_to_coco(predictions, gt["images"], category_names=names, mode="rle")
    # class index k is the k-th ground-truth category: use the ground truth's category ids
    ids = [c["id"] for c in gt["categories"]]
    ids += [max(ids, default=0) + 1 + k for k in range(len(names) - len(ids))]
    for category in pred["categories"]:
        category["id"] = ids[category["id"] - 1]
    for ann in pred["annotations"]:
        ann["category_id"] = ids[ann["category_id"] - 1]
    return pred, recommended, segmenter.views


def run(args: argparse.Namespace) -> int:
    """Evaluate and print a markdown table; optionally write the results as JSON."""
    from ..evaluation import evaluate_coco, format_table
    from ..io.atomic import atomic_write_json, check_can_write
    from ..io.coco import read_coco, read_predictions

    if args.json is not None:
        check_can_write(args.json, args.overwrite)  # fail before the slow part
    gt = read_coco(args.gt)
    score_threshold = args.score_threshold
    if args.weights is not None:
        pred, recommended, views = _segment_ground_truth_images(args, gt)
        if score_threshold is None:  # as segment: the checkpoint's recommendation, else 0.5
            score_threshold = 0.5 if recommended is None else recommended
    else:
        pred = read_predictions(args.pred, gt)
    results = evaluate_coco(gt, pred, iou_threshold=args.iou_threshold,
                            max_dets=args.max_dets, score_threshold=score_threshold,
                            per_image=args.per_image)
    results["gt"] = str(args.gt)
    results["pred"] = str(args.pred if args.pred is not None else args.weights)
    if args.weights is not None:  # the figures depend on them (docs/inference.md, views)
        results["views"] = views
    print(format_table(results))
    if args.json is not None:
        atomic_write_json(args.json, results, overwrite=args.overwrite, indent=2)
        print(f"results written to {args.json}", file=sys.stderr)
    return 0

