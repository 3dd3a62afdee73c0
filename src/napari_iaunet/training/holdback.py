"""Hold back part of the corrected images to check a fine-tune against its start model.

With one corrected image there is no validation set. :func:`hold_back` cuts a strip off each
image (about ``fraction`` of it, at the far end of its longer side, or another end where that
strip holds no cell) where the cut crosses the fewest cell pixels, so most cells fall wholly on
one side; the model trains on the rest and the strip judges it: validation segments the whole
image (the model sees the strip's context, as it will when it is used) and scores only the cells
inside the strip. :func:`judge` compares the start model's and the fine-tuned model's scores
there: the fine-tuned model is kept only when it is not worse. :func:`calibrate_threshold` then
picks the detection score threshold with the fewest edits on the strips (the corrections say
which detections were false).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..instances import Instances
from .dataset import AnnotatedImage, AnnotatedImages

__all__ = ["FEW_CELLS", "THRESHOLDS", "HeldBack", "Threshold", "Verdict", "calibrate_threshold",
           "crop_annotated", "crop_instances", "hold_back", "judge"]

THRESHOLDS = tuple(round(0.3 + 0.05 * i, 2) for i in range(13))  # 0.3 … 0.9
MIN_PIECE = 16  # pixels: smaller pieces of a cut cell are dropped from either side
SEARCH = 0.05  # the cut is searched within ±5 % of the image around the nominal fraction
FEW_CELLS = 5  # a verdict for the fine-tune on fewer held-back cells says they say little


@dataclass
class HeldBack:
    """The training part and the held-back part of a set of corrected images (the training
    part holds copies of the pixels it keeps; the held-back part the whole images, each with
    its ``score_window``)."""

    train: AnnotatedImages
    held: AnnotatedImages
    fraction: float
    windows: list[tuple[int, int, int, int]]  # per image: the held-back (y0, x0, y1, x1)

    @property
    def cells(self) -> int:
        return sum(len(crop_instances(it.instances, it.score_window)) for it in self.held)


def crop_instances(inst: Instances, window: tuple[int, int, int, int],
                   min_area: int = MIN_PIECE) -> Instances:
    """The parts of ``inst`` inside ``window`` = (y0, x0, y1, x1), in the window's coordinates;
    pieces smaller than ``min_area`` pixels are dropped (ids, scores and classes are kept)."""
    wy0, wx0, wy1, wx1 = (int(v) for v in window)
    boxes, crops, keep = [], [], []
    for i, (crop, (y0, x0, y1, x1)) in enumerate(zip(inst.crops, inst.boxes)):
        cy0, cx0, cy1, cx1 = max(y0, wy0), max(x0, wx0), min(y1, wy1), min(x1, wx1)
        if cy1 <= cy0 or cx1 <= cx0:
            continue
        piece = crop[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
        if np.count_nonzero(piece) < max(1, min_area):
            continue
        rows, cols = np.flatnonzero(piece.any(1)), np.flatnonzero(piece.any(0))
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        boxes.append((cy0 - wy0 + r0, cx0 - wx0 + c0, cy0 - wy0 + r1, cx0 - wx0 + c1))
        crops.append(np.ascontiguousarray(piece[r0:r1, c0:c1]))
        keep.append(i)
    k = np.asarray(keep, np.int64)
    return Instances((wy1 - wy0, wx1 - wx0), np.asarray(boxes, np.int64).reshape(-1, 4), crops,
                     inst.scores[k], inst.class_ids[k], inst.ids[k])


def crop_annotated(item: AnnotatedImage, window: tuple[int, int, int, int], suffix: str,
                   min_area: int = MIN_PIECE) -> AnnotatedImage:
    """``item``'s pixels (as stored: any dtype, channels last or first) and cells inside
    ``window``."""
    y0, x0, y1, x1 = window
    raw = np.asarray(item.load_raw())
    shape = item.instances.image_shape
    if raw.shape[:2] == shape:
        pixels = raw[y0:y1, x0:x1]
    elif raw.ndim == 3 and raw.shape[1:3] == shape:  # channels first
        pixels = raw[:, y0:y1, x0:x1]
    else:
        raise ValueError(f"{item.path or item.name}: image of shape {raw.shape} does not match "
                         f"its {shape[0]}×{shape[1]} annotations")
    return AnnotatedImage(crop_instances(item.instances, window, min_area),
                          image=np.ascontiguousarray(pixels),
                          name=f"{item.name or (item.path.name if item.path else 'image')}"
                               f" [{suffix}]")


def _coverage(inst: Instances, axis: int, length: int) -> np.ndarray:
    """Cell pixels on each row (axis 0) or column (axis 1) of the image, overlaps counted."""
    counts = np.zeros(length, np.int64)
    for crop, box in zip(inst.crops, inst.boxes):
        start = box[axis]
        line = crop.sum(axis=1 - axis)
        counts[start:start + len(line)] += line
    return counts


def _cut(inst: Instances, fraction: float, axis: int, far: bool
         ) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """(train window, held window): the held strip lies at the far (or near) end of ``axis``
    (0: rows, 1: columns), its width within ``fraction`` ± :data:`SEARCH` of that side, where
    the fewest cell pixels lie."""
    h, w = inst.image_shape
    length = w if axis == 1 else h
    coverage = _coverage(inst, axis, length)
    nominal = length * (1 - fraction) if far else length * fraction
    lo = max(1, round(nominal - length * SEARCH))
    hi = min(length - 1, round(nominal + length * SEARCH))
    if hi <= lo:
        at = min(length - 1, max(1, round(nominal)))
    else:  # the emptiest line; among equals the one nearest the nominal cut
        at = min(range(lo, hi + 1), key=lambda c: (coverage[c], abs(c - nominal)))
    first, second = ((0, 0, h, at), (0, at, h, w)) if axis == 1 else ((0, 0, at, w),
                                                                      (at, 0, h, w))
    return (first, second) if far else (second, first)


def _choose_cut(inst: Instances, fraction: float
                ) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """The strip at the far end of the longer side; where no cell lies in it, the first of the
    other three ends that holds one (small images with a few cells)."""
    h, w = inst.image_shape
    long_axis = 1 if w >= h else 0
    options = [(long_axis, True), (long_axis, False), (1 - long_axis, True),
               (1 - long_axis, False)]
    cuts = [_cut(inst, fraction, axis, far) for axis, far in options]
    for train_window, held_window in cuts:
        if len(crop_instances(inst, held_window)):
            return train_window, held_window
    return cuts[0]


def hold_back(data: AnnotatedImages, fraction: float = 0.2) -> HeldBack:
    """Split every image of ``data`` into a training part and a held-back strip (see the module
    docstring). Raises ValueError for a fraction outside (0, 0.5]."""
    if not 0 < fraction <= 0.5:
        raise ValueError(f"hold_back: fraction must be in (0, 0.5], got {fraction}")
    train_items, held_items, windows = [], [], []
    for item in data:
        train_window, held_window = _choose_cut(item.instances, fraction)
        train_items.append(crop_annotated(item, train_window, "training part"))
        held_items.append(AnnotatedImage(item.instances, image=item.image, path=item.path,
                                         name=f"{item.name} [held back]",
                                         score_window=held_window))
        windows.append(held_window)
    train_sources = [{**s, "held_back": fraction} for s in data.sources]
    return HeldBack(AnnotatedImages(train_items, train_sources, data.class_names),
                    AnnotatedImages(held_items, [{"source": "held back", "fraction": fraction,
                                                  "images": len(held_items)}],
                                    data.class_names),
                    float(fraction), windows)


@dataclass
class Verdict:
    """Which model to use after a fine-tune, and why (scores on the held-back part)."""

    keep: str  # "fine-tuned" or "start"
    metric: str
    start: dict[str, float]
    tuned: dict[str, float]
    tuned_step: int | None
    cells: int
    views: int = 1  # the views both models segmented the held-back part with

    @property
    def kept_start(self) -> bool:
        return self.keep == "start"

    def sentence(self) -> str:
        """One line for the widget's status and the command line."""
        s, t = self.start.get(self.metric), self.tuned.get(self.metric)
        views = "" if self.views == 1 else f", {self.views} views"
        where = (f"on the held-back part ({self.cells} cell{'' if self.cells == 1 else 's'}"
                 f"{views})")
        scores = (f"{self.metric} {_fmt(s)} → {_fmt(t)}, AP50 {_fmt(self.start.get('AP50'))} → "
                  f"{_fmt(self.tuned.get('AP50'))}")
        if self.kept_start:
            return (f"Kept the start model: the fine-tuned one is worse {where} ({scores}).")
        if self.cells < FEW_CELLS:  # e.g. ISBI 2014: one cell in the strip, a tie, a worse model
            return (f"The fine-tuned model is not worse {where} ({scores}), but so few cells "
                    "say little: compare it with the start model on your next image.")
        return f"The fine-tuned model is not worse {where} ({scores})."

    def to_dict(self) -> dict[str, Any]:
        return {"keep": self.keep, "metric": self.metric, "start": self.start,
                "tuned": self.tuned, "tuned_step": self.tuned_step, "cells": self.cells,
                "views": self.views, "sentence": self.sentence()}


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def judge(start: dict[str, float], tuned: dict[str, float] | None, tuned_step: int | None,
          cells: int, metric: str = "AP", views: int = 1) -> Verdict:
    """Keep the fine-tuned model unless it scores below the start model on ``metric`` (a tie
    keeps the fine-tuned one: it learnt from the corrections and lost nothing measurable)."""
    tuned = tuned or {}
    s, t = start.get(metric), tuned.get(metric)
    worse = t is None or (s is not None and t < s)
    return Verdict("start" if worse else "fine-tuned", metric, dict(start), dict(tuned),
                   tuned_step, cells, int(views))


