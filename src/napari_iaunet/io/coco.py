"""Instances ⇄ COCO instance-segmentation JSON (polygons or RLE), with validation and atomic writes.

Conventions (they matter for anyone reading or writing our files):

* **Coordinates.** COCO is ``(x, y)`` = (column, row) with pixel ``(r, c)`` covering the square
  ``[c, c+1) × [r, r+1)``. Contours are traced on pixel centres, so a contour point at array
  position ``(row, col)`` is written as ``x = col + 0.5, y = row + 0.5`` — the axes are swapped
  explicitly and the vertex order is kept. ``bbox`` is ``[x, y, w, h]`` of the mask's pixels.
* **Polygons.** Outer contours from :func:`skimage.measure.find_contours` on a zero-padded crop,
  one polygon per connected part (multi-part cells get several), simplified with
  :func:`skimage.measure.approximate_polygon` at ``tolerance`` pixels (default 1 px). Parts with
  fewer than 3 vertices are dropped. The tolerance is an upper bound: when the simplified polygons
  rasterise back to IoU < ``min_iou`` (default 0.99) with the mask — small nuclei — the instance is
  simplified again at half the tolerance, then a quarter, then not at all (exact contours).
* **Holes.** COCO polygons cannot express holes. In polygon mode a mask with holes is written as
  filled polygons when these still match the mask at IoU ≥ ``min_iou`` (pin holes); otherwise it is
  written as RLE (``holes="rle"``, the default: lossless) or filled anyway (``holes="fill"``).
  A mask that yields no valid polygon at all is written as RLE, so no instance is ever lost.
* **RLE** is pycocotools' compressed RLE (``counts`` a string); reading also accepts uncompressed
  RLE (``counts`` a list of ints).
* **Categories.** Class index ``k`` (0-based) is written as category id ``k + 1``. When reading,
  class index ``k`` is the ``k``-th entry of the file's ``categories`` list (whatever its id).
* **Ids.** Reading gives instance ids ``1..N`` in annotation order per image; the original
  annotation ids are kept on the returned :class:`CocoImage` (``annotation_ids``, ``id_map``).
  Writing numbers annotations ``1..`` across the file in instance order.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..instances import Instances
from .atomic import atomic_write_json, check_can_write

__all__ = [
    "CocoImage",
    "category_names",
    "coco_to_instances",
    "crop_to_rle",
    "douglas_peucker",
    "instances_to_coco",
    "instances_to_coco_single",
    "mask_to_polygons",
    "read_coco",
    "read_predictions",
    "rle_string_to_counts",
    "to_coco_results",
    "validate_coco",
    "write_coco",
]

logger = logging.getLogger(__name__)

_MAX_PROBLEMS = 10


# =====================================================================================  writing
def _outer_contours(filled: np.ndarray) -> list[np.ndarray]:
    """Closed marching-squares contours (crop ``(row, col)``) of a hole-free mask, without the
    collinear in-between points (a lossless reduction that makes simplification fast)."""
    from skimage.measure import find_contours

    padded = np.pad(filled, 1).astype(np.uint8)
    contours = []
    for contour in find_contours(padded, 0.5):
        ring = contour[:-1] if np.array_equal(contour[0], contour[-1]) else contour
        if len(ring) < 3:
            continue
        before = ring - np.roll(ring, 1, axis=0)
        after = np.roll(ring, -1, axis=0) - ring
        turn = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
        ring = ring[turn != 0]
        if len(ring) >= 3:
            contours.append(np.vstack([ring, ring[:1]]) - 1.0)  # closed again, unpadded
    return contours


def _douglas_peucker_concat(points: np.ndarray, starts: np.ndarray, tolerance: float
                            ) -> np.ndarray:
    """Keep-mask of Douglas–Peucker on many open chains stored end to end in ``points``.

    Chain ``c`` is ``points[starts[c]:starts[c + 1]]``. All segments of all chains at one
    recursion level are processed together in numpy (a chain's last point and the next chain's
    first point are adjacent kept points, so no segment crosses chains).
    """
    n = len(points)
    keep = np.zeros(n, dtype=bool)
    if n == 0:
        return keep
    keep[starts] = True
    keep[np.append(starts[1:], n) - 1] = True
    positions = np.arange(n)
    limit = tolerance * tolerance
    while True:
        ends = np.flatnonzero(keep)
        if len(ends) < 2:
            return keep
        seg = np.minimum(np.searchsorted(ends, positions, side="right") - 1, len(ends) - 2)
        a, b = points[ends[seg]], points[ends[seg + 1]]
        ab, ap = b - a, points - a
        length2 = np.einsum("ij,ij->i", ab, ab)
        t = np.clip(np.einsum("ij,ij->i", ap, ab) / np.where(length2 > 0, length2, 1.0), 0.0, 1.0)
        offset = ap - t[:, None] * ab
        dist = np.einsum("ij,ij->i", offset, offset)
        dist[keep] = -1.0
        seg_max = np.maximum.reduceat(dist, ends[:-1])
        split = seg_max > limit
        if not split.any():
            return keep
        # first point reaching its segment's maximum, for every segment that must be split
        hit = np.flatnonzero((dist == seg_max[seg]) & split[seg])
        first = hit[np.concatenate(([True], seg[hit[1:]] != seg[hit[:-1]]))]
        keep[first] = True


def douglas_peucker(chain: np.ndarray, tolerance: float) -> np.ndarray:
    """Keep-mask of the Douglas–Peucker simplification of an open ``(K, 2)`` chain.

    Same result as :func:`skimage.measure.approximate_polygon` (every dropped point lies within
    ``tolerance`` of the simplified chain; the end points are kept), but vectorised: skimage's
    per-segment Python loop took 2–15 ms per cell contour and dominated polygon export.
    """
    return _douglas_peucker_concat(np.asarray(chain, dtype=np.float64), np.array([0]), tolerance)


def _simplify_many(contour_sets: list[list[np.ndarray]], tolerance: float
                   ) -> list[list[np.ndarray]]:
    """Simplify closed contours of many masks in one batch; COCO ``(x, y)`` polygons per mask.

    Each closed ring is split at its first point and the point farthest from it, so both halves
    are open chains; parts left with fewer than 3 vertices are dropped.
    """
    rings = [c[:-1] for contours in contour_sets for c in contours]
    if tolerance > 0 and rings:
        pieces, bounds = [], []
        for ring in rings:
            d = ring - ring[0]
            far = max(1, int(np.argmax(np.einsum("ij,ij->i", d, d))))
            pieces += [ring[: far + 1], np.vstack([ring[far:], ring[:1]])]
            bounds.append(far)
        lengths = np.array([len(p) for p in pieces])
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        keep_all = _douglas_peucker_concat(np.concatenate(pieces), starts, tolerance)
        kept = []
        for k, (ring, far) in enumerate(zip(rings, bounds)):
            first = keep_all[starts[2 * k]:starts[2 * k] + far + 1]
            second = keep_all[starts[2 * k + 1]:starts[2 * k + 1] + lengths[2 * k + 1]]
            mask = np.zeros(len(ring), dtype=bool)
            mask[: far + 1] |= first
            mask[far:] |= second[:-1]
            kept.append(ring[mask])
        rings = kept
    out: list[list[np.ndarray]] = []
    k = 0
    for contours in contour_sets:
        polygons = []
        for _ in contours:
            ring = rings[k]
            k += 1
            if len(ring) >= 3:
                # (row, col) → (x, y), explicitly; pixel centre → COCO continuous is +0.5
                polygons.append(np.stack([ring[:, 1] + 0.5, ring[:, 0] + 0.5], axis=1))
        out.append(polygons)
    return out


def mask_to_polygons(crop: np.ndarray, tolerance: float = 1.0) -> list[np.ndarray]:
    """Outer contours of a boolean crop as ``(K, 2)`` float arrays of COCO ``(x, y)`` (crop frame).

    Holes are ignored (filled); every connected part gives one polygon; parts whose simplified
    contour has fewer than 3 vertices are dropped. ``tolerance`` (px) is the Douglas–Peucker
    tolerance; 0 keeps the full marching-squares contour (minus collinear points).
    """
    from scipy import ndimage

    filled = ndimage.binary_fill_holes(np.asarray(crop, dtype=bool))
    return _simplify_many([_outer_contours(filled)], tolerance)[0]


def _rasterise_local(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    from pycocotools import mask as mask_utils

    flat = [p.ravel().tolist() for p in polygons]
    rle = mask_utils.merge(mask_utils.frPyObjects(flat, int(shape[0]), int(shape[1])))
    return mask_utils.decode(rle).astype(bool)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


def _polygons_for_all(crops: Sequence[np.ndarray], tolerance: float, min_iou: float,
                      holes: str) -> list[list[np.ndarray] | None]:
    """Polygons (crop frame) per mask, or None for masks that must be written as RLE.

    Tries ``tolerance``, then half, a quarter and 0 for the masks whose polygons rasterise back
    to IoU < ``min_iou`` (against the mask itself with ``holes="rle"``, its filled version with
    ``holes="fill"``); each round simplifies all remaining masks in one batch.
    """
    from scipy import ndimage

    filled = [ndimage.binary_fill_holes(c) for c in crops]
    targets = list(crops) if holes == "rle" else filled
    contours = [_outer_contours(f) for f in filled]
    result: list[list[np.ndarray] | None] = [None] * len(crops)
    pending = [i for i, c in enumerate(contours) if c]
    steps = [tolerance, tolerance / 2, tolerance / 4, 0.0] if tolerance > 0 else [0.0]
    for tol in steps:
        if not pending:
            break
        simplified = _simplify_many([contours[i] for i in pending], tol)
        still = []
        for i, polygons in zip(pending, simplified):
            if polygons and _iou(_rasterise_local(polygons, crops[i].shape), targets[i]) >= min_iou:
                result[i] = polygons
            elif polygons:
                still.append(i)
        pending = still
    return result  # None: real holes (holes="rle"), no valid polygon, or a shape polygons miss


def crop_to_rle(crop: np.ndarray, box: Sequence[int], image_shape: tuple[int, int]) -> dict:
    """Compressed full-image COCO RLE (``counts`` a str) of the boolean ``crop`` placed at ``box``
    ``(y0, x0, y1, x1)``; built from the runs of the crop's columns, never a full-frame mask."""
    from pycocotools import mask as mask_utils

    h, w = image_shape
    y0, x0, y1, x1 = (int(v) for v in box)
    strip = np.zeros((h, x1 - x0), dtype=bool)
    strip[y0:y1] = crop
    flat = strip.ravel(order="F")
    if flat.size == 0 or not flat.any():
        counts = [h * w]
    else:
        change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        edges = np.concatenate(([0], change, [flat.size]))
        runs = np.diff(edges).tolist()
        if flat[0]:
            runs.insert(0, 0)
        runs[0] += x0 * h
        if flat[-1]:
            runs.append((w - x1) * h)
        else:
            runs[-1] += (w - x1) * h
        counts = runs
    rle = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _image_entry(info: Mapping[str, Any] | str | None, index: int, shape: tuple[int, int]) -> dict:
    entry: dict[str, Any] = {}
    if isinstance(info, str):
        entry["file_name"] = info
    elif info is not None:
        entry.update(info)
    entry.setdefault("id", index + 1)
    entry.setdefault("file_name", "")
    for key, size in (("height", shape[0]), ("width", shape[1])):
        if key in entry and int(entry[key]) != size:
            raise ValueError(
                f"image {entry['id']} ({entry['file_name']!r}) says {key}={entry[key]}, but its "
                f"instances belong to an image of shape {shape}"
            )
        entry[key] = int(size)
    return entry


