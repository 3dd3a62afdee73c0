"""Instance-segmentation metrics for possibly overlapping instances.

* **COCO mask AP** with pycocotools (segm): AP (IoU 0.50:0.95), AP50, AP75, APs/APm/APl and AR,
  all read from ``COCOeval.eval`` at the *largest* ``maxDets`` (default 100/300/1000).
  ``COCOeval.summarize()`` is not used: its headline AP is always computed at 100 detections, which
  caps a perfect prediction of a 300-cell image at about 0.84. ``AP_at_maxdets`` shows AP per limit.
  AP is class-aware (category = class index + 1); every prediction counts, ranked by score.
* **Matching metrics at IoU ≥ ``iou_threshold``** (default 0.5; what the LIVECell study reports):
  per image, a one-to-one assignment (``scipy.optimize.linear_sum_assignment``) that maximises the
  number of pairs with IoU ≥ threshold, ties broken by the largest total IoU. ``precision = TP /
  #pred``, ``recall = TP / #gt``, ``F1 = 2 TP / (#gt + #pred)``, ``mean_iou`` = mean IoU of the
  matched pairs. Counts are pooled over all images.
* **PQ** (panoptic quality, Kirillov et al.): the same assignment with IoU > 0.5;
  ``SQ`` = mean IoU of the matches, ``RQ = TP / (TP + FP/2 + FN/2)``, ``PQ = SQ × RQ``; pooled.
* **AJI** (aggregated Jaccard index, Kumar et al. 2017) on per-instance masks, so it is defined
  for overlapping instances: for every ground-truth mask G take the prediction S with the highest
  IoU to it (predictions may serve several G); add ``|G ∩ S|`` to C and ``|G ∪ S|`` to U (``|G|``
  alone when no prediction touches G); then add the area of every prediction never chosen to U.
  ``AJI = C / U``, pooled over images (C and U summed).

Matching metrics, PQ and AJI are class-agnostic. A ratio whose denominator is 0 is ``None``.
Masks are compared through pycocotools RLE, so no full-frame mask is ever built.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..instances import Instances

__all__ = ["evaluate", "evaluate_coco", "format_table", "match_instances", "pairwise_iou"]

_AREA_NAMES = ("all", "small", "medium", "large")


def _rles(instances: Instances) -> list[dict]:
    from ..io.coco import crop_to_rle

    return [crop_to_rle(c, b, instances.image_shape) for c, b in zip(instances.crops,
                                                                       instances.boxes)]


def _iou_rles(gt_rles: list[dict], pred_rles: list[dict]) -> np.ndarray:
    from pycocotools import mask as mask_utils

    if not gt_rles or not pred_rles:
        return np.zeros((len(gt_rles), len(pred_rles)), dtype=np.float64)
    iou = mask_utils.iou(pred_rles, gt_rles, [0] * len(gt_rles))
    return np.asarray(iou, dtype=np.float64).reshape(len(pred_rles), len(gt_rles)).T


def pairwise_iou(gt: Instances, pred: Instances) -> np.ndarray:
    """``(len(gt), len(pred))`` mask IoU matrix (pycocotools RLE IoU, box-pruned in C)."""
    if gt.image_shape != pred.image_shape:
        raise ValueError(f"ground truth is {gt.image_shape} but predictions are {pred.image_shape}")
    return _iou_rles(_rles(gt), _rles(pred))


def match_instances(
    iou: np.ndarray, threshold: float = 0.5, strict: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matches ``(gt_index, pred_index)`` with IoU ≥ ``threshold`` (> when ``strict``).

    Maximises the number of matches, then the total IoU of the matches.
    """
    from scipy.optimize import linear_sum_assignment

    if iou.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    valid = iou > threshold if strict else iou >= threshold
    if not valid.any():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    # every valid pair is worth more than 1; all IoU bonuses together are worth less than 1
    weight = np.where(valid, 1.0 + iou / (min(iou.shape) + 1), 0.0)
    rows, cols = linear_sum_assignment(weight, maximize=True)
    ok = valid[rows, cols]
    return rows[ok].astype(np.int64), cols[ok].astype(np.int64)


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den else None


def _image_stats(gt: Instances, pred: Instances, iou: np.ndarray,
                 iou_threshold: float) -> dict[str, float]:
    g_area, p_area = gt.areas.astype(np.float64), pred.areas.astype(np.float64)
    rows, cols = match_instances(iou, iou_threshold)
    prow, pcol = match_instances(iou, 0.5, strict=True)
    # AJI: per-GT best prediction (reuse allowed); intersections from IoU and areas
    inter_c = union_u = 0.0
    used = np.zeros(len(pred), dtype=bool)
    for g in range(len(gt)):
        if len(pred) and iou[g].max() > 0:
            p = int(np.argmax(iou[g]))
            inter = np.rint(iou[g, p] * (g_area[g] + p_area[p]) / (1.0 + iou[g, p]))
            inter_c += inter
            union_u += g_area[g] + p_area[p] - inter
            used[p] = True
        else:
            union_u += g_area[g]
    union_u += p_area[~used].sum()
    return {
        "n_gt": len(gt), "n_pred": len(pred),
        "tp": len(rows), "iou_sum": float(iou[rows, cols].sum()),
        "pq_tp": len(prow), "pq_iou_sum": float(iou[prow, pcol].sum()),
        "aji_c": float(inter_c), "aji_u": float(union_u),
    }


