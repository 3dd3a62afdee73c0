"""Edits: what a person must do to turn a segmentation into the ground truth.

The unit an annotator cares about. Detections and cells are matched one-to-one at mask IoU ≥ 0.5
(:func:`~napari_iaunet.evaluation.metrics.match_instances`); then

* every unmatched detection is one **delete**;
* every unmatched cell is one **add**: a **click** when the model's own candidate under the
  cell's most interior pixel recovers it (first candidate at IoU ≥ 0.5, see
  :func:`~napari_iaunet.inference.candidates.candidates_at`), else a **drawing**;
* every matched cell (or clicked one) below ``redraw_iou`` is one **redraw**.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from ..instances import Instances
from .metrics import match_instances, pairwise_iou

__all__ = ["REDRAW_IOU", "Edits", "count_edits", "interior_point"]

REDRAW_IOU = 0.75  # a matched cell whose mask fits worse than this is redrawn


@dataclass
class Edits:
    """Edit counts for one or more images (they add up with ``+``)."""

    cells: int = 0
    deletes: int = 0
    clicks: int = 0
    drawings: int = 0
    redraws: int = 0

    @property
    def total(self) -> int:
        return self.deletes + self.clicks + self.drawings + self.redraws

    @property
    def per_100_cells(self) -> float | None:
        return 100.0 * self.total / self.cells if self.cells else None

    def __add__(self, other: Edits) -> Edits:
        return Edits(*(a + b for a, b in zip(asdict(self).values(), asdict(other).values())))

    def to_dict(self) -> dict[str, Any]:
        per = self.per_100_cells
        return {**asdict(self), "total": self.total,
                "per_100_cells": None if per is None else round(per, 2)}


def interior_point(mask: np.ndarray) -> tuple[int, int]:
    """The most interior pixel of a mask (maximum of its distance transform)."""
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    r, c = np.unravel_index(int(np.argmax(dist)), mask.shape)
    return int(r), int(c)


def count_edits(truth: Instances, shown: Instances, candidates: Any = None,
                redraw_iou: float = REDRAW_IOU) -> Edits:
    """The edits that turn the detections ``shown`` into ``truth`` (see the module docstring).
    ``candidates``: the :class:`~napari_iaunet.inference.candidates.Candidates` of the same
    segmentation (None: every missed cell is drawn)."""
    iou = pairwise_iou(truth, shown) if len(truth) and len(shown) else np.zeros(
        (len(truth), len(shown)))
    rows, cols = match_instances(iou, 0.5)
    edits = Edits(cells=len(truth), deletes=len(shown) - len(cols),
                  redraws=int(np.count_nonzero(iou[rows, cols] < redraw_iou)))
    missed = np.setdiff1d(np.arange(len(truth)), rows)
    if candidates is not None and len(missed):
        from ..inference.candidates import candidates_at
        from ..layers import split_into_layers

        accepted = split_into_layers(shown)
        for i in missed.tolist():
            box, crop = truth.boxes[i], truth.crops[i]
            r, c = interior_point(crop)
            picks = candidates_at(candidates, (box[0] + r, box[1] + c), accepted=accepted,
                                  limit=1)
            fit = picks[0].iou_with(box, crop) if picks else 0.0
            if fit >= 0.5:
                edits.clicks += 1
                edits.redraws += int(fit < redraw_iou)
            else:
                edits.drawings += 1
    else:
        edits.drawings = len(missed)
    return edits