def instances_to_coco(
    instances_list: Sequence[Instances],
    image_infos: Sequence[Mapping[str, Any] | str | None] | None = None,
    category_names: Sequence[str] = ("cell",),
    mode: Literal["polygon", "rle"] = "polygon",
    tolerance: float = 1.0,
    include_scores: bool = True,
    min_iou: float = 0.99,
    holes: Literal["rle", "fill"] = "rle",
) -> dict:
    """A COCO instance-segmentation dict of several images.

    Args:
        instances_list: one :class:`Instances` per image.
        image_infos: per image a COCO image entry (``id``, ``file_name``, extra keys kept) or a file
            name; ``height``/``width`` come from the instances. Ids default to 1, 2, ...
        category_names: names of the classes; class index ``k`` becomes category id ``k + 1``.
        mode: ``"polygon"`` (simplified contours, see module docs) or ``"rle"`` (lossless).
        tolerance: polygon simplification tolerance in pixels (upper bound, see ``min_iou``).
        include_scores: write each instance's ``score`` (for model predictions; pass False for
            annotations).
        min_iou: polygons must rasterise back to at least this IoU with the mask.
        holes: ``"rle"`` writes masks with real holes as RLE, ``"fill"`` fills them.
    """
    if mode not in ("polygon", "rle"):
        raise ValueError(f"mode must be 'polygon' or 'rle', got {mode!r}")
    if holes not in ("rle", "fill"):
        raise ValueError(f"holes must be 'rle' or 'fill', got {holes!r}")
    if image_infos is None:
        image_infos = [None] * len(instances_list)
    if len(image_infos) != len(instances_list):
        raise ValueError(f"{len(instances_list)} instance sets but "
                         f"{len(image_infos)} image entries")
    categories = [{"id": k + 1, "name": str(n)} for k, n in enumerate(category_names)]
    images, annotations = [], []
    for index, (instances, info) in enumerate(zip(instances_list, image_infos)):
        entry = _image_entry(info, index, instances.image_shape)
        images.append(entry)
        if len(instances) and (instances.class_ids.min() < 0
                               or instances.class_ids.max() >= len(categories)):
            raise ValueError(
                f"image {entry['id']}: class ids {sorted(set(instances.class_ids.tolist()))} "
                f"do not "
                f"fit the {len(categories)} category names {list(category_names)}"
            )
        areas = instances.areas
        bboxes = instances.bboxes_xywh()
        all_polygons = (_polygons_for_all(instances.crops, tolerance, min_iou, holes)
                        if mode == "polygon" else [None] * len(instances))
        for i, crop in enumerate(instances.crops):
            if areas[i] == 0:
                continue
            box = instances.boxes[i]
            segmentation: list | dict | None = None
            if mode == "polygon":
                polygons = all_polygons[i]
                if polygons is not None:
                    offset = np.array([box[1], box[0]], dtype=np.float64)
                    segmentation = [(p + offset).ravel().tolist() for p in polygons]
            if segmentation is None:
                segmentation = crop_to_rle(crop, box, instances.image_shape)
            ann: dict[str, Any] = {
                "id": len(annotations) + 1,
                "image_id": entry["id"],
                "category_id": int(instances.class_ids[i]) + 1,
                "segmentation": segmentation,
                "area": int(areas[i]),
                "bbox": [float(v) for v in bboxes[i]],
                "iscrowd": 0,
            }
            if include_scores:
                ann["score"] = round(float(instances.scores[i]), 6)
            annotations.append(ann)
    return {"images": images, "annotations": annotations, "categories": categories}


