"""Edits: deletes, adds (click or drawing) and redraws that turn a segmentation into the truth."""

from __future__ import annotations

import numpy as np

from napari_iaunet.evaluation.edits import Edits, count_edits, interior_point
from napari_iaunet.instances import Instances

SHAPE = (60, 90)


def _box(y0, x0, y1, x1):
    m = np.zeros(SHAPE, bool)
    m[y0:y1, x0:x1] = True
    return m


def test_count_edits_deletes_adds_and_redraws():
    truth = Instances.from_masks([_box(5, 5, 25, 25), _box(30, 5, 50, 25), _box(5, 40, 25, 60),
                                  _box(30, 60, 50, 80)], image_shape=SHAPE)
    shown = Instances.from_masks([
        _box(5, 5, 25, 25),    # cell 1, exact
        _box(30, 5, 50, 19),   # cell 2 at IoU 0.7: matched, redrawn
        _box(40, 35, 55, 50),  # nothing there: deleted
    ], image_shape=SHAPE)      # cells 3 and 4 missed: drawn (no candidates given)
    edits = count_edits(truth, shown)
    assert (edits.cells, edits.deletes, edits.redraws, edits.drawings, edits.clicks) == (
        4, 1, 1, 2, 0)
    assert edits.total == 4 and edits.per_100_cells == 100.0
    assert count_edits(truth, shown, redraw_iou=0.6).redraws == 0
    assert count_edits(truth, truth).total == 0
    empty = count_edits(truth, Instances.empty(SHAPE))
    assert empty.drawings == 4 and empty.total == 4
    both = edits + empty
    assert both.cells == 8 and both.total == 8
    assert both.to_dict()["per_100_cells"] == 100.0 and Edits().per_100_cells is None


def test_interior_point_is_the_deepest_pixel():
    mask = np.zeros((20, 30), bool)
    mask[2:18, 3:13] = True  # centre of the 16×10 block
    mask[8:10, 13:29] = True  # a thin arm does not pull the point
    r, c = interior_point(mask)
    assert 8 <= r <= 11 and 6 <= c <= 9 and mask[r, c]
