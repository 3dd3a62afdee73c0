"""Instances ⇄ a group of non-overlapping label images (napari Labels layers), in pure numpy.

napari's Labels layer holds one label per pixel, so overlapping instances cannot share a layer.
:func:`split_into_layers` colours the overlap graph greedily (DSATUR) so that instances sharing a
pixel land in different label images and the number of images stays small (2–4 on Revvity-like
images); label values are the instance ids, unique across the whole group. :func:`merge_layers`
turns such a group back into :class:`~napari_iaunet.instances.Instances`, exactly:
``merge_layers(split_into_layers(x))`` gives every mask of ``x`` with its id.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .instances import Instances

__all__ = [
    "assign_layers",
    "features_table",
    "free_layer",
    "label_dtype",
    "merge_layers",
    "overlap_pairs",
    "split_into_layers",
]

_CHUNK = 1024  # rows of the box-overlap matrix computed at once (bounded memory)


def overlap_pairs(instances: Instances) -> np.ndarray:
    """``(E, 2)`` int array of index pairs ``i < j`` whose masks share at least one pixel.

    Boxes prune the candidates (vectorised, in chunks); only box-overlapping pairs compare crops.
    """
    n = len(instances)
    if n < 2:
        return np.zeros((0, 2), dtype=np.int64)
    b = instances.boxes
    pairs = []
    for start in range(0, n, _CHUNK):
        rows = b[start:start + _CHUNK]
        hit = ((rows[:, None, 0] < b[None, :, 2]) & (b[None, :, 0] < rows[:, None, 2])
               & (rows[:, None, 1] < b[None, :, 3]) & (b[None, :, 1] < rows[:, None, 3]))
        hit &= np.arange(start, start + len(rows))[:, None] < np.arange(n)[None, :]
        i, j = np.nonzero(hit)
        if i.size:
            pairs.append(np.stack([i + start, j], axis=1))
    if not pairs:
        return np.zeros((0, 2), dtype=np.int64)
    candidates = np.concatenate(pairs)
    keep = np.zeros(len(candidates), dtype=bool)
    crops = instances.crops
    for k, (i, j) in enumerate(candidates.tolist()):
        ay0, ax0 = b[i, 0], b[i, 1]
        by0, bx0 = b[j, 0], b[j, 1]
        y0, x0 = max(ay0, by0), max(ax0, bx0)
        y1, x1 = min(b[i, 2], b[j, 2]), min(b[i, 3], b[j, 3])
        keep[k] = np.any(crops[i][y0 - ay0:y1 - ay0, x0 - ax0:x1 - ax0]
                         & crops[j][y0 - by0:y1 - by0, x0 - bx0:x1 - bx0])
    return candidates[keep].astype(np.int64)


def _dsatur(n: int, edges: np.ndarray) -> np.ndarray:
    """Greedy DSATUR colouring: most saturated (then highest degree) vertex first, lowest colour."""
    colour = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return colour
    colour[:] = 0  # vertices without edges all take colour 0
    if not len(edges):
        return colour
    both = np.concatenate([edges, edges[:, ::-1]])
    order = np.argsort(both[:, 0], kind="stable")
    both = both[order]
    starts = np.searchsorted(both[:, 0], np.arange(n + 1))
    neighbours = [both[starts[v]:starts[v + 1], 1].tolist() for v in range(n)]
    degree = np.diff(starts)
    active = np.flatnonzero(degree > 0)
    colour[active] = -1
    seen: list[set[int]] = [set() for _ in range(n)]
    heap = [(0, -int(degree[v]), int(v)) for v in active]
    heapq.heapify(heap)
    while heap:
        neg_sat, _, v = heapq.heappop(heap)
        if colour[v] >= 0 or -neg_sat != len(seen[v]):
            continue  # already coloured, or a stale entry (a fresher one is in the heap)
        c = 0
        while c in seen[v]:
            c += 1
        colour[v] = c
        for u in neighbours[v]:
            if colour[u] < 0 and c not in seen[u]:
                seen[u].add(c)
                heapq.heappush(heap, (-len(seen[u]), -int(degree[u]), u))
    return colour


def assign_layers(instances: Instances) -> np.ndarray:
    """Layer index (0, 1, ...) of every instance so that overlapping instances never share one."""
    return _dsatur(len(instances), overlap_pairs(instances))


def label_dtype(max_id: int, smallest: bool = False) -> np.dtype:
    """dtype for label images holding ids up to ``max_id``: uint32 (uint64 beyond), or the
    smallest unsigned type when ``smallest`` (uint32 leaves room for ids of cells added later)."""
    candidates = (np.uint8, np.uint16, np.uint32, np.uint64) if smallest else (np.uint32, np.uint64)
    for dt in candidates:
        if max_id <= np.iinfo(dt).max:
            return np.dtype(dt)
    raise ValueError(f"instance id {max_id} does not fit a 64-bit label image")


def split_into_layers(
    instances: Instances, dtype: np.dtype | str | None = None, min_layers: int = 1
) -> list[np.ndarray]:
    """Label images (``image_shape`` each) that together hold every instance, without overlaps.

    Overlapping instances go to different images (greedy DSATUR colouring of the overlap graph);
    the label value of an instance is its id. ``dtype`` defaults to uint32 (uint64 for huge ids);
    ``"smallest"`` picks the smallest unsigned type that fits. Always returns at least
    ``min_layers`` images (empty ones when there are no instances). Empty masks are not
    representable and are left out.
    """
    max_id = int(instances.ids.max()) if len(instances) else 0
    if dtype is None or (isinstance(dtype, str) and dtype == "smallest"):
        dt = label_dtype(max_id, smallest=dtype is not None)
    else:
        dt = np.dtype(dtype)
        if max_id > np.iinfo(dt).max:
            raise ValueError(f"instance id {max_id} does not fit label dtype {dt}")
    layer = assign_layers(instances)
    n_layers = max(int(layer.max()) + 1 if len(layer) else 0, int(min_layers))
    images = [np.zeros(instances.image_shape, dtype=dt) for _ in range(n_layers)]
    for i, crop in enumerate(instances.crops):
        y0, x0, y1, x1 = (int(v) for v in instances.boxes[i])
        images[int(layer[i])][y0:y1, x0:x1][crop] = instances.ids[i]
    return images


def _label_pieces(labels: np.ndarray) -> list[tuple[int, tuple[int, int, int, int], np.ndarray]]:
    """``(value, box, crop)`` of every non-zero value of one label image."""
    from scipy import ndimage

    if labels.dtype.kind not in "ui":
        raise ValueError(f"label images must hold integers, got dtype {labels.dtype}")
    if labels.size == 0 or not labels.any():
        return []
    if labels.min() < 0:
        raise ValueError("label images must not hold negative values")
    max_value = int(labels.max())
    if max_value <= max(labels.size, 1 << 16):
        lookup = None
        dense = labels.astype(np.intp, copy=False)
    else:  # huge label values: renumber to 1..K first so find_objects stays small
        lookup, inverse = np.unique(labels, return_inverse=True)
        dense = inverse.reshape(labels.shape).astype(np.intp)
        if lookup[0] != 0:
            lookup = np.concatenate(([0], lookup))
            dense += 1
    pieces = []
    for k, sl in enumerate(ndimage.find_objects(dense)):
        if sl is None:
            continue
        value = k + 1 if lookup is None else int(lookup[k + 1])
        crop = dense[sl] == k + 1
        pieces.append((value, (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop), crop))
    return pieces


def merge_layers(
    label_images: Sequence[np.ndarray],
    scores: Mapping[int, float] | None = None,
    class_ids: Mapping[int, int] | None = None,
    features: Mapping[str, Any] | None = None,
    default_score: float = 1.0,
    default_class: int = 0,
) -> Instances:
    """Instances from a group of label images; label values become ids (sorted ascending).

    A value found in several images (or in disconnected pieces) is one instance: the union of its
    pixels. Scores and class ids come from ``scores`` / ``class_ids`` (id → value), else from a
    ``features`` table with ``id`` (or ``index``) and ``score`` / ``class`` columns, else the
    defaults (e.g. for cells drawn by hand).
    """
    arrays = [np.asarray(a) for a in label_images]
    if not arrays:
        raise ValueError("merge_layers needs at least one label image")
    shape = arrays[0].shape
    for k, a in enumerate(arrays):
        if a.ndim != 2 or a.shape != shape:
            raise ValueError(f"label image {k} has shape {a.shape}; "
                             f"all must be 2-D of shape {shape}")
    found: dict[int, list[tuple[tuple[int, int, int, int], np.ndarray]]] = {}
    for a in arrays:
        for value, box, crop in _label_pieces(a):
            found.setdefault(value, []).append((box, crop))
    ids = sorted(found)
    boxes, crops = [], []
    for v in ids:
        parts = found[v]
        if len(parts) == 1:
            box, crop = parts[0]
        else:
            box = (min(p[0][0] for p in parts), min(p[0][1] for p in parts),
                   max(p[0][2] for p in parts), max(p[0][3] for p in parts))
            crop = np.zeros((box[2] - box[0], box[3] - box[1]), dtype=bool)
            for (y0, x0, y1, x1), part in parts:
                crop[y0 - box[0]:y1 - box[0], x0 - box[1]:x1 - box[1]] |= part
        boxes.append(box)
        crops.append(crop)
    score_of, class_of = _lookup_tables(features)
    if scores is not None:
        score_of.update({int(k): float(v) for k, v in scores.items()})
    if class_ids is not None:
        class_of.update({int(k): int(v) for k, v in class_ids.items()})
    return Instances(
        image_shape=shape,
        boxes=np.asarray(boxes, np.int64).reshape(-1, 4),
        crops=crops,
        scores=np.asarray([score_of.get(v, default_score) for v in ids], np.float32),
        class_ids=np.asarray([class_of.get(v, default_class) for v in ids], np.int64),
        ids=np.asarray(ids, np.int64),
    )


def _lookup_tables(features: Mapping[str, Any] | None) -> tuple[dict[int, float], dict[int, int]]:
    if features is None:
        return {}, {}
    key = "id" if "id" in features else "index" if "index" in features else None
    if key is None:
        return {}, {}
    ids = [int(v) for v in np.asarray(features[key]).tolist()]
    score_of = ({i: float(s) for i, s in zip(ids, np.asarray(features["score"]).tolist())}
                if "score" in features else {})
    class_of = ({i: int(c) for i, c in zip(ids, np.asarray(features["class"]).tolist())}
                if "class" in features else {})
    return score_of, class_of


def features_table(
    instances: Instances, class_names: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """Columns for a napari Labels ``features`` table: ``index`` (= id; napari maps label values to
    rows through this column), ``id``, ``score``, ``area``, ``class`` (and ``class_name``)."""
    table = {
        "index": instances.ids.copy(),
        "id": instances.ids.copy(),
        "score": instances.scores.astype(np.float32),
        "area": instances.areas,
        "class": instances.class_ids.copy(),
    }
    if class_names is not None:
        names = list(class_names)
        table["class_name"] = np.asarray(
            [names[c] if 0 <= c < len(names) else str(c) for c in instances.class_ids.tolist()],
            dtype=object,
        )
    return table


def free_layer(
    label_images: Sequence[np.ndarray], box: Sequence[int], crop: np.ndarray
) -> int:
    """Index of the first label image where the mask ``crop`` at ``box`` (y0, x0, y1, x1) covers
    only background; ``len(label_images)`` when every image has a conflict (add a new one)."""
    y0, x0, y1, x1 = (int(v) for v in box)
    crop = np.asarray(crop, dtype=bool)
    for k, labels in enumerate(label_images):
        if not np.any(np.asarray(labels)[y0:y1, x0:x1][crop]):
            return k
    return len(label_images)