def instances_to_coco_single(
    instances: Instances,
    file_name: str = "",
    image_id: int = 1,
    **kwargs: Any,
) -> dict:
    """COCO dict of one image (keyword arguments as :func:`instances_to_coco`)."""
    info = {"id": int(image_id), "file_name": str(file_name)}
    return instances_to_coco([instances], [info], **kwargs)


# =====================================================================================  validation
def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _far_outside(poly: list, height: int, width: int) -> tuple[float, float] | None:
    """A vertex lying more than one image size outside the image, or None.

    Polygons may poke a little past the border, but pycocotools rasterises every edge point by
    point: a coordinate of 1e9 takes minutes and gigabytes, 1e308 kills the process.
    """
    margin = max(height, width)
    xs, ys = np.asarray(poly[0::2], dtype=np.float64), np.asarray(poly[1::2], dtype=np.float64)
    bad = ((xs < -margin) | (xs > width + margin) | (ys < -margin) | (ys > height + margin))
    if not bad.any():
        return None
    i = int(np.argmax(bad))
    return float(xs[i]), float(ys[i])


def _segmentation_problem(seg: Any, height: int, width: int) -> str | None:
    """Why ``seg`` is not a COCO segmentation (None when it is fine, possibly degenerate)."""
    if isinstance(seg, list):
        for k, poly in enumerate(seg):
            if not isinstance(poly, list):
                return (f"polygon {k} is a {type(poly).__name__}, expected a list of numbers "
                        f"(segmentation must be a list of [x1, y1, x2, y2, ...] lists)")
            if len(poly) % 2:
                return f"polygon {k} has an odd number of coordinates ({len(poly)})"
            if not all(_is_number(v) for v in poly):
                return f"polygon {k} holds values that are not finite numbers"
            if poly:
                outside = _far_outside(poly, height, width)
                if outside is not None:
                    return (f"polygon {k} has a point at (x={outside[0]:.6g}, "
                            f"y={outside[1]:.6g}), far outside its {width}×{height} image; "
                            "coordinates are pixels of that image (x = column, y = row): "
                            "fix or remove the annotation")
        return None
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if (not isinstance(size, list) or len(size) != 2
                or not all(_is_int(v) for v in size)):
            return f"RLE 'size' must be [height, width], got {size!r}"
        if list(size) != [height, width]:
            return f"RLE size {size} does not match its image ({height}×{width})"
        if isinstance(counts, (str, bytes)):
            return None
        if isinstance(counts, list) and all(_is_int(v) and v >= 0 for v in counts):
            if sum(counts) != height * width:
                return f"uncompressed RLE counts sum to {sum(counts)}, not {height}×{width}"
            return None
        return "RLE 'counts' must be a string (compressed) or a list of non-negative ints"
    return f"segmentation is a {type(seg).__name__}; expected a polygon list or an RLE dict"


