import numpy as np
import pytest

from napari_iaunet.inference.tiling import merge_tiles, plan_tiles
from napari_iaunet.instances import Instances


def test_owned_regions_partition_the_image():
    shape = (1000, 1500)
    tiles = plan_tiles(shape, 400, 100)
    owner = np.zeros(shape, np.int32)
    for t in tiles:
        owner[t.own_y0:t.own_y1, t.own_x0:t.own_x1] += 1
        assert t.y1 - t.y0 == 400 and t.x1 - t.x0 == 400
        assert t.y0 <= t.own_y0 < t.own_y1 <= t.y1
    assert (owner == 1).all()


def test_small_image_is_one_tile():
    tiles = plan_tiles((300, 200), 512, 128)
    assert len(tiles) == 1 and tiles[0].window == (slice(0, 300), slice(0, 200))


def _random_cells(shape, n, rmin, rmax, seed):
    rng = np.random.default_rng(seed)
    cells = Instances.empty(shape)
    while len(cells) < n:  # cells may overlap, but no two are near-copies (IoU <= 0.3)
        r = rng.uniform(rmin, rmax)
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        y0, y1 = max(0, int(cy - r)), min(shape[0], int(cy + r) + 1)
        x0, x1 = max(0, int(cx - r)), min(shape[1], int(cx + r) + 1)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        crop = ((yy - cy) / r) ** 2 + ((xx - cx) / (0.7 * r)) ** 2 <= 1
        if not crop.any():
            continue
        cand = Instances(shape, [[y0, x0, y1, x1]], [crop]).tightened()
        if len(cells) == 0 or cand.pairwise_iou(cells).max() <= 0.3:
            cells = Instances.concatenate([cells, cand])
    return cells.with_ids(np.arange(1, n + 1))


def _oracle(gt, tile):
    """A perfect model that sees only the tile: every cell clipped to the window."""
    boxes, crops = [], []
    for (y0, x0, y1, x1), crop in zip(gt.boxes, gt.crops):
        cy0, cx0 = max(y0, tile.y0), max(x0, tile.x0)
        cy1, cx1 = min(y1, tile.y1), min(x1, tile.x1)
        if cy0 < cy1 and cx0 < cx1:
            boxes.append([cy0 - tile.y0, cx0 - tile.x0, cy1 - tile.y0, cx1 - tile.x0])
            crops.append(crop[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0])
    shape = (tile.y1 - tile.y0, tile.x1 - tile.x0)
    return Instances(shape, np.array(boxes).reshape(-1, 4), crops).tightened()


def _inside(box, t, shape):
    """The cell lies in tile ``t`` without touching one of its inner edges."""
    y0, x0, y1, x1 = box
    return ((t.y0 == 0 or y0 > t.y0) and (t.x0 == 0 or x0 > t.x0)
            and (t.y1 == shape[0] or y1 < t.y1) and (t.x1 == shape[1] or x1 < t.x1))


@pytest.mark.parametrize(("tile", "overlap", "rmax"), [(256, 64, 25), (256, 64, 60), (200, 40, 70)])
def test_seam_rule_neither_loses_nor_duplicates(tile, overlap, rmax):
    gt = _random_cells((700, 900), 120, 8, rmax, seed=tile + rmax)
    tiles = plan_tiles(gt.image_shape, tile, overlap)
    merged = merge_tiles(tiles, [_oracle(gt, t) for t in tiles], gt.image_shape)
    iou = gt.pairwise_iou(merged)
    best = iou.max(axis=1)
    # every cell that fits in one tile comes back whole, exactly once
    fits = [i for i in range(len(gt))
            if any(_inside(gt.boxes[i], t, gt.image_shape) for t in tiles)]
    assert len(fits) > 0.8 * len(gt)
    assert (best[fits] == 1.0).all()
    assert len(merged) == len(gt)
    assert ((iou > 0.5).sum(axis=0) <= 1).all()  # no prediction is a copy of two cells
    assert ((iou > 0.5).sum(axis=1) == 1).all()  # no cell found twice


def test_merge_empty():
    tiles = plan_tiles((100, 100), 64, 16)
    out = merge_tiles(tiles, [Instances.empty((64, 64))] * len(tiles), (100, 100))
    assert len(out) == 0