def _summarise(s: Mapping[str, float]) -> dict[str, Any]:
    n_gt, n_pred, tp = s["n_gt"], s["n_pred"], s["tp"]
    pq_tp = s["pq_tp"]
    sq = _ratio(s["pq_iou_sum"], pq_tp)
    rq = _ratio(pq_tp, pq_tp + 0.5 * (n_pred - pq_tp) + 0.5 * (n_gt - pq_tp))
    return {
        "precision": _ratio(tp, n_pred),
        "recall": _ratio(tp, n_gt),
        "f1": _ratio(2 * tp, n_gt + n_pred),
        "mean_iou": _ratio(s["iou_sum"], tp),
        "aji": _ratio(s["aji_c"], s["aji_u"]),
        "pq": (sq or 0.0) * rq if rq is not None else None,
        "sq": sq,
        "rq": rq,
        "tp": int(tp), "fp": int(n_pred - tp), "fn": int(n_gt - tp),
        "n_gt": int(n_gt), "n_pred": int(n_pred),
    }


def _coco_ap(gt: Sequence[Instances], pred: Sequence[Instances], gt_rles: list[list[dict]],
             pred_rles: list[list[dict]], max_dets: Sequence[int]) -> dict[str, Any]:
    from pycocotools.coco import COCO

    from .cocoeval import FastCOCOeval

    n_classes = 1 + max([int(x.class_ids.max()) for x in (*gt, *pred) if len(x)], default=0)
    images = [{"id": k + 1, "height": g.image_shape[0], "width": g.image_shape[1]}
              for k, g in enumerate(gt)]
    categories = [{"id": c + 1, "name": f"class {c}"} for c in range(n_classes)]

    def annotations(sets: Sequence[Instances], rles: list[list[dict]],
                    with_score: bool) -> list[dict]:
        anns: list[dict] = []
        for k, inst in enumerate(sets):
            boxes = inst.bboxes_xywh()
            for i, (rle, area) in enumerate(zip(rles[k], inst.areas.tolist())):
                if area == 0:
                    continue
                ann = {"id": len(anns) + 1, "image_id": k + 1,
                       "category_id": int(inst.class_ids[i]) + 1, "segmentation": rle,
                       "area": float(area), "bbox": boxes[i].tolist(), "iscrowd": 0}
                if with_score:
                    ann["score"] = float(inst.scores[i])
                anns.append(ann)
        return anns

    quiet = contextlib.redirect_stdout(io.StringIO())
    with quiet:
        coco_gt, coco_dt = COCO(), COCO()
        coco_gt.dataset = {"images": images, "categories": categories,
                           "annotations": annotations(gt, gt_rles, False)}
        coco_dt.dataset = {"images": images, "categories": categories,
                           "annotations": annotations(pred, pred_rles, True)}
        coco_gt.createIndex()
        coco_dt.createIndex()
        ev = FastCOCOeval(coco_gt, coco_dt, iouType="segm")
        ev.params.maxDets = sorted(int(m) for m in max_dets)
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"]  # (T, R, K, A, M)
    recall = ev.eval["recall"]  # (T, K, A, M)
    thresholds = ev.params.iouThrs

    def mean_valid(values: np.ndarray) -> float | None:
        values = values[values > -1]
        return float(values.mean()) if values.size else None

    def t_index(value: float) -> int:
        return int(np.flatnonzero(np.isclose(thresholds, value))[0])

    out: dict[str, Any] = {
        "AP": mean_valid(precision[:, :, :, 0, -1]),
        "AP50": mean_valid(precision[t_index(0.5), :, :, 0, -1]),
        "AP75": mean_valid(precision[t_index(0.75), :, :, 0, -1]),
        "APs": mean_valid(precision[:, :, :, 1, -1]),
        "APm": mean_valid(precision[:, :, :, 2, -1]),
        "APl": mean_valid(precision[:, :, :, 3, -1]),
        "AR": mean_valid(recall[:, :, 0, -1]),
        "AP_at_maxdets": {str(m): mean_valid(precision[:, :, :, 0, k])
                          for k, m in enumerate(ev.params.maxDets)},
        "max_dets": [int(m) for m in ev.params.maxDets],
    }
    return out