def validate_coco(coco: Any, source: str = "COCO data") -> dict:
    """Check the structure of a COCO instance-segmentation dict; raise one ``ValueError`` if broken.

    Checks: ``images``/``annotations``/``categories`` lists, image ``id``/``height``/``width``,
    unique ids, annotations referring to known images and categories, and segmentation types.
    Degenerate annotations (empty or too-short polygons) are not errors; reading skips them.
    Returns ``coco`` unchanged.
    """
    if not isinstance(coco, dict):
        raise ValueError(f"{source}: expected a JSON object with 'images', 'annotations' and "
                         f"'categories', got a {type(coco).__name__}")
    missing = [k for k in ("images", "annotations", "categories") if k not in coco]
    if missing:
        raise ValueError(f"{source}: missing key(s) {missing}; a COCO file needs 'images', "
                         f"'annotations' and 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco[key], list):
            raise ValueError(f"{source}: '{key}' must be a list, got {type(coco[key]).__name__}")
    problems: list[str] = []

    def problem(text: str) -> None:
        problems.append(text)

    images: dict[Any, tuple[int, int]] = {}
    for i, img in enumerate(coco["images"]):
        if not isinstance(img, dict) or not _is_int(img.get("id")):
            problem(f"image at index {i} has no integer 'id'")
            continue
        h, w = img.get("height"), img.get("width")
        if not (_is_int(h) and _is_int(w) and h > 0 and w > 0):
            problem(f"image id {img['id']} (index {i}) needs positive integer 'height' and 'width'")
            continue
        if img["id"] in images:
            problem(f"image id {img['id']} appears twice")
        images[img["id"]] = (h, w)
    category_ids = set()
    for i, cat in enumerate(coco["categories"]):
        if not isinstance(cat, dict) or not _is_int(cat.get("id")):
            problem(f"category at index {i} has no integer 'id'")
            continue
        if cat["id"] in category_ids:
            problem(f"category id {cat['id']} appears twice")
        category_ids.add(cat["id"])
    ann_ids = set()
    for i, ann in enumerate(coco["annotations"]):
        if len(problems) >= _MAX_PROBLEMS:
            break
        if not isinstance(ann, dict):
            problem(f"annotation at index {i} is a {type(ann).__name__}, not an object")
            continue
        name = (f"annotation id {ann.get('id')} (index {i})" if "id" in ann
                else f"annotation index {i}")
        if "id" in ann:
            if ann["id"] in ann_ids:
                problem(f"{name}: id appears twice")
            ann_ids.add(ann["id"])
        if ann.get("image_id") not in images:
            problem(f"{name}: refers to unknown image_id {ann.get('image_id')!r}")
            continue
        if ann.get("category_id") not in category_ids:
            problem(f"{name}: refers to unknown category_id {ann.get('category_id')!r}")
        if "segmentation" not in ann:
            problem(f"{name}: has no 'segmentation'")
            continue
        text = _segmentation_problem(ann["segmentation"], *images[ann["image_id"]])
        if text:
            problem(f"{name}: {text}")
        if "score" in ann and not _is_number(ann["score"]):
            problem(f"{name}: 'score' must be a finite number, got {ann['score']!r}")
    if problems:
        more = " (further checks stopped)" if len(problems) >= _MAX_PROBLEMS else ""
        if len(problems) == 1:
            raise ValueError(f"{source}: invalid COCO data: {problems[0]}")
        raise ValueError(f"{source}: invalid COCO data{more}:\n  " + "\n  ".join(problems))
    return coco


# =====================================================================================  reading
class CocoImage(tuple):
    """``(image_entry, instances)`` of one COCO image — unpacks like a 2-tuple — with extras.

    Attributes:
        image: the COCO image entry (a copy of the dict in the file).
        instances: the decoded :class:`Instances` (ids ``1..N`` in annotation order).
        annotation_ids: original COCO annotation id of each instance (aligned with ``instances``;
            ``-1`` where the annotation had no id).
        skipped: counts of annotations left out: ``{"iscrowd": n, "degenerate": m}``.
    """

    annotation_ids: np.ndarray
    skipped: dict[str, int]

    def __new__(cls, image: dict, instances: Instances, annotation_ids: np.ndarray,
                skipped: dict[str, int]) -> CocoImage:
        self = super().__new__(cls, (image, instances))
        self.annotation_ids = np.asarray(annotation_ids, dtype=np.int64)
        self.skipped = dict(skipped)
        return self

    def __getnewargs__(self) -> tuple:  # type: ignore[override]
        return (self[0], self[1], self.annotation_ids, self.skipped)

    @property
    def image(self) -> dict:
        return self[0]

    @property
    def instances(self) -> Instances:
        return self[1]

    @property
    def id_map(self) -> dict[int, int]:
        """Instance id → original COCO annotation id."""
        return dict(zip(self[1].ids.tolist(), self.annotation_ids.tolist()))


def category_names(coco: Mapping[str, Any]) -> list[str]:
    """Category names in file order (class index ``k`` ↔ ``categories[k]``)."""
    return [str(c.get("name", c["id"])) for c in coco["categories"]]


def rle_string_to_counts(counts: str | bytes) -> list[int]:
    """Run lengths of a compressed COCO RLE string (the inverse of pycocotools' string coding:
    5-bit groups, low bits first, char = group + 48, bit 0x20 = more groups follow, sign in 0x10;
    from the third run on, each value is stored relative to the run two places back)."""
    text = counts.decode("ascii") if isinstance(counts, bytes) else counts
    out: list[int] = []
    pos, n = 0, len(text)
    while pos < n:
        value, shift, more = 0, 0, True
        while more:
            if pos >= n:
                raise ValueError("truncated RLE string")
            c = ord(text[pos]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"invalid character {text[pos]!r} in RLE string")
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            pos += 1
            shift += 5
            if not more and c & 0x10:
                value |= -1 << shift
        if len(out) > 2:
            value += out[-2]
        out.append(value)
    return out


def _runs_to_crop(counts: Sequence[int], height: int, width: int
                  ) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """``(box, crop)`` of column-major run lengths (background first), touching only the mask's
    pixels — never a full-frame array."""
    runs = np.asarray(counts, dtype=np.int64)
    if runs.size and runs.min() < 0:
        raise ValueError("RLE has negative run lengths")
    if int(runs.sum()) != height * width:
        raise ValueError(f"RLE runs cover {int(runs.sum())} pixels, not {height}×{width}")
    ends = np.cumsum(runs)
    on_start, on_len = (ends - runs)[1::2], runs[1::2]
    nonzero = on_len > 0
    on_start, on_len = on_start[nonzero], on_len[nonzero]
    if on_len.size == 0:
        return None
    # flat column-major index of every mask pixel
    offsets = np.repeat(on_start - (np.cumsum(on_len) - on_len), on_len)
    flat = np.arange(int(on_len.sum()), dtype=np.int64) + offsets
    cols, rows = np.divmod(flat, height)
    y0, y1 = int(rows.min()), int(rows.max()) + 1
    x0, x1 = int(cols[0]), int(cols[-1]) + 1
    crop = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    crop[rows - y0, cols - x0] = True
    return (y0, x0, y1, x1), crop


def _decode_annotation(seg: Any, height: int, width: int) -> tuple[tuple, np.ndarray] | None:
    """``(box, crop)`` of a segmentation, decoded only inside its extent; None when empty."""
    from pycocotools import mask as mask_utils

    from ..instances import _mask_box

    if not isinstance(seg, list):  # RLE: straight from the runs, no full-frame decode
        counts = seg["counts"]
        if not isinstance(counts, list):
            counts = rle_string_to_counts(counts)
        return _runs_to_crop(counts, height, width)
    polys = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in seg if len(p) >= 6]
    if not polys:
        return None
    allpts = np.concatenate(polys)
    x0 = max(0, math.floor(allpts[:, 0].min()))
    y0 = max(0, math.floor(allpts[:, 1].min()))
    x1 = min(width, math.ceil(allpts[:, 0].max()) + 1)
    y1 = min(height, math.ceil(allpts[:, 1].max()) + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    # an integer shift rasterises identically (pycocotools scales coordinates by 5 and rounds)
    shift = np.array([x0, y0], dtype=np.float64)
    flat = [(p - shift).ravel().tolist() for p in polys]
    crop = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(flat, y1 - y0, x1 - x0)))
    box = _mask_box(crop.astype(bool))
    if box is None:
        return None
    cy0, cx0, cy1, cx1 = box
    crop = np.ascontiguousarray(crop[cy0:cy1, cx0:cx1].astype(bool))
    return (y0 + cy0, x0 + cx0, y0 + cy1, x0 + cx1), crop


