"""Every query of a segmentation, kept for later: the model's own candidates under a click.

A query model (IAUNet, PCTrans) predicts ~100 masks per image; the score threshold and the
duplicate filter keep a few dozen. The rest often hold a cell the post-processing dropped. This
module keeps them all, compactly, and answers "which candidate masks contain this point (or lie
in this box)?" without a new forward pass:

* :class:`CandidateSource` holds one forward pass (one image, or one tile of a large image): the
  ``(Q, h, w)`` low-resolution mask logits as float16, the best class probability and class of
  every query, and how low-res pixels map to image pixels (the same sampling as
  :func:`~napari_iaunet.inference.postprocess.postprocess`, so a candidate that passed the
  thresholds is pixel for pixel the instance the segmentation returned). For a 1080² image and
  100 queries of the bundled model that is 100 × 128 × 128 × 2 bytes = 3.3 MB.
* :class:`Candidates` is all sources of one image (tiles mapped back to image coordinates).
* :func:`candidates_at` ranks the candidates that contain a point (optionally within a box):
  the probability of every query at the point is one vectorised bilinear lookup; only the queries
  that contain it are resampled to image pixels.
* :func:`split_at`: when the best candidate is a cell already accepted (often two touching
  cells detected as one), the piece of it under the click, cut where the mask narrows.

No Qt, no napari: the edit tools call :func:`candidates_at` and show the result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .postprocess import _first_last_np, _sample_boxes_numpy, _support, _tighten

__all__ = ["RANKINGS", "Candidate", "CandidateSource", "Candidates", "best_accepted",
           "candidates_at", "overlap_with_accepted", "split_at"]

RANKINGS = ("score", "class", "maskness", "novel", "centred")
"""How :func:`candidates_at` orders candidates (``docs/plugin.md`` has the measured comparison):

* ``score``: class probability × maskness (what the post-processing thresholds);
* ``class``: class probability alone;
* ``maskness``: mean mask probability inside the mask (how sure the mask is);
* ``novel``: ``score × (1 − IoU with the accepted cell it overlaps most)`` — a candidate that
  repeats a cell already in the group sinks below those that add a new one;
* ``centred``: ``novel × exp(−d)``, ``d`` the distance from the click to the mask's centroid in
  units of √area — people click the middle of the cell they mean (the default).
