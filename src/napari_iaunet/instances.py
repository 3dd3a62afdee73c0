"""The one data type every part of napari-iaunet shares: a set of possibly overlapping instances.

Masks are stored compactly as per-instance boolean crops inside their bounding boxes, so a
1080×1080 image with 1000 small nuclei costs kilobytes per cell instead of a full frame each.
Dense (N, H, W) masks, label images and COCO RLE are produced on demand.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Instances"]


def _as_box(box: Sequence[int]) -> tuple[int, int, int, int]:
    y0, x0, y1, x1 = (int(v) for v in box)
    return y0, x0, y1, x1


@dataclass
class Instances:
    """Overlapping instance masks of one 2-D image.

    Attributes:
        image_shape: ``(H, W)`` of the image the masks belong to.
        boxes: ``(N, 4)`` int array of ``(y0, x0, y1, x1)`` pixel boxes, end-exclusive.
        crops: N boolean arrays, crop ``i`` has shape ``(y1 - y0, x1 - x0)`` of box ``i``.
        scores: ``(N,)`` float32 confidence (1.0 for annotations).
        class_ids: ``(N,)`` int64 class index (0-based, into the model's class names).
        ids: ``(N,)`` int64 instance ids, unique and > 0 (label values in napari layers).
    """

    image_shape: tuple[int, int]
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int64))
    crops: list[np.ndarray] = field(default_factory=list)
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    class_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __post_init__(self) -> None:
        self.image_shape = (int(self.image_shape[0]), int(self.image_shape[1]))
        n = len(self.crops)
        self.boxes = np.asarray(self.boxes, dtype=np.int64).reshape(n, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.class_ids = np.asarray(self.class_ids, dtype=np.int64).reshape(-1)
        self.ids = np.asarray(self.ids, dtype=np.int64).reshape(-1)
        if self.scores.size == 0 and n:
            self.scores = np.ones(n, np.float32)
        if self.class_ids.size == 0 and n:
            self.class_ids = np.zeros(n, np.int64)
        if self.ids.size == 0 and n:
            self.ids = np.arange(1, n + 1, dtype=np.int64)
        for name in ("scores", "class_ids", "ids"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"Instances: {name} has {len(getattr(self, name))} entries, "
                                 f"but there are {n} masks")
        h, w = self.image_shape
        for i, (crop, box) in enumerate(zip(self.crops, self.boxes)):
            y0, x0, y1, x1 = _as_box(box)
            if not (0 <= y0 <= y1 <= h and 0 <= x0 <= x1 <= w):
                raise ValueError(f"Instances: box {i} {tuple(box)} lies outside the image {h}×{w}")
            if crop.shape != (y1 - y0, x1 - x0):
                raise ValueError(f"Instances: crop {i} has shape {crop.shape}, box {tuple(box)} "
                                 f"needs {(y1 - y0, x1 - x0)}")
            if crop.dtype != bool:
                self.crops[i] = crop.astype(bool)
        if n and len(np.unique(self.ids)) != n:
            raise ValueError("Instances: ids must be unique")
        if n and self.ids.min() <= 0:
            raise ValueError("Instances: ids must be positive (0 is background in label layers)")

    # ------------------------------------------------------------------ construction
    @classmethod
    def empty(cls, image_shape: tuple[int, int]) -> Instances:
        """No instances on an image of ``image_shape``."""
        return cls(image_shape=image_shape)

    @classmethod
    def from_masks(
        cls,
        masks: Iterable[np.ndarray] | np.ndarray,
        scores: Sequence[float] | np.ndarray | None = None,
        class_ids: Sequence[int] | np.ndarray | None = None,
        ids: Sequence[int] | np.ndarray | None = None,
        image_shape: tuple[int, int] | None = None,
        drop_empty: bool = True,
    ) -> Instances:
        """Build from full-size boolean masks (an ``(N, H, W)`` array or an iterable of ``(H, W)``).

        Empty masks are dropped (with their score, class and id) unless ``drop_empty`` is False.
        """
        masks_list = list(masks)
        if image_shape is None:
            if not masks_list:
                raise ValueError("Instances.from_masks needs image_shape when there are no masks")
            image_shape = masks_list[0].shape[:2]
        n = len(masks_list)
        scores_a = np.ones(n, np.float32) if scores is None else np.asarray(scores, np.float32)
        cls_a = np.zeros(n, np.int64) if class_ids is None else np.asarray(class_ids, np.int64)
        ids_a = np.arange(1, n + 1, dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
        boxes, crops, keep = [], [], []
        for i, m in enumerate(masks_list):
            m = np.asarray(m, dtype=bool)
            if m.shape != tuple(image_shape):
                raise ValueError(f"mask {i} has shape {m.shape}, expected {tuple(image_shape)}")
            box = _mask_box(m)
            if box is None:
                if drop_empty:
                    continue
                box = (0, 0, 0, 0)
            y0, x0, y1, x1 = box
            boxes.append(box)
            crops.append(np.ascontiguousarray(m[y0:y1, x0:x1]))
            keep.append(i)
        keep_a = np.asarray(keep, dtype=np.int64)
        return cls(
            image_shape=tuple(image_shape),
            boxes=np.asarray(boxes, np.int64).reshape(-1, 4),
            crops=crops,
            scores=scores_a[keep_a] if n else scores_a,
            class_ids=cls_a[keep_a] if n else cls_a,
            ids=ids_a[keep_a] if n else ids_a,
        )

    @classmethod
    def from_label_image(cls, labels: np.ndarray) -> Instances:
        """One instance per non-zero label value of a 2-D label image; ids are the label values."""
        from scipy import ndimage

        labels = np.asarray(labels)
        if labels.ndim != 2:
            raise ValueError(f"a label image must be 2-D, got shape {labels.shape}")
        values = np.unique(labels)
        values = values[values != 0]
        slices = ndimage.find_objects(labels.astype(np.int64)) if values.size else []
        boxes, crops, ids = [], [], []
        for v in values:
            sl = slices[int(v) - 1] if int(v) - 1 < len(slices) else None
            if sl is None:
                continue
            boxes.append((sl[0].start, sl[1].start, sl[0].stop, sl[1].stop))
            crops.append(labels[sl] == v)
            ids.append(int(v))
        return cls(image_shape=labels.shape, boxes=np.asarray(boxes, np.int64).reshape(-1, 4),
                   crops=crops, ids=np.asarray(ids, np.int64))

    @classmethod
    def concatenate(cls, parts: Sequence[Instances], renumber: bool = True) -> Instances:
        """Join instance sets of one image; ids become 1..N unless ``renumber`` is False."""
        if not parts:
            raise ValueError("Instances.concatenate needs at least one part")
        shape = parts[0].image_shape
        if any(p.image_shape != shape for p in parts):
            raise ValueError("Instances.concatenate: parts belong to images of different sizes")
        n = sum(len(p) for p in parts)
        return cls(
            image_shape=shape,
            boxes=np.concatenate([p.boxes for p in parts]).reshape(-1, 4),
            crops=[c for p in parts for c in p.crops],
            scores=np.concatenate([p.scores for p in parts]),
            class_ids=np.concatenate([p.class_ids for p in parts]),
            ids=np.arange(1, n + 1) if renumber else np.concatenate([p.ids for p in parts]),
        )

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, index: int | slice | np.ndarray | Sequence[int]) -> Instances:
        """A subset (always an ``Instances``; use :meth:`mask` for one full-size mask)."""
        idx = np.arange(len(self))[index]
        idx = np.atleast_1d(idx)
        return Instances(
            image_shape=self.image_shape,
            boxes=self.boxes[idx].reshape(-1, 4),
            crops=[self.crops[i] for i in idx],
            scores=self.scores[idx],
            class_ids=self.class_ids[idx],
            ids=self.ids[idx],
        )

    def mask(self, i: int) -> np.ndarray:
        """Full-size boolean mask of instance ``i`` (position, not id)."""
        out = np.zeros(self.image_shape, dtype=bool)
        y0, x0, y1, x1 = _as_box(self.boxes[i])
        out[y0:y1, x0:x1] = self.crops[i]
        return out

    def to_dense(self) -> np.ndarray:
        """All masks as an ``(N, H, W)`` boolean array."""
        out = np.zeros((len(self), *self.image_shape), dtype=bool)
        for i, crop in enumerate(self.crops):
            y0, x0, y1, x1 = _as_box(self.boxes[i])
            out[i, y0:y1, x0:x1] = crop
        return out

    @property
    def areas(self) -> np.ndarray:
        """Pixel count of each mask."""
        return np.array([int(c.sum()) for c in self.crops], dtype=np.int64)

    def bboxes_xywh(self) -> np.ndarray:
        """Tight COCO boxes ``(x, y, w, h)`` of each mask (float64)."""
        out = np.zeros((len(self), 4), dtype=np.float64)
        for i, crop in enumerate(self.crops):
            box = _mask_box(crop)
            if box is None:
                continue
            cy0, cx0, cy1, cx1 = box
            y0, x0 = self.boxes[i, 0] + cy0, self.boxes[i, 1] + cx0
            out[i] = (x0, y0, cx1 - cx0, cy1 - cy0)
        return out

    def index_of(self, instance_id: int) -> int:
        """Position of the instance with id ``instance_id``."""
        hits = np.flatnonzero(self.ids == instance_id)
        if hits.size == 0:
            raise KeyError(f"no instance with id {instance_id}")
        return int(hits[0])

    def with_ids(self, ids: Sequence[int] | np.ndarray) -> Instances:
        """A copy with new ids."""
        return Instances(self.image_shape, self.boxes.copy(), list(self.crops), self.scores.copy(),
                         self.class_ids.copy(), np.asarray(ids, np.int64))

    def tightened(self) -> Instances:
        """Shrink every box to its mask and drop instances whose mask is empty."""
        boxes, crops, keep = [], [], []
        for i, crop in enumerate(self.crops):
            box = _mask_box(crop)
            if box is None:
                continue
            cy0, cx0, cy1, cx1 = box
            y0, x0 = int(self.boxes[i, 0]), int(self.boxes[i, 1])
            boxes.append((y0 + cy0, x0 + cx0, y0 + cy1, x0 + cx1))
            crops.append(np.ascontiguousarray(crop[cy0:cy1, cx0:cx1]))
            keep.append(i)
        k = np.asarray(keep, np.int64)
        return Instances(self.image_shape, np.asarray(boxes, np.int64).reshape(-1, 4), crops,
                         self.scores[k], self.class_ids[k], self.ids[k])

    def to_rle(self) -> list[dict]:
        """COCO run-length encodings (pycocotools format, ``counts`` as str) of every mask."""
        from pycocotools import mask as mask_utils

        rles = []
        for i in range(len(self)):
            rle = mask_utils.encode(np.asfortranarray(self.mask(i).astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            rles.append(rle)
        return rles

    def pairwise_iou(self, other: Instances | None = None) -> np.ndarray:
        """Mask IoU between every instance here and every instance of ``other`` (or self)."""
        symmetric = other is None or other is self  # compute each pair once, then mirror
        other = self if other is None else other
        if other.image_shape != self.image_shape:
            raise ValueError("pairwise_iou: instances belong to images of different sizes")
        out = np.zeros((len(self), len(other)), dtype=np.float64)
        if not len(self) or not len(other):
            return out
        a_area, b_area = self.areas, other.areas
        a, b = self.boxes, other.boxes
        y0 = np.maximum(a[:, None, 0], b[None, :, 0])
        x0 = np.maximum(a[:, None, 1], b[None, :, 1])
        y1 = np.minimum(a[:, None, 2], b[None, :, 2])
        x1 = np.minimum(a[:, None, 3], b[None, :, 3])
        meet = (y1 > y0) & (x1 > x0)  # only pairs whose boxes meet
        if symmetric:
            meet = np.triu(meet)
        for i, j in zip(*np.nonzero(meet)):
            ty0, tx0, ty1, tx1 = y0[i, j], x0[i, j], y1[i, j], x1[i, j]
            inter = np.count_nonzero(
                self.crops[i][ty0 - a[i, 0]:ty1 - a[i, 0], tx0 - a[i, 1]:tx1 - a[i, 1]]
                & other.crops[j][ty0 - b[j, 0]:ty1 - b[j, 0], tx0 - b[j, 1]:tx1 - b[j, 1]]
            )
            union = a_area[i] + b_area[j] - inter
            out[i, j] = inter / union if union else 0.0
        if symmetric:
            out = np.maximum(out, out.T)
        return out

    def __repr__(self) -> str:
        return f"Instances(n={len(self)}, image_shape={self.image_shape})"


def _mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight ``(y0, x0, y1, x1)`` box of a boolean mask, or None when it is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1