@dataclass
class Threshold:
    """The detection score threshold with the fewest edits on the held-back part."""

    value: float
    edits: int  # at ``value``
    edits_default: int  # at ``default``
    default: float
    cells: int

    def sentence(self) -> str:
        if self.value == self.default:
            return (f"Score threshold {self.default:.2f} stays: no other one needs fewer edits "
                    f"on the held-back part ({self.edits} for {self.cells} cells).")
        return (f"Score threshold {self.value:.2f} instead of {self.default:.2f}: "
                f"{self.edits} edits instead of {self.edits_default} on the held-back part "
                f"({self.cells} cells).")

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "edits": self.edits, "edits_default": self.edits_default,
                "default": self.default, "cells": self.cells, "sentence": self.sentence()}


def calibrate_threshold(model: Any, held: AnnotatedImages, *, default: float = 0.5,
                        device: Any = "cpu", thresholds: tuple[float, ...] = THRESHOLDS
                        ) -> Threshold:
    """The score threshold of ``thresholds`` whose detections need the fewest edits
    (:func:`~napari_iaunet.evaluation.edits.count_edits`, every missed cell drawn) inside the
    held-back windows; among equals the one nearest ``default``. ``model``: a loaded model."""
    from ..evaluation.edits import Edits, count_edits
    from ..inference.postprocess import PostprocessSettings
    from ..inference.segmenter import Segmenter

    grid = sorted({float(t) for t in (*thresholds, default)})
    seg = Segmenter(model, device=device, settings=PostprocessSettings(score_threshold=grid[0]),
                    tile_size=None, batch_size=1)
    totals = dict.fromkeys(grid, Edits())
    cells = 0
    for item in held:
        window = item.score_window or (0, 0, *item.instances.image_shape)
        found = crop_instances(seg.segment(item.load_raw()), window)
        truth = crop_instances(item.instances, window)
        cells += len(truth)
        for t in grid:  # a missed cell counts as drawn (the click candidates are not cropped)
            shown = found[np.flatnonzero(found.scores >= t)] if len(found) else found
            totals[t] = totals[t] + count_edits(truth, shown)
    best = min(grid, key=lambda t: (totals[t].total, abs(t - default)))
    return Threshold(best, totals[best].total, totals[default].total, float(default), cells)