"""
DEFAULT_RANKING = "centred"
DEFAULT_THRESHOLDS = (0.3, 0.5, 0.7)
DUPLICATE_IOU = 0.8  # a candidate this close to a better-ranked one is not offered again
SPLIT_MIN_DISTANCE = 10.0
"""Pixels between the centres of two cells that :func:`split_at` may separate (the
``min_distance`` of the distance-transform peaks), in image pixels. Chosen on the 24 Usiigaci
images the bundled model trained on (cells 30–60 px across; 5 and 10 px tie there, 20 and 30
recover fewer cells); Revvity-25's 40–120 px cells split the same at 10 to 30 px.
``docs/plugin.md`` has the measurement."""
SPLIT_OVERSIZE = 1.0
"""A first candidate larger than this many times the median accepted cell, and overlapping an
accepted cell at IoU ≥ :data:`SPLIT_OVERSIZE_MIN_OVERLAP`, is split too: the model's answer holds
the clicked cell and part of a neighbour. Chosen on the same 24 Usiigaci training images (687
missed cells; first candidate right: 54.9 % with no such split, 54.9 / 55.8 / 56.0 / 56.9 /
56.9 / 54.7 / 53.9 % at 2 / 1.5 / 1.2 / 1 / 0.8 / 0.5 / 0.01 with no overlap condition)."""
SPLIT_OVERSIZE_MIN_OVERLAP = 0.2
"""The overlap condition: at 1× size, 56.9 / 57.1 / 57.1 / 56.6 % at IoU ≥ 0 / 0.1 / 0.2 / 0.3
on those images. It keeps a large missed cell that touches no accepted cell whole."""


@dataclass
class CandidateSource:
    """The queries of one forward pass (an image, or one tile of it).

    Attributes:
        logits: ``(Q, h, w)`` float16 low-resolution mask logits (padding rows/columns cut off).
        class_probs: ``(Q,)`` best class probability of each query.
        class_ids: ``(Q,)`` the class of that probability (0-based).
        scale: ``(sy, sx)``; image pixel ``y`` of the window samples low-res row
            ``(y - y0 + 0.5) * sy - 0.5`` (bilinear, clamped to the border).
        window: ``(y0, x0, y1, x1)`` image pixels this pass saw (end-exclusive).
        hot_boxes: ``(Q, 4)`` first / last low-res row and column above the mask threshold
            (``-1`` where a query has none): which queries can reach a pixel at all.
        mask_threshold: probability a pixel must exceed to belong to a mask.
        geometry: ``(padded, resized, original)`` shapes of the forward pass (network input,
            the image inside it, the window in image pixels): where a click lands in the input.
        click_context: what a model trained with click queries needs to answer a click here
            (:class:`~napari_iaunet.model.decoder.ClickContext`; None for other models).
    """

    logits: np.ndarray
    class_probs: np.ndarray
    class_ids: np.ndarray
    scale: tuple[float, float]
    window: tuple[int, int, int, int]
    mask_threshold: float = 0.5
    hot_boxes: np.ndarray = field(default=None)  # type: ignore[assignment]
    geometry: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None = None
    click_context: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.logits = np.ascontiguousarray(self.logits, dtype=np.float16)
        self.class_probs = np.asarray(self.class_probs, np.float32).reshape(-1)
        self.class_ids = np.asarray(self.class_ids, np.int64).reshape(-1)
        if self.logits.ndim != 3 or len(self.class_probs) != len(self.logits):
            raise ValueError("CandidateSource: logits must be (Q, h, w) with one class "
                             "probability per query")
        if self.hot_boxes is None:
            t = self.mask_threshold
            hot = self.logits > np.float16(np.log(t / (1 - t)))
            self.hot_boxes = np.stack([*_first_last_np(hot.any(axis=2)),
                                       *_first_last_np(hot.any(axis=1))], axis=1)

    @classmethod
    def from_outputs(cls, pred_logits: object, pred_masks: object, padded_shape: tuple[int, int],
                     resized_shape: tuple[int, int], original_shape: tuple[int, int],
                     offset: tuple[int, int] = (0, 0), mask_threshold: float = 0.5
                     ) -> CandidateSource:
        """One image's network outputs (torch tensors ``(Q, C+1)`` and ``(Q, Hp/4, Wp/4)``, as
        :func:`~napari_iaunet.inference.postprocess.postprocess` takes them); ``offset`` is the
        top-left image pixel of a tile."""
        import torch

        probs = torch.as_tensor(pred_logits).float().softmax(-1)[:, :-1]
        best, label = probs.max(dim=-1)
        masks = torch.as_tensor(pred_masks).detach()
        hm, wm = masks.shape[-2:]
        hp, wp = padded_shape
        h, w = resized_shape
        H, W = (int(v) for v in original_shape)
        sy, sx = h * hm / (H * hp), w * wm / (W * wp)
        # rows / columns the image's pixels can sample (the rest is padding)
        rows = min(hm, int(np.ceil(H * sy)) + 1)
        cols = min(wm, int(np.ceil(W * sx)) + 1)
        logits = masks[:, :rows, :cols].to(torch.float16).cpu().numpy()
        y0, x0 = (int(v) for v in offset)
        geometry = ((int(hp), int(wp)), (int(h), int(w)), (H, W))
        return cls(logits, best.cpu().numpy(), label.cpu().numpy(), (sy, sx),
                   (y0, x0, y0 + H, x0 + W), mask_threshold, geometry=geometry)

    def __len__(self) -> int:
        return len(self.logits)

    @property
    def nbytes(self) -> int:
        kept = self.click_context.nbytes if self.click_context is not None else 0
        return int(self.logits.nbytes + self.class_probs.nbytes + self.class_ids.nbytes
                   + self.hot_boxes.nbytes + kept)

    def input_fraction(self, y: float, x: float) -> tuple[float, float]:
        """Image pixel ``(y, x)`` (its centre) as ``(y, x)`` fractions of the network input
        (where a click query starts, :meth:`IAUNetDecoder.click_queries`)."""
        if self.geometry is None:
            raise ValueError("this candidate source does not know its network input")
        (hp, wp), (h, w), (H, W) = self.geometry
        return ((y - self.window[0] + 0.5) * h / (H * hp),
                (x - self.window[1] + 0.5) * w / (W * wp))

    def depth(self, y: float, x: float) -> float:
        """How far pixel ``(y, x)`` lies inside the window (negative: outside)."""
        y0, x0, y1, x1 = self.window
        return float(min(y - y0, y1 - 1 - y, x - x0, x1 - 1 - x))

    def probability_at(self, y: float, x: float) -> np.ndarray:
        """``(Q,)`` mask probability of every query at image pixel ``(y, x)`` (the value the
        resampled mask has there)."""
        y0, x0 = self.window[:2]
        _, h, w = self.logits.shape
        py = _tap(y - y0, self.scale[0], h)
        px = _tap(x - x0, self.scale[1], w)
        (r0, r1, wy), (c0, c1, wx) = py, px
        with np.errstate(over="ignore"):
            corners = 1.0 / (1.0 + np.exp(-self.logits[:, [r0, r0, r1, r1], [c0, c1, c0, c1]]
                                          .astype(np.float32)))
        top = corners[:, 0] + wx * (corners[:, 1] - corners[:, 0])
        bottom = corners[:, 2] + wx * (corners[:, 3] - corners[:, 2])
        return top + wy * (bottom - top)

    def image_boxes(self) -> np.ndarray:
        """``(Q, 4)`` image-pixel boxes ``(y0, x0, y1, x1)`` that can hold each query's mask
        (a few pixels larger than the mask; ``(0, 0, 0, 0)`` for an empty query)."""
        out = np.zeros((len(self), 4), np.int64)
        y0, x0, y1, x1 = self.window
        _, h, w = self.logits.shape
        for k in np.flatnonzero(self.hot_boxes[:, 0] >= 0):
            r0, r1, c0, c1 = (int(v) for v in self.hot_boxes[k])
            a, b = _support(r0, r1, self.scale[0], h, y1 - y0)
            c, d = _support(c0, c1, self.scale[1], w, x1 - x0)
            out[k] = (y0 + a, x0 + c, y0 + b, x0 + d)
        return out

    def masks(self, queries: Sequence[int], threshold: float | None = None
              ) -> list[tuple[tuple[int, int, int, int], np.ndarray, float]]:
        """For each query: ``(box, crop, maskness)`` at image resolution (tight box, in image
        pixels), resampled as the post-processing does, thresholded at ``threshold`` (default:
        :attr:`mask_threshold`); an empty mask gives a ``(0, 0)`` crop."""
        queries = [int(q) for q in queries]
        t = self.mask_threshold if threshold is None else float(threshold)
        if t == self.mask_threshold:
            hot_boxes = self.hot_boxes[queries]
        else:
            hot = self.logits[queries] > np.float16(np.log(t / (1 - t)))
            hot_boxes = np.stack([*_first_last_np(hot.any(axis=2)),
                                  *_first_last_np(hot.any(axis=1))], axis=1)
        y0, x0, y1, x1 = self.window
        _, h, w = self.logits.shape
        boxes, live = [], []
        for j, (r0, r1, c0, c1) in enumerate(hot_boxes.tolist()):
            if r0 < 0:
                continue
            a, b = _support(r0, r1, self.scale[0], h, y1 - y0)
            c, d = _support(c0, c1, self.scale[1], w, x1 - x0)
            boxes.append((a, c, b, d))
            live.append(j)
        logits = self.logits[[queries[j] for j in live]].astype(np.float32)
        sampled = _sample_boxes_numpy(logits, list(range(len(live))), boxes, self.scale[0],
                                      self.scale[1], t)
        out = [((0, 0, 0, 0), np.zeros((0, 0), bool), 0.0)] * len(queries)
        for j, box, (mask, n, p_sum) in zip(live, boxes, sampled):
            if n == 0:
                continue
            (a, c, b, d), crop = _tighten(box, mask)
            out[j] = ((a + y0, c + x0, b + y0, d + x0), crop, p_sum / (n + 1e-6))
        return out


def _tap(coord: float, scale: float, size: int) -> tuple[int, int, float]:
    """Bilinear tap of one pixel centre on a low-res axis (as ``postprocess._axis_taps``)."""
    c = min(max((coord + 0.5) * scale - 0.5, 0.0), size - 1)
    i0 = int(np.floor(c))
    return i0, min(i0 + 1, size - 1), np.float32(c - i0)


@dataclass
class Candidates:
    """Every query mask of one image's segmentation (see the module docstring).

    ``sources`` are the forward passes (one, or one per tile), in image coordinates.
    """

    image_shape: tuple[int, int]
    sources: list[CandidateSource] = field(default_factory=list)
    # answers a click with the model's click query: ``answer(candidates, (y, x))`` → a one-query
    # CandidateSource or None (set by the Segmenter for a model trained with click queries)
    answer: Callable[[Candidates, tuple[float, float]], CandidateSource | None] | None = \
        field(default=None, repr=False)

    def __post_init__(self) -> None:
        # split_at's peak finder takes ~0.2 s to import: now (after a segmentation, in its
        # worker), not at the first click that splits
        import skimage.feature  # noqa: F401

    def __len__(self) -> int:
        return sum(len(s) for s in self.sources)

    @property
    def nbytes(self) -> int:
        """Memory the candidates hold (bytes)."""
        return sum(s.nbytes for s in self.sources)


@dataclass
class Candidate:
    """One query mask offered for a click.

    ``box`` ``(y0, x0, y1, x1)`` and boolean ``crop`` are in image pixels; ``score`` is class
    probability × ``maskness`` as in the post-processing; ``overlap`` the largest IoU with an
    accepted cell (0 when none were given) and ``overlap_cell`` that cell's label (0: none);
    ``p_point`` the mask probability at the click;
    ``centre_distance`` the distance from the click to the mask's centroid over the square root
    of its area (0 for a box); ``threshold`` the mask probability it was cut at; ``source``
    the forward pass it came from (-1: the model's answer to the click; -2: a piece split off
    the first candidate, :func:`split_at`) and ``query`` its query; ``parent`` is the candidate
    a split piece was cut from (None otherwise).
    """

    box: tuple[int, int, int, int]
    crop: np.ndarray
    score: float
    class_prob: float
    maskness: float
    class_id: int
    p_point: float
    overlap: float
    centre_distance: float
    threshold: float
    source: int
    query: int
    parent: Candidate | None = field(default=None, repr=False)
    overlap_cell: int = 0

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.crop))

    @property
    def split_from(self) -> int:
        """For a split piece whose whole shape repeats an accepted cell (IoU ≥
        :data:`DUPLICATE_IOU`): that cell's label, which committing the piece cuts it out of;
        else 0 (the piece, or any other candidate, is a new cell)."""
        p = self.parent
        return p.overlap_cell if p is not None and p.overlap >= DUPLICATE_IOU else 0

    def iou_with(self, box: Sequence[int], crop: np.ndarray) -> float:
        """Mask IoU with another mask given as its ``(y0, x0, y1, x1)`` box and boolean crop
        (0 when they do not overlap)."""
        y0, x0 = max(self.box[0], box[0]), max(self.box[1], box[1])
        y1, x1 = min(self.box[2], box[2]), min(self.box[3], box[3])
        if y0 >= y1 or x0 >= x1:
            return 0.0
        inter = int(np.count_nonzero(
            self.crop[y0 - self.box[0]:y1 - self.box[0], x0 - self.box[1]:x1 - self.box[1]]
            & crop[y0 - box[0]:y1 - box[0], x0 - box[1]:x1 - box[1]]))
        union = self.area + int(np.count_nonzero(crop)) - inter
        return inter / union if union else 0.0

    def mask(self, image_shape: tuple[int, int]) -> np.ndarray:
        """The candidate as a full-size boolean mask."""
        out = np.zeros(tuple(int(v) for v in image_shape), bool)
        y0, x0, y1, x1 = self.box
        out[y0:y1, x0:x1] = self.crop
        return out


def overlap_with_accepted(box: tuple[int, int, int, int], crop: np.ndarray,
                          accepted: Sequence[np.ndarray],
                          areas: list[np.ndarray | None] | None = None) -> float:
    """Largest mask IoU between one mask (``box`` + ``crop``) and the cells of ``accepted``
    (label images whose non-zero values are cells; overlapping cells sit in different images).
    ``areas`` (one slot per label image) caches each image's cell areas between calls."""
    return best_accepted(box, crop, accepted, areas)[0]


