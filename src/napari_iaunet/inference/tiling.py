"""Overlapping tiles for images much larger than the model's working size, and the seam rule.

The image is cut into tiles that overlap by ``overlap`` pixels; every pixel is *owned* by exactly
one tile (the overlaps are split down the middle). After each tile is segmented:

1. an instance that does not touch an inner tile edge (one that is not the image border) and
   whose centroid lies in its tile's owned region is kept — each such cell has one owner, so none
   is duplicated;
2. an uncut instance that no kept instance already covers (IoU > 0.5) is kept — a cell whose owner
   tile only saw it cut, but that another tile saw whole, is not lost;
3. a cut instance owned by its tile is kept unless a kept instance, seen through that tile's
   window, is the same cell (IoU > 0.5) — a cell larger than any tile is kept in its best
   available form, and a whole copy from another tile wins over a cut one.

This is the LIVECell study's centre-ownership idea with a pixel-exact partition instead of a 3×3
mini-tile grid, plus the two fallbacks so that no cell is lost at a seam.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..instances import Instances

__all__ = ["Tile", "merge_tiles", "plan_tiles"]


@dataclass(frozen=True)
class Tile:
    """One tile: its pixel window and the part of the image it owns (both end-exclusive)."""

    y0: int
    x0: int
    y1: int
    x1: int
    own_y0: int
    own_x0: int
    own_y1: int
    own_x1: int

    @property
    def window(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)


def _axis_plan(length: int, size: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(start, stop, own_start, own_stop) along one axis."""
    if length <= size:
        return [(0, length, 0, length)]
    n = math.ceil((length - overlap) / (size - overlap))
    stride = (length - size) / (n - 1)
    starts = [round(i * stride) for i in range(n)]
    spans = [(s, s + size) for s in starts]
    out = []
    for i, (s, e) in enumerate(spans):
        own_s = 0 if i == 0 else (s + spans[i - 1][1]) // 2
        own_e = length if i == n - 1 else (spans[i + 1][0] + e) // 2
        out.append((s, e, own_s, own_e))
    return out


def plan_tiles(shape: tuple[int, int], tile_size: int, overlap: int) -> list[Tile]:
    """Tiles of ``tile_size`` covering ``shape`` with at least ``overlap`` pixels of overlap."""
    if tile_size <= 0 or not 0 <= overlap < tile_size:
        raise ValueError(f"need 0 <= overlap ({overlap}) < tile_size ({tile_size})")
    rows = _axis_plan(int(shape[0]), tile_size, overlap)
    cols = _axis_plan(int(shape[1]), tile_size, overlap)
    return [Tile(r[0], c[0], r[1], c[1], r[2], c[2], r[3], c[3]) for r in rows for c in cols]


def _centroids(inst: Instances) -> np.ndarray:
    out = np.zeros((len(inst), 2))
    for i, crop in enumerate(inst.crops):
        yy, xx = np.nonzero(crop)
        out[i] = (inst.boxes[i, 0] + yy.mean(), inst.boxes[i, 1] + xx.mean())
    return out


def _cut_flags(inst: Instances, tile: Tile, shape: tuple[int, int]) -> np.ndarray:
    """True where a (global-coordinate) instance touches an inner edge of ``tile``."""
    b = inst.boxes
    cut = np.zeros(len(inst), bool)
    if tile.y0 > 0:
        cut |= b[:, 0] <= tile.y0
    if tile.x0 > 0:
        cut |= b[:, 1] <= tile.x0
    if tile.y1 < shape[0]:
        cut |= b[:, 2] >= tile.y1
    if tile.x1 < shape[1]:
        cut |= b[:, 3] >= tile.x1
    return cut


def merge_tiles(
    tiles: list[Tile], results: list[Instances], image_shape: tuple[int, int]
) -> Instances:
    """Join per-tile instances (each in its tile's coordinates) into one set for the image."""
    shape = (int(image_shape[0]), int(image_shape[1]))
    parts, cut_flags, owned_flags, tile_index = [], [], [], []
    for t_i, (tile, res) in enumerate(zip(tiles, results)):
        if not len(res):
            continue
        glob = Instances(shape, res.boxes + np.array([tile.y0, tile.x0, tile.y0, tile.x0]),
                         list(res.crops), res.scores, res.class_ids)
        cy, cx = _centroids(glob).T
        owned = (cy >= tile.own_y0) & (cy < tile.own_y1) & (cx >= tile.own_x0) & (cx < tile.own_x1)
        parts.append(glob)
        cut_flags.append(_cut_flags(glob, tile, shape))
        owned_flags.append(owned)
        tile_index.append(np.full(len(glob), t_i))
    if not parts:
        return Instances.empty(shape)
    allinst = Instances.concatenate(parts)
    cut = np.concatenate(cut_flags)
    owned = np.concatenate(owned_flags)
    source = np.concatenate(tile_index)

    kept = list(np.flatnonzero(~cut & owned))
    for i in np.flatnonzero(~cut & ~owned):  # rule 2, best-scored first
        if not kept or allinst[[i]].pairwise_iou(allinst[kept]).max() <= 0.5:
            kept.append(int(i))
    for i in np.flatnonzero(cut & owned):  # rule 3
        if not kept:
            kept.append(int(i))
            continue
        if _windowed_iou(allinst[[i]], allinst[kept], tiles[source[i]]).max() <= 0.5:
            kept.append(int(i))
    merged = allinst[np.asarray(sorted(kept), dtype=np.int64)]
    order = np.argsort(-merged.scores, kind="stable")
    return merged[order].with_ids(np.arange(1, len(merged) + 1))


def _windowed_iou(one: Instances, many: Instances, tile: Tile) -> np.ndarray:
    """IoU of ``one`` with each of ``many`` clipped to ``tile``'s window (the tile's view)."""
    y0, x0, y1, x1 = tile.y0, tile.x0, tile.y1, tile.x1
    clipped = []
    for i in range(len(many)):
        by0, bx0, by1, bx1 = (int(v) for v in many.boxes[i])
        cy0, cx0, cy1, cx1 = max(by0, y0), max(bx0, x0), min(by1, y1), min(bx1, x1)
        if cy0 >= cy1 or cx0 >= cx1:
            clipped.append(((0, 0, 0, 0), np.zeros((0, 0), bool)))
            continue
        crop = many.crops[i][cy0 - by0:cy1 - by0, cx0 - bx0:cx1 - bx0]
        clipped.append(((cy0, cx0, cy1, cx1), crop))
    view = Instances(many.image_shape, np.array([b for b, _ in clipped]).reshape(-1, 4),
                     [c for _, c in clipped], ids=np.arange(1, len(many) + 1))
    return one.pairwise_iou(view)[0]