def evaluate(
    gt: Sequence[Instances],
    pred: Sequence[Instances],
    iou_threshold: float = 0.5,
    max_dets: Sequence[int] = (100, 300, 1000),
    score_threshold: float | None = None,
    per_image: bool = False,
) -> dict[str, Any]:
    """All metrics for paired lists of ground truth and predictions (one ``Instances`` per image).

    ``score_threshold`` drops low-scoring predictions before the matching metrics, PQ and AJI (AP
    always ranks every prediction). Returns a JSON-serialisable dict; see the module docstring for
    the definitions. ``per_image=True`` adds a ``per_image`` list of the matching metrics.
    """
    gt, pred = list(gt), list(pred)
    if len(gt) != len(pred):
        raise ValueError(f"{len(gt)} ground-truth images but {len(pred)} prediction sets")
    for k, (g, p) in enumerate(zip(gt, pred)):
        if g.image_shape != p.image_shape:
            raise ValueError(f"image {k}: ground truth is {g.image_shape}, "
                             f"predictions are {p.image_shape}")
    if score_threshold is not None:
        kept = [p[np.flatnonzero(p.scores >= score_threshold)] if len(p) else p for p in pred]
    else:
        kept = pred
    gt_rles = [_rles(g) for g in gt]
    pred_rles = [_rles(p) for p in pred]
    kept_rles = pred_rles if kept is pred else [_rles(p) for p in kept]
    results = _coco_ap(gt, pred, gt_rles, pred_rles, max_dets)
    totals: dict[str, float] = {}
    images = []
    for g, p, g_rles, p_rles in zip(gt, kept, gt_rles, kept_rles):
        stats = _image_stats(g, p, _iou_rles(g_rles, p_rles), iou_threshold)
        for key, value in stats.items():
            totals[key] = totals.get(key, 0.0) + value
        if per_image:
            images.append(_summarise(stats))
    if not totals:
        totals = dict.fromkeys(("n_gt", "n_pred", "tp", "iou_sum", "pq_tp", "pq_iou_sum",
                                "aji_c", "aji_u"), 0.0)
    results.update(_summarise(totals))
    results["iou_threshold"] = float(iou_threshold)
    results["score_threshold"] = None if score_threshold is None else float(score_threshold)
    results["n_images"] = len(gt)
    if per_image:
        results["per_image"] = images
    return results


def evaluate_coco(gt_coco: Mapping[str, Any], pred_coco: Mapping[str, Any],
                  **kwargs: Any) -> dict[str, Any]:
    """:func:`evaluate` on COCO dicts; predictions are paired with ground truth by ``image_id``
    and ``category_id`` (a ground-truth image without predictions counts as predicted empty)."""
    from ..io.coco import coco_to_instances

    # class index = position in the ground truth's categories; predictions are aligned by id
    known = {c["id"] for c in gt_coco["categories"]}
    pred_coco = {**pred_coco, "categories": list(gt_coco["categories"]) + [
        c for c in pred_coco.get("categories", []) if c["id"] not in known]}
    gt_images = coco_to_instances(gt_coco, source="ground truth")
    pred_images = {img["id"]: inst for img, inst in coco_to_instances(pred_coco,
                                                                         source="predictions")}
    gt_ids = {img["id"] for img, _ in gt_images}
    extra = [i for i, inst in pred_images.items() if i not in gt_ids and len(inst)]
    if extra:
        raise ValueError(f"predictions refer to image ids {sorted(extra)[:10]} that are not in "
                         f"the ground truth")
    gts, preds = [], []
    for img, inst in gt_images:
        gts.append(inst)
        preds.append(pred_images.get(img["id"], Instances.empty(inst.image_shape)))
    return evaluate(gts, preds, **kwargs)


_ROWS = (
    ("AP", "AP (IoU .50:.95)"), ("AP50", "AP50"), ("AP75", "AP75"),
    ("APs", "AP small"), ("APm", "AP medium"), ("APl", "AP large"), ("AR", "AR"),
    ("precision", "precision"), ("recall", "recall"), ("f1", "F1"),
    ("mean_iou", "mean matched IoU"), ("aji", "AJI"), ("pq", "PQ"), ("sq", "SQ"), ("rq", "RQ"),
)


def format_table(results: Mapping[str, Any]) -> str:
    """A markdown table of the headline metrics of :func:`evaluate`."""
    thr = results.get("iou_threshold", 0.5)
    max_det = (results.get("max_dets") or [None])[-1]
    lines = ["| metric | value |", "|---|---|"]
    for key, label in _ROWS:
        if key not in results:
            continue
        if key in ("precision", "recall", "f1", "mean_iou"):
            label = f"{label} @ IoU {thr:g}"
        elif key.startswith("A") and max_det:
            label = f"{label} (maxDets {max_det})"
        value = results[key]
        lines.append(f"| {label} | {'n/a' if value is None else f'{value:.4f}'} |")
    counts = ", ".join(f"{k} {results[k]}" for k in ("n_images", "n_gt", "n_pred", "tp", "fp", "fn")
                       if k in results)
    if counts:
        lines.append(f"| counts | {counts} |")
    return "\n".join(lines)