def best_accepted(box: tuple[int, int, int, int], crop: np.ndarray,
                  accepted: Sequence[np.ndarray],
                  areas: list[np.ndarray | None] | None = None) -> tuple[float, int]:
    """:func:`overlap_with_accepted`, and the label of the accepted cell with that IoU (0 when
    the mask overlaps none)."""
    y0, x0, y1, x1 = box
    area = int(np.count_nonzero(crop))
    best, best_cell = 0.0, 0
    for k, labels in enumerate(accepted):
        under = np.asarray(labels[y0:y1, x0:x1])[crop]
        if not under.any():
            continue
        sizes = _cell_areas(accepted, k, areas)
        inter = np.bincount(under, minlength=len(sizes))
        inter[0] = 0
        hit = np.flatnonzero(inter)
        iou = inter[hit] / (area + sizes[hit] - inter[hit])
        j = int(np.argmax(iou))
        if iou[j] > best:
            best, best_cell = float(iou[j]), int(hit[j])
    return best, best_cell


def _box_iou(a: np.ndarray, b: tuple[int, int, int, int]) -> np.ndarray:
    """IoU of ``(N, 4)`` boxes with one box (all ``(y0, x0, y1, x1)``)."""
    iy = np.clip(np.minimum(a[:, 2], b[2]) - np.maximum(a[:, 0], b[0]), 0, None)
    ix = np.clip(np.minimum(a[:, 3], b[3]) - np.maximum(a[:, 1], b[1]), 0, None)
    inter = iy * ix
    union = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def candidates_at(
    candidates: Candidates,
    point: Sequence[float] | None = None,
    *,
    box: Sequence[float] | None = None,
    accepted: Sequence[np.ndarray] = (),
    ranking: str = DEFAULT_RANKING,
    limit: int = 10,
    thresholds: Sequence[float] | None = DEFAULT_THRESHOLDS,
    component: bool = True,
    min_box_iou: float = 0.3,
    duplicate_iou: float | None = DUPLICATE_IOU,
    click_pass: bool = True,
    split_min_distance: float | None = SPLIT_MIN_DISTANCE,
    split_oversize: float | None = SPLIT_OVERSIZE,
) -> list[Candidate]:
    """The candidates under a click, best first.

    Args:
        candidates: what :meth:`Segmenter.segment` kept (``candidates=True``).
        point: ``(y, x)`` image pixel: only masks that contain it.
        box: ``(y0, x0, y1, x1)`` image pixels (a box drag): only masks whose box overlaps it
            with IoU ≥ ``min_box_iou``; with a point too, both must hold. Box candidates are
            ranked by ``box IoU × rank value``.
        accepted: label images of the cells already accepted (the group's layers): a candidate's
            ``overlap`` is its largest IoU with one of them (used by ``ranking="novel"``).
        ranking: one of :data:`RANKINGS`.
        limit: at most this many candidates (after dropping near-duplicates).
        thresholds: mask probability thresholds each query is cut at (each gives a candidate;
            None: the segmentation's own). A query's mask at 0.3 and at 0.7 can be different
            cells' outlines.
        component: with a point, keep only the connected part of a mask that holds the point
            (a query whose mask spans two cells offers the clicked one).
        duplicate_iou: a candidate whose mask overlaps a better-ranked one above this IoU is
            left out, so that each next candidate is a different shape (None keeps all).
        click_pass: with a point, and candidates that can answer clicks (a model trained with
            click queries: ``candidates.answer``), the model's answer to this click comes first
            (``source`` -1; cut at the segmentation's mask threshold first, then at the other
            ``thresholds``), then the segmentation's queries.
        split_min_distance: with a point and ``accepted``: when the first candidate repeats an
            accepted cell (IoU ≥ :data:`DUPLICATE_IOU` — the model's best answer adds nothing,
            typically a detection that merged the clicked cell with a neighbour) or is
            oversized (``split_oversize``), the piece of it under the click (:func:`split_at`
            with this ``min_distance``) is offered first, the whole candidate after it. None:
            never split.
        split_oversize: with a point and ``accepted``: also split the first candidate when its
            area exceeds this many times the median area of the accepted cells and it overlaps
            one at IoU ≥ :data:`SPLIT_OVERSIZE_MIN_OVERLAP` (an answer that holds the clicked
            cell and part of a neighbour; the piece's ``split_from`` is then 0: it is a new
            cell). None: only repeated cells are split.
    """
    from scipy import ndimage

    if ranking not in RANKINGS:
        raise ValueError(f"ranking must be one of {RANKINGS}, got {ranking!r}")
    if point is None and box is None:
        raise ValueError("candidates_at needs a point, a box or both")
    H, W = candidates.image_shape
    if point is not None:
        py, px = (int(np.floor(float(v))) for v in point)
        if not (0 <= py < H and 0 <= px < W):
            return []
    drag = None
    if box is not None:
        b = [round(float(v)) for v in box]
        drag = (min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3]))
        if drag[2] - drag[0] < 1 or drag[3] - drag[1] < 1:
            raise ValueError(f"the box {tuple(box)} is empty")
    found: list[tuple[int, float, Candidate]] = []
    areas: list[np.ndarray | None] = [None] * len(accepted)
    sources = list(enumerate(candidates.sources))
    if point is not None and click_pass and candidates.answer is not None:
        answer = candidates.answer(candidates, (py, px))
        if answer is not None:
            sources.insert(0, (-1, answer))
    for s_i, src in sources:
        wy0, wx0, wy1, wx1 = src.window
        cuts = tuple(thresholds) if thresholds else (src.mask_threshold,)
        p_point = np.ones(len(src), np.float32)
        if point is not None:
            if not (wy0 <= py < wy1 and wx0 <= px < wx1):
                continue
            p_point = src.probability_at(py, px)
        box_iou = np.ones(len(src))
        if drag is not None:
            box_iou = _box_iou(src.image_boxes(), drag)
        for t in cuts:
            live = p_point > t
            if drag is not None:
                live &= box_iou >= min_box_iou * 0.5  # loose: the tight box is checked below
            queries = np.flatnonzero(live)
            if queries.size == 0:
                continue
            for q, (mbox, crop, maskness) in zip(queries.tolist(), src.masks(queries, t)):
                if crop.size == 0:
                    continue
                distance = 0.0
                if point is not None:
                    y, x = py - mbox[0], px - mbox[1]
                    if not (0 <= y < crop.shape[0] and 0 <= x < crop.shape[1] and crop[y, x]):
                        continue
                    if component:
                        parts, n_parts = ndimage.label(crop)
                        if n_parts > 1:
                            crop = parts == parts[y, x]
                            rows = np.flatnonzero(crop.any(axis=1))
                            cols = np.flatnonzero(crop.any(axis=0))
                            crop = np.ascontiguousarray(crop[rows[0]:rows[-1] + 1,
                                                             cols[0]:cols[-1] + 1])
                            mbox = (mbox[0] + int(rows[0]), mbox[1] + int(cols[0]),
                                    mbox[0] + int(rows[-1]) + 1, mbox[1] + int(cols[-1]) + 1)
                    yy, xx = np.nonzero(crop)
                    distance = float(np.hypot(yy.mean() + mbox[0] - py, xx.mean() + mbox[1] - px)
                                     / np.sqrt(len(yy)))
                fit = 1.0
                if drag is not None:
                    fit = float(_box_iou(np.asarray([mbox]), drag)[0])
                    if fit < min_box_iou:
                        continue
                cls_p = float(src.class_probs[q])
                cand = Candidate(box=mbox, crop=crop, score=cls_p * maskness, class_prob=cls_p,
                                 maskness=maskness, class_id=int(src.class_ids[q]),
                                 p_point=float(p_point[q]) if point is not None else 0.0,
                                 overlap=0.0, centre_distance=distance, threshold=t,
                                 source=s_i, query=q)
                if accepted:
                    cand.overlap, cand.overlap_cell = best_accepted(mbox, crop, accepted, areas)
                # the click's answer first, cut where the segmentation cuts, then its other
                # cuts, then the segmentation's queries; by rank within each
                tier = 2 if s_i != -1 else 0 if t == src.mask_threshold else 1
                found.append((tier, _rank_value(cand, ranking) * fit, cand))
    found.sort(key=lambda e: (e[0], -e[1]))
    out: list[Candidate] = []
    for _, _, cand in found:
        if duplicate_iou is not None and any(cand.iou_with(o.box, o.crop) > duplicate_iou
                                             for o in out):
            continue
        out.append(cand)
        if len(out) >= limit:
            break
    if (point is not None and accepted and split_min_distance and out
            and (out[0].overlap >= DUPLICATE_IOU
                 or (split_oversize and out[0].overlap >= SPLIT_OVERSIZE_MIN_OVERLAP
                     and out[0].area > split_oversize * _median_area(accepted, areas)))):
        piece = split_at(out[0], (py, px), split_min_distance)
        if piece is not None:
            piece.overlap, piece.overlap_cell = best_accepted(piece.box, piece.crop, accepted,
                                                              areas)
            rest = [c for c in out if duplicate_iou is None
                    or c.iou_with(piece.box, piece.crop) <= duplicate_iou]
            out = [piece, *rest][:limit]
    return out


