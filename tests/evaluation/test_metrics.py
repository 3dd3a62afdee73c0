"""Metrics: perfect predictions, hand-computed cases, agreement with plain pycocotools."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from napari_iaunet.evaluation import evaluate, evaluate_coco, format_table, match_instances
from napari_iaunet.instances import Instances
from napari_iaunet.io.coco import instances_to_coco, to_coco_results

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR", "precision", "recall", "f1",
           "mean_iou", "aji", "pq", "sq", "rq")


def boxes_instances(shape, boxes, scores=None, class_ids=None) -> Instances:
    crops = [np.ones((y1 - y0, x1 - x0), bool) for y0, x0, y1, x1 in boxes]
    n = len(crops)
    return Instances(shape, np.asarray(boxes), crops,
                     scores=np.ones(n) if scores is None else scores,
                     class_ids=np.zeros(n) if class_ids is None else class_ids)


def grid(n, shape=(400, 400), side=12, step=20) -> Instances:
    per_row = shape[1] // step
    boxes = [((k // per_row) * step, (k % per_row) * step,
              (k // per_row) * step + side, (k % per_row) * step + side) for k in range(n)]
    return boxes_instances(shape, boxes)


def test_perfect_prediction_of_300_instances_scores_one():
    gt = grid(300)
    big = boxes_instances((400, 400), [(0, 0, 60, 60), (300, 0, 400, 100), (300, 300, 340, 340)])
    overlapping = Instances.concatenate([gt, big])  # overlaps + small/medium/large sizes
    pred = overlapping.with_ids(overlapping.ids + 1000)
    pred.scores = np.linspace(1.0, 0.5, len(pred)).astype(np.float32)
    r = evaluate([overlapping], [pred])
    for key in METRICS:
        assert r[key] == pytest.approx(1.0), key
    # the trap: at maxDets=100 only a third of the cells can be found
    assert r["AP_at_maxdets"]["100"] < 0.5
    assert r["AP_at_maxdets"]["1000"] == pytest.approx(1.0)
    assert (r["tp"], r["fp"], r["fn"]) == (303, 0, 0)
    json.dumps(r, allow_nan=False)  # JSON-able


def test_hand_computed_case():
    """GT: A (10×13) and B; predictions: A' shifted by 3 px (IoU 100/160 = 0.625) and C (extra)."""
    shape = (80, 80)
    gt = boxes_instances(shape, [(0, 0, 10, 13), (30, 0, 40, 10)])
    pred = boxes_instances(shape, [(0, 3, 10, 16), (50, 50, 60, 60)], scores=[0.9, 0.8])
    r = evaluate([gt], [pred])
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 1)
    assert r["precision"] == pytest.approx(0.5)
    assert r["recall"] == pytest.approx(0.5)
    assert r["f1"] == pytest.approx(0.5)
    assert r["mean_iou"] == pytest.approx(0.625)
    assert r["sq"] == pytest.approx(0.625)
    assert r["rq"] == pytest.approx(1 / (1 + 0.5 + 0.5))
    assert r["pq"] == pytest.approx(0.3125)
    # AJI: C = |A ∩ A'| = 100; U = |A ∪ A'| + |B| + |C| = 160 + 100 + 100
    assert r["aji"] == pytest.approx(100 / 360)
    # AP50: recall reaches 0.5 at precision 1 → 51 of 101 recall points; A' counts up to IoU 0.6
    assert r["AP50"] == pytest.approx(51 / 101)
    assert r["AP75"] == pytest.approx(0.0)
    assert r["AP"] == pytest.approx(3 / 10 * 51 / 101)
    # a stricter matching threshold drops the match
    assert evaluate([gt], [pred], iou_threshold=0.7)["tp"] == 0
    # the score threshold removes C before matching (AP unchanged)
    r2 = evaluate([gt], [pred], score_threshold=0.85)
    assert r2["precision"] == pytest.approx(1.0) and r2["AP"] == pytest.approx(r["AP"])


def test_aji_with_one_prediction_covering_two_cells():
    shape = (40, 40)
    gt = boxes_instances(shape, [(0, 0, 10, 10), (0, 10, 10, 20)])
    pred = boxes_instances(shape, [(0, 0, 10, 20)])
    r = evaluate([gt], [pred])
    # both GT pick the same prediction: C = 100 + 100, U = 200 + 200
    assert r["aji"] == pytest.approx(0.5)
    assert r["tp"] == 1 and r["mean_iou"] == pytest.approx(0.5)


def test_empty_cases_are_none_not_nan():
    shape = (20, 20)
    r = evaluate([Instances.empty(shape)], [Instances.empty(shape)])
    assert r["precision"] is None and r["recall"] is None and r["AP"] is None
    r = evaluate([boxes_instances(shape, [(0, 0, 5, 5)])], [Instances.empty(shape)])
    assert r["recall"] == 0.0 and r["precision"] is None and r["AP"] == 0.0 and r["aji"] == 0.0
    assert "n/a" in format_table(r)
    json.dumps(r, allow_nan=False)