def coco_to_instances(
    coco: Mapping[str, Any], image_id: int | None = None, source: str = "COCO data"
) -> list[CocoImage]:
    """Decode a COCO dict into ``(image_entry, Instances)`` pairs, one per image (file order).

    Polygons are rasterised with pycocotools inside each annotation's extent; RLE (compressed or
    not) is decoded from its runs straight into a crop; overlaps are kept. ``iscrowd`` annotations
    and degenerate ones (no polygon with 3 points, empty masks) are skipped and counted
    (``CocoImage.skipped``, and a log message). Scores come from ``score`` (1.0 when absent), class
    indices from the position of the category in ``categories``. ``image_id`` selects one image.
    """
    validate_coco(coco, source)
    images = coco["images"]
    if image_id is not None:
        images = [img for img in images if img["id"] == image_id]
        if not images:
            raise ValueError(f"{source}: no image with id {image_id}")
    class_of = {cat["id"]: k for k, cat in enumerate(coco["categories"])}
    by_image: dict[int, list[tuple[int, dict]]] = {img["id"]: [] for img in images}
    for index, ann in enumerate(coco["annotations"]):
        if ann["image_id"] in by_image:
            by_image[ann["image_id"]].append((index, ann))
    out = []
    totals = {"iscrowd": 0, "degenerate": 0}
    for img in images:
        h, w = img["height"], img["width"]
        boxes, crops, scores, classes, ann_ids = [], [], [], [], []
        skipped = {"iscrowd": 0, "degenerate": 0}
        for index, ann in by_image[img["id"]]:
            if ann.get("iscrowd", 0):
                skipped["iscrowd"] += 1
                continue
            try:
                decoded = _decode_annotation(ann["segmentation"], h, w)
            except ValueError as exc:
                raise ValueError(f"{source}: annotation id {ann.get('id')} (index {index}): "
                                 f"cannot decode its segmentation: {exc}") from exc
            if decoded is None:
                skipped["degenerate"] += 1
                continue
            box, crop = decoded
            boxes.append(box)
            crops.append(crop)
            scores.append(float(ann.get("score", 1.0)))
            classes.append(class_of[ann["category_id"]])
            ann_ids.append(int(ann["id"]) if _is_int(ann.get("id")) else -1)
        instances = Instances(
            image_shape=(h, w),
            boxes=np.asarray(boxes, np.int64).reshape(-1, 4),
            crops=crops,
            scores=np.asarray(scores, np.float32),
            class_ids=np.asarray(classes, np.int64),
            ids=np.arange(1, len(crops) + 1, dtype=np.int64),
        )
        for key in totals:
            totals[key] += skipped[key]
        out.append(CocoImage(dict(img), instances, np.asarray(ann_ids, np.int64), skipped))
    if totals["degenerate"]:
        logger.warning("%s: skipped %d degenerate annotation(s) (empty or < 3-point polygons)",
                       source, totals["degenerate"])
    if totals["iscrowd"]:
        logger.info("%s: skipped %d iscrowd annotation(s)", source, totals["iscrowd"])
    return out