def _cell_areas(accepted: Sequence[np.ndarray], k: int,
                areas: list[np.ndarray | None] | None) -> np.ndarray:
    """Every cell's area in label image ``accepted[k]`` (indexed by label), from one pass over
    it; ``areas`` (one slot per label image, or None) caches it between calls."""
    sizes = areas[k] if areas is not None else None
    if sizes is None:
        sizes = np.bincount(np.asarray(accepted[k]).ravel())
        if areas is not None:
            areas[k] = sizes
    return sizes


def _median_area(accepted: Sequence[np.ndarray], areas: list[np.ndarray | None]) -> float:
    """The median area in pixels of the cells in label images ``accepted`` (inf with none);
    ``areas`` caches each image's cell areas as in :func:`best_accepted`."""
    sizes = np.concatenate([_cell_areas(accepted, k, areas)[1:] for k in range(len(accepted))])
    sizes = sizes[sizes > 0]
    return float(np.median(sizes)) if sizes.size else float("inf")


def split_at(cand: Candidate, point: Sequence[int], min_distance: float = SPLIT_MIN_DISTANCE
             ) -> Candidate | None:
    """The piece of ``cand`` under ``point`` (image pixels) when the mask is two or more round
    parts joined where it narrows: scikit-image's watershed of the mask's distance transform,
    seeded at its peaks at least ``min_distance`` px apart. None when the mask is one part (a
    single peak) or the click's piece is the whole mask. The piece keeps the candidate's scores;
    its ``source`` is -2, its ``parent`` the candidate, its centre distance is measured afresh."""
    from scipy import ndimage
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    y, x = int(point[0]) - cand.box[0], int(point[1]) - cand.box[1]
    if not (0 <= y < cand.crop.shape[0] and 0 <= x < cand.crop.shape[1] and cand.crop[y, x]):
        return None
    mask = np.pad(cand.crop, 1)  # the distance to the background outside the crop, too
    distance = ndimage.distance_transform_edt(mask)
    peaks = peak_local_max(distance, min_distance=max(1, round(min_distance)),
                           labels=mask.astype(np.int32), exclude_border=False)
    if len(peaks) < 2:
        return None
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    regions = watershed(-distance, markers, mask=mask)
    if regions[y + 1, x + 1] == 0:  # a part of the mask with no peak (not connected to one)
        return None
    piece = regions == regions[y + 1, x + 1]
    area = int(np.count_nonzero(piece))
    if area == cand.area:
        return None
    rows = np.flatnonzero(piece.any(axis=1))
    cols = np.flatnonzero(piece.any(axis=0))
    crop = np.ascontiguousarray(piece[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1])
    box = (cand.box[0] + int(rows[0]) - 1, cand.box[1] + int(cols[0]) - 1,
           cand.box[0] + int(rows[-1]), cand.box[1] + int(cols[-1]))
    yy, xx = np.nonzero(crop)
    distance_to_centre = float(np.hypot(yy.mean() + box[0] - int(point[0]),
                                        xx.mean() + box[1] - int(point[1])) / np.sqrt(area))
    return Candidate(box=box, crop=crop, score=cand.score, class_prob=cand.class_prob,
                     maskness=cand.maskness, class_id=cand.class_id, p_point=cand.p_point,
                     overlap=cand.overlap, overlap_cell=cand.overlap_cell,
                     centre_distance=distance_to_centre,
                     threshold=cand.threshold, source=-2, query=cand.query, parent=cand)


def _rank_value(cand: Candidate, ranking: str) -> float:
    """The value :func:`candidates_at` sorts by (larger first)."""
    if ranking == "score":
        return cand.score
    if ranking == "class":
        return cand.class_prob
    if ranking == "maskness":
        return cand.maskness
    if ranking == "novel":
        return cand.score * (1.0 - cand.overlap)
    return cand.score * (1.0 - cand.overlap) * float(np.exp(-cand.centre_distance))
