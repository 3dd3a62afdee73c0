"""pycocotools' ``COCOeval`` with a vectorised per-image matching step.

``COCOeval.evaluateImg`` matches detections to ground truth with three nested Python loops
(thresholds × detections × ground truths): about 30 s for the 50 images / 3187 nuclei of DSB 2018
on a 2-core CPU, and most of a unit test's time. :class:`FastCOCOeval` computes the same result —
same greedy rule, same tie breaking, same ignore flags, same output dict, so ``accumulate`` and
``eval["precision"]`` are unchanged — with numpy. It falls back to the original for crowd ground
truth or ``useCats=0``. ``tests/evaluation`` checks it against the original on random cases.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools.cocoeval import COCOeval

__all__ = ["FastCOCOeval"]


class FastCOCOeval(COCOeval):
    """Drop-in ``COCOeval`` whose ``evaluateImg`` is vectorised (identical results)."""

    def evaluateImg(self, imgId: int, catId: int, aRng: list[float],
                    maxDet: int) -> dict[str, Any] | None:
        p = self.params
        if not p.useCats:
            return super().evaluateImg(imgId, catId, aRng, maxDet)
        gt, dt = self._gts[imgId, catId], self._dts[imgId, catId]
        if not gt and not dt:
            return None
        if any(int(g["iscrowd"]) for g in gt):
            return super().evaluateImg(imgId, catId, aRng, maxDet)
        ignore = np.array([bool(g["ignore"]) or g["area"] < aRng[0] or g["area"] > aRng[1]
                           for g in gt], dtype=np.int64)
        for g, flag in zip(gt, ignore.tolist()):
            g["_ignore"] = flag
        gt_order = np.argsort(ignore, kind="mergesort")
        gt = [gt[i] for i in gt_order]
        gt_ignore = ignore[gt_order]
        dt_order = np.argsort([-d["score"] for d in dt], kind="mergesort")[:maxDet]
        dt = [dt[i] for i in dt_order]
        n_t, n_g, n_d = len(p.iouThrs), len(gt), len(dt)
        gt_ids = np.array([g["id"] for g in gt], dtype=np.float64)
        dt_ids = np.array([d["id"] for d in dt], dtype=np.float64)
        gtm = np.zeros((n_t, n_g))
        dtm = np.zeros((n_t, n_d))
        dt_ignore = np.zeros((n_t, n_d))
        ious = self.ious[imgId, catId]
        if len(ious) and n_g and n_d:
            ious = np.asarray(ious)[:n_d][:, gt_order]
            regular = gt_ignore == 0
            for t_index, t in enumerate(p.iouThrs):
                match = _greedy_match(ious, min(t, 1 - 1e-10), regular)
                hit = np.flatnonzero(match >= 0)
                m = match[hit]
                dt_ignore[t_index, hit] = gt_ignore[m]
                dtm[t_index, hit] = gt_ids[m]
                gtm[t_index, m] = dt_ids[hit]
        outside = np.array([d["area"] < aRng[0] or d["area"] > aRng[1] for d in dt],
                           dtype=bool).reshape(1, n_d)
        dt_ignore = np.logical_or(dt_ignore, np.logical_and(dtm == 0, np.repeat(outside, n_t, 0)))
        return {
            "image_id": imgId, "category_id": catId, "aRng": aRng, "maxDet": maxDet,
            "dtIds": [d["id"] for d in dt], "gtIds": [g["id"] for g in gt],
            "dtMatches": dtm, "gtMatches": gtm, "dtScores": [d["score"] for d in dt],
            "gtIgnore": gt_ignore, "dtIgnore": dt_ignore,
        }


def _choose(values: np.ndarray, candidates: np.ndarray, regular: np.ndarray) -> np.ndarray:
    """Per row: among the candidates (regular ones if any, else ignored ones), the last column
    holding the highest IoU (COCOeval's ``>=`` running-best rule); -1 when there is none."""
    has_regular = (candidates & regular[None, :]).any(axis=1, keepdims=True)
    pool = candidates & np.where(has_regular, regular[None, :], ~regular[None, :])
    scored = np.where(pool, values, -1.0)
    last = scored.shape[1] - 1 - np.argmax(scored[:, ::-1], axis=1)
    return np.where(pool.any(axis=1), last, -1)


def _greedy_match(ious: np.ndarray, threshold: float, regular: np.ndarray) -> np.ndarray:
    """COCOeval's greedy matching at one threshold: ground-truth index per detection or -1.

    Detections are in score order. When no ground truth is a candidate of two detections the
    choices are independent and are made all at once; otherwise detections are walked in order.
    """
    candidates = ious >= threshold
    if not candidates.any():
        return np.full(ious.shape[0], -1, dtype=np.int64)
    if candidates.sum(axis=0).max() <= 1:
        return _choose(ious, candidates, regular).astype(np.int64)
    match = np.full(ious.shape[0], -1, dtype=np.int64)
    free = np.ones(ious.shape[1], dtype=bool)
    for d in np.flatnonzero(candidates.any(axis=1)):
        row = candidates[d] & free
        if not row.any():
            continue
        g = int(_choose(ious[d:d + 1], row[None, :], regular)[0])
        match[d] = g
        free[g] = False
    return match