def test_matching_prefers_more_matches_then_iou():
    iou = np.array([[0.9, 0.6], [0.7, 0.0]])
    rows, cols = match_instances(iou, 0.5)
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(0, 1), (1, 0)]
    rows, _ = match_instances(np.array([[0.5]]), 0.5, strict=True)
    assert rows.size == 0


def _random_scene(rng, shape=(128, 128), n=25):
    boxes, crops = [], []
    for _ in range(n):
        h, w = rng.integers(3, 40, 2)
        y0, x0 = rng.integers(0, shape[0] - h), rng.integers(0, shape[1] - w)
        crop = rng.random((h, w)) < 0.97
        crop[h // 2, :] = True
        boxes.append((y0, x0, y0 + h, x0 + w))
        crops.append(crop)
    return Instances(shape, np.asarray(boxes), crops, class_ids=rng.integers(0, 2, n)).tightened()


def _jitter(rng, inst: Instances) -> Instances:
    """Predictions: shifted copies of some GT, some duplicates, some random extras."""
    keep = rng.random(len(inst)) < 0.8
    moved = inst[np.flatnonzero(keep)]
    shift = rng.integers(-1, 2, (len(moved), 2))
    h, w = inst.image_shape
    boxes = moved.boxes.copy()
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]] + shift[:, :1], 0, h)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]] + shift[:, 1:], 0, w)
    crops = [c[: b[2] - b[0], : b[3] - b[1]] for c, b in zip(moved.crops, boxes)]
    boxes[:, 2] = boxes[:, 0] + [c.shape[0] for c in crops]
    boxes[:, 3] = boxes[:, 1] + [c.shape[1] for c in crops]
    pred = Instances(inst.image_shape, boxes, crops, class_ids=moved.class_ids)
    dup = pred[np.arange(min(3, len(pred)))]
    extra = _random_scene(rng, inst.image_shape, 5)
    out = Instances.concatenate([pred, dup, extra])
    out.scores = rng.random(len(out)).astype(np.float32)
    return out.tightened()


def test_agrees_with_plain_pycocotools():
    rng = np.random.default_rng(3)
    gts = [_random_scene(rng) for _ in range(3)]
    preds = [_jitter(rng, g) for g in gts]
    ours = evaluate(gts, preds)
    gt_coco = instances_to_coco(gts, None, category_names=("a", "b"), mode="rle",
                                include_scores=False)
    pred_coco = instances_to_coco(preds, None, category_names=("a", "b"), mode="rle")
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt_coco
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(to_coco_results(pred_coco))
        ev = COCOeval(coco_gt, coco_dt, "segm")  # default maxDets 1/10/100: < 100 per image
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    expected = dict(zip(("AP", "AP50", "AP75", "APs", "APm", "APl"), ev.stats[:6]))
    expected["AR"] = ev.stats[8]
    for key, value in expected.items():
        if value == -1:
            assert ours[key] is None, key
        else:
            assert ours[key] == pytest.approx(value, abs=1e-12), key
    assert 0.2 < ours["AP"] < 0.95  # a non-trivial case
    # the same through evaluate_coco (COCO dicts paired by image id)
    assert evaluate_coco(gt_coco, pred_coco)["AP"] == pytest.approx(ours["AP"])


def test_evaluate_coco_aligns_categories_by_id_and_checks_images():
    shape = (30, 30)
    gt = instances_to_coco([boxes_instances(shape, [(0, 0, 10, 10), (15, 15, 25, 25)],
                                            class_ids=[0, 1])], ["a"],
                           category_names=("x", "y"), mode="rle", include_scores=False)
    pred = json.loads(json.dumps(gt))
    pred["categories"] = pred["categories"][::-1]  # same ids, other order
    for ann in pred["annotations"]:
        ann["score"] = 0.9
    assert evaluate_coco(gt, pred)["AP"] == pytest.approx(1.0)
    pred["images"].append({"id": 9, "file_name": "z", "height": 30, "width": 30})
    pred["annotations"].append({**pred["annotations"][0], "id": 77, "image_id": 9})
    with pytest.raises(ValueError, match="not in the ground truth"):
        evaluate_coco(gt, pred)


def test_format_table_is_markdown():
    gt = grid(5, shape=(60, 120))
    text = format_table(evaluate([gt], [gt]))
    lines = text.splitlines()
    assert lines[0] == "| metric | value |" and lines[1] == "|---|---|"
    assert any(line.startswith("| AP (IoU .50:.95) (maxDets 1000) | 1.0000") for line in lines)
    assert any("F1 @ IoU 0.5" in line for line in lines)


def test_mismatched_inputs():
    with pytest.raises(ValueError, match="prediction sets"):
        evaluate([grid(2)], [])
    with pytest.raises(ValueError, match="image 0"):
        evaluate([grid(2)], [Instances.empty((10, 10))])