def to_coco_results(coco: Mapping[str, Any]) -> list[dict]:
    """The annotations as a COCO *results* list (``image_id``, ``category_id``, RLE
    ``segmentation``, ``score``), the form ``pycocotools.COCO.loadRes`` accepts: loadRes computes
    areas with ``mask.area`` and so needs RLE, not polygons."""
    from pycocotools import mask as mask_utils

    validate_coco(coco, "results source")
    sizes = {img["id"]: (img["height"], img["width"]) for img in coco["images"]}
    results = []
    for ann in coco["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        h, w = sizes[ann["image_id"]]
        seg = ann["segmentation"]
        if isinstance(seg, list):
            polys = [p for p in seg if len(p) >= 6]
            if not polys:
                continue
            rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
        elif isinstance(seg["counts"], list):
            rle = mask_utils.frPyObjects(seg, h, w)
        else:
            rle = dict(seg)
        if isinstance(rle["counts"], bytes):
            rle["counts"] = rle["counts"].decode("ascii")
        results.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                        "segmentation": {"size": [h, w], "counts": rle["counts"]},
                        "score": float(ann.get("score", 1.0))})
    return results


# =====================================================================================  files
def _load_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"COCO file not found: {path}")
    try:
        with open(path, encoding="utf-8-sig") as fh:  # a byte-order mark is allowed
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}): "
                         f"{exc.msg}") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not a UTF-8 text file: {exc}") from exc


def read_coco(path: str | os.PathLike) -> dict:
    """Read and validate a COCO JSON file (a ``ValueError`` names the file and annotation)."""
    return validate_coco(_load_json(path), source=str(path))


def read_predictions(path: str | os.PathLike, gt: Mapping[str, Any]) -> dict:
    """Read predictions: a COCO results list (``[{image_id, category_id, segmentation, score}]``,
    given the ground truth's images and categories) or a full COCO file with scores."""
    data = _load_json(path)
    if isinstance(data, list):
        anns = []
        for i, ann in enumerate(data):
            if isinstance(ann, dict) and "id" not in ann:
                ann = {**ann, "id": i + 1}
            anns.append(ann)
        data = {"images": list(gt["images"]), "categories": list(gt["categories"]),
                "annotations": anns}
    return validate_coco(data, source=str(path))


def write_coco(path: str | os.PathLike, coco: Mapping[str, Any], overwrite: bool = False,
               indent: int | None = None) -> Path:
    """Validate ``coco`` and write it atomically; an existing file is kept unless ``overwrite``."""
    check_can_write(path, overwrite)
    validate_coco(dict(coco), source=f"data for {path}")
    return atomic_write_json(path, dict(coco), overwrite=overwrite, indent=indent)
