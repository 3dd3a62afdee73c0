"""FastCOCOeval gives exactly pycocotools' COCOeval results."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from napari_iaunet.evaluation.cocoeval import FastCOCOeval


def _scene(rng, n_img=3, size=64):
    """Boxes with heavy overlap, duplicates, ties in IoU and score, all area ranges."""
    images = [{"id": k + 1, "height": size, "width": size} for k in range(n_img)]
    gts, dts = [], []
    for img in images:
        for _ in range(rng.integers(0, 12)):
            x, y = rng.integers(0, size - 4, 2)
            w, h = rng.integers(2, size - max(x, y), 2) if rng.random() < 0.3 else \
                rng.integers(2, 12, 2)
            gts.append({"image_id": img["id"], "category_id": int(rng.integers(1, 3)),
                        "bbox": [float(x), float(y), float(w), float(h)], "iscrowd": 0})
        for _ in range(rng.integers(0, 15)):
            if gts and rng.random() < 0.7:
                src = gts[rng.integers(len(gts))]
                bx, by, bw, bh = src["bbox"]
                jx, jy = rng.integers(-2, 3, 2)
                box = [max(0.0, bx + jx), max(0.0, by + jy), bw, bh]
                cat, image_id = src["category_id"], src["image_id"]
            else:
                x, y = rng.integers(0, size - 4, 2)
                box = [float(x), float(y), float(rng.integers(2, 20)), float(rng.integers(2, 20))]
                cat, image_id = int(rng.integers(1, 3)), img["id"]
            dts.append({"image_id": image_id, "category_id": cat, "bbox": box,
                        "score": float(rng.choice([0.5, 0.7, 0.9, rng.random()]))})
    for k, g in enumerate(gts):
        g["id"] = k + 1
        g["area"] = g["bbox"][2] * g["bbox"][3] * (40 if k % 3 == 0 else 1)
    return images, gts, dts


@pytest.mark.parametrize("seed", range(6))
def test_identical_to_cocoeval(seed):
    rng = np.random.default_rng(seed)
    images, gts, dts = _scene(rng)
    if not dts:
        pytest.skip("no detections drawn")
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": gts,
                           "categories": [{"id": 1}, {"id": 2}]}
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dts)
        results = []
        for cls in (COCOeval, FastCOCOeval):
            ev = cls(coco_gt, coco_dt, "bbox")
            ev.params.maxDets = [1, 3, 100]  # truncation matters
            ev.evaluate()
            ev.accumulate()
            results.append(ev)
    slow, fast = results
    assert len(slow.evalImgs) == len(fast.evalImgs)
    for a, b in zip(slow.evalImgs, fast.evalImgs):
        assert (a is None) == (b is None)
        if a is None:
            continue
        for key in ("dtIds", "gtIds", "dtScores"):
            assert a[key] == b[key]
        for key in ("dtMatches", "gtMatches", "gtIgnore", "dtIgnore"):
            np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)
    np.testing.assert_array_equal(slow.eval["precision"], fast.eval["precision"])
    np.testing.assert_array_equal(slow.eval["recall"], fast.eval["recall"])
