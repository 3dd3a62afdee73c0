"""Network outputs → :class:`Instances` in original image pixels.

Follows the reference evaluator: score = class probability × maskness (mean probability inside the
mask), a score threshold, no box NMS (overlapping cells survive), probability maps resized to the
original image with bilinear interpolation (align_corners=False) and thresholded at 0.5. Unlike the
reference, a mask-IoU duplicate filter at 0.5 (``duplicate_iou``) then drops a mask that repeats a
higher-scored one; real overlapping cells stay far below that IoU (docs/inference.md).

Two exact shortcuts keep this fast on large images:

* a query whose class probability is below the threshold cannot pass (maskness ≤ 1), so it is
  dropped before any mask is resized;
* bilinear interpolation never exceeds its neighbours, so a pixel can only reach p > 0.5 near a
  low-resolution pixel that already has p > 0.5. Each kept mask is therefore resampled only inside
  that (slightly grown) box, straight from the 1/4-resolution logits to original pixels in one
  step (the reference's two resizes, 1/4 → padded input and resized → original, fold into one).

Bilinear interpolation is separable, so each box is resampled with two gathers and two blends
(rows, then columns). On the CPU that runs in numpy, instance by instance (small arrays, no thread
pool start/stop per operation); on a GPU all boxes are padded to the largest and resampled at once,
with a single copy to the host. Both agree with ``grid_sample`` to float32 rounding
(``tests/inference/test_postprocess_fast.py``); see ``docs/performance.md`` for the figures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..instances import Instances

__all__ = ["PostprocessSettings", "assemble_instances", "cluster_queries", "mask_clusters",
           "postprocess",
           "remove_duplicates"]


@dataclass(frozen=True)
class PostprocessSettings:
    """Thresholds applied to raw predictions."""

    score_threshold: float = 0.5  # the reference evaluates AP with 0.01
    mask_threshold: float = 0.5
    # drop a mask overlapping a higher-scored one above this mask IoU (None: keep all). No two
    # annotated cells of the four shared datasets overlap above IoU 0.34, so 0.5 keeps real
    # overlaps and removes the query duplicates (docs/inference.md)
    duplicate_iou: float | None = 0.5
    min_area: int = 0  # drop masks smaller than this many pixels
    # PCTrans: merge near-duplicate queries (mask IoU at 1/4 scale above cluster_iou, same class)
    # into one instance with their averaged mask probabilities and class scores. None: as the
    # model family does (the Segmenter turns it on for PCTrans, off for the others).
    cluster_queries: bool | None = None
    cluster_iou: float = 0.7

    def __post_init__(self) -> None:
        if not 0.0 <= self.score_threshold < 1.0:
            raise ValueError("score_threshold must be in [0, 1)")
        if not 0.0 < self.mask_threshold < 1.0:
            raise ValueError("mask_threshold must be in (0, 1)")
        if self.duplicate_iou is not None and not 0.0 < self.duplicate_iou <= 1.0:
            raise ValueError("duplicate_iou must be in (0, 1] or None")
        if not 0.0 < self.cluster_iou <= 1.0:
            raise ValueError("cluster_iou must be in (0, 1]")


def postprocess(
    pred_logits: torch.Tensor,
    pred_masks: torch.Tensor,
    padded_shape: tuple[int, int],
    resized_shape: tuple[int, int],
    original_shape: tuple[int, int],
    settings: PostprocessSettings = PostprocessSettings(),
) -> Instances:
    """Turn one image's ``pred_logits (Q, C+1)`` and ``pred_masks (Q, Hp/4, Wp/4)`` into instances.

    ``padded_shape`` is the network input size, ``resized_shape`` the image inside it (top-left),
    ``original_shape`` the size the masks are returned at.
    """
    H, W = (int(v) for v in original_shape)
    q, c1 = pred_logits.shape
    num_classes = c1 - 1
    probs = pred_logits.float().softmax(-1)[:, :num_classes]
    cls_scores, flat = probs.flatten().topk(min(q, probs.numel()))
    query_idx = flat // num_classes
    labels = flat % num_classes
    keep = cls_scores > settings.score_threshold
    cls_scores, query_idx, labels = cls_scores[keep], query_idx[keep], labels[keep]
    if query_idx.numel() == 0:
        return Instances.empty((H, W))

    selected = pred_masks[query_idx].detach().float().contiguous()  # (K, Hm, Wm) mask logits
    if settings.cluster_queries and len(query_idx) > 1:
        cls_scores, labels, selected = cluster_queries(
            cls_scores, labels, selected, settings.cluster_iou, settings.mask_threshold)
    hm, wm = selected.shape[-2:]
    hp, wp = padded_shape
    h, w = resized_shape
    # original pixel centre (y + 0.5) → low-res sampling coordinate: y_l = (y + 0.5) * s - 0.5
    sy, sx = h * hm / (H * hp), w * wm / (W * wp)
    on_host = _host_path(selected.device)
    if on_host:
        logits_np = selected.numpy()  # probabilities are only computed inside the boxes
        t = settings.mask_threshold
        hot = logits_np > np.float32(np.log(t / (1 - t)))  # sigmoid(x) > t ⟺ x > log(t/(1-t))
        first_last = np.stack([*_first_last_np(hot.any(axis=2)), *_first_last_np(hot.any(axis=1))],
                              axis=1)
    else:
        low = selected.sigmoid()
        hot = low > settings.mask_threshold
        rows_lo, rows_hi = _first_last(hot.any(dim=2))  # (K,) first / last hot row, -1 if none
        cols_lo, cols_hi = _first_last(hot.any(dim=1))
        # one transfer of everything the per-instance steps need (no per-instance device syncs)
        first_last = torch.stack([rows_lo, rows_hi, cols_lo, cols_hi], dim=1).cpu().numpy()

    candidates, boxes = [], []
    for k, (r0, r1, c0, c1) in enumerate(first_last.tolist()):
        if r0 < 0:
            continue
        y0, y1 = _support(r0, r1, sy, hm, H)
        x0, x1 = _support(c0, c1, sx, wm, W)
        if y0 < y1 and x0 < x1:
            candidates.append(k)
            boxes.append((y0, x0, y1, x1))
    if not candidates:
        return Instances.empty((H, W))
    if on_host:
        sampled = _sample_boxes_numpy(logits_np, candidates, boxes, sy, sx,
                                      settings.mask_threshold)
    else:
        sampled = _sample_boxes_batched(low, candidates, boxes, sy, sx, settings.mask_threshold)

    kept_boxes, crops, scores, classes = [], [], [], []
    cls_np = cls_scores.float().cpu().numpy()
    labels_np = labels.cpu().numpy()
    for k, box, (mask, n, p_sum) in zip(candidates, boxes, sampled):
        if n == 0 or n < settings.min_area:
            continue
        maskness = p_sum / (n + 1e-6)
        score = float(cls_np[k]) * maskness
        if score <= settings.score_threshold:
            continue
        tight_box, tight_crop = _tighten(box, mask)
        kept_boxes.append(tight_box)
        crops.append(tight_crop)
        scores.append(score)
        classes.append(int(labels_np[k]))

    return assemble_instances((H, W), kept_boxes, crops, scores, classes, settings)


def assemble_instances(image_shape: tuple[int, int], boxes: list, crops: list[np.ndarray],
                       scores: list[float], classes: list[int], settings: PostprocessSettings
                       ) -> Instances:
    """Kept masks (box + crop each) → :class:`Instances` ordered by score, ids 1…N, with the
    duplicate filter of ``settings`` applied (shared by every model family)."""
    if not crops:
        return Instances.empty(image_shape)
    order = np.argsort(-np.asarray(scores), kind="stable")
    inst = Instances(
        image_shape=image_shape,
        boxes=np.asarray(boxes, np.int64)[order],
        crops=[crops[i] for i in order],
        scores=np.asarray(scores, np.float32)[order],
        class_ids=np.asarray(classes, np.int64)[order],
        ids=np.arange(1, len(crops) + 1),
    )
    if settings.duplicate_iou is not None:
        inst = remove_duplicates(inst, settings.duplicate_iou)
        inst = inst.with_ids(np.arange(1, len(inst) + 1))
    return inst


def _tighten(box: tuple[int, int, int, int], mask: np.ndarray
             ) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """Shrink ``box`` to the non-empty ``mask`` it holds; returns the box and the cropped mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    y0, x0 = box[0], box[1]
    return (y0 + r0, x0 + c0, y0 + r1, x0 + c1), np.ascontiguousarray(mask[r0:r1, c0:c1])


def _host_path(device: torch.device) -> bool:
    """Resample masks with numpy on the host (CPU tensors) or batched on the device (GPU)."""
    return device.type == "cpu"


def _support(first: int, last: int, scale: float, low_size: int, full_size: int) -> tuple[int, int]:
    """Original-pixel range whose samples can touch low-res pixels ``first - 1 .. last + 1``."""
    lo = (first - 1 + 0.5) / scale - 0.5 if first > 0 else 0.0
    hi = (last + 1 + 0.5) / scale - 0.5 if last < low_size - 1 else float(full_size)
    return max(0, int(np.floor(lo))), min(full_size, int(np.ceil(hi)) + 1)


def _first_last(flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last True index along the last axis of ``(K, L)`` flags; -1 where none."""
    length = flags.shape[-1]
    any_true = flags.any(dim=-1)
    first = flags.int().argmax(dim=-1)
    last = length - 1 - flags.flip(-1).int().argmax(dim=-1)
    none = torch.full_like(first, -1)
    return torch.where(any_true, first, none), torch.where(any_true, last, none)


def _first_last_np(flags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """numpy version of :func:`_first_last`."""
    any_true = flags.any(axis=-1)
    first = np.where(any_true, flags.argmax(axis=-1), -1)
    last = np.where(any_true, flags.shape[-1] - 1 - flags[:, ::-1].argmax(axis=-1), -1)
    return first, last


def _axis_taps(starts: np.ndarray, stops: np.ndarray, scale: float, size: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Linear-interpolation taps of the original pixels ``starts[k] .. stops[k] - 1`` of every box
    on a low-res axis of ``size``, concatenated: ``(i0, i1, w1, offsets)`` with
    ``value = (1 - w1) * low[i0] + w1 * low[i1]``; box ``k`` owns ``offsets[k]:offsets[k + 1]``.
    The coordinate is ``(y + 0.5) * scale - 0.5`` clamped to ``[0, size - 1]`` (grid_sample's
    ``align_corners=False``, ``padding_mode="border"``)."""
    lengths = stops - starts
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    pix = np.arange(offsets[-1]) - np.repeat(offsets[:-1] - starts, lengths)
    coord = np.clip((pix + 0.5) * scale - 0.5, 0.0, size - 1)
    i0 = np.floor(coord).astype(np.intp)
    w1 = (coord - i0).astype(np.float32)
    i1 = np.minimum(i0 + 1, size - 1)
    return i0, i1, w1, offsets


def _sample_boxes_numpy(logits: np.ndarray, candidates: list[int],
                        boxes: list[tuple[int, int, int, int]], sy: float, sx: float,
                        threshold: float) -> list[tuple[np.ndarray, int, float]]:
    """Per box: ``(mask, pixel count, sum of probabilities inside the mask)`` from mask logits.

    Bilinear interpolation is separable: each box is two gathers and two blends (rows, then
    columns) of the low-res probabilities, in numpy. Small per-instance work stays on one thread,
    free of the thread-pool start/stop cost every small torch op pays (which dominated the
    per-instance ``grid_sample`` loop on a busy 2-core machine).
    """
    out = []
    hm, wm = logits.shape[-2:]
    geo = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    ty0, ty1, twy, toy = _axis_taps(geo[:, 0], geo[:, 2], sy, hm)
    tx0, tx1, twx, tox = _axis_taps(geo[:, 1], geo[:, 3], sx, wm)
    for j, k in enumerate(candidates):
        iy0, iy1, wy = ty0[toy[j]:toy[j + 1]], ty1[toy[j]:toy[j + 1]], twy[toy[j]:toy[j + 1]]
        ix0, ix1, wx = tx0[tox[j]:tox[j + 1]], tx1[tox[j]:tox[j + 1]], twx[tox[j]:tox[j + 1]]
        r_lo, r_hi = int(iy0[0]), int(iy1[-1]) + 1
        c_lo, c_hi = int(ix0[0]), int(ix1[-1]) + 1
        band = logits[k, r_lo:r_hi, c_lo:c_hi]
        with np.errstate(over="ignore"):  # exp(-x) = inf for x < -88 gives p = 0, as it should
            band = 1.0 / (1.0 + np.exp(-band))  # probabilities of the low-res pixels in use
        top, bottom = band[iy0 - r_lo], band[iy1 - r_lo]
        rows = top + wy[:, None] * (bottom - top)  # (bh, columns used)
        left, right = rows[:, ix0 - c_lo], rows[:, ix1 - c_lo]
        p = left + wx * (right - left)
        mask = p > threshold
        n = int(np.count_nonzero(mask))
        p_sum = float(p.sum(where=mask, dtype=np.float64)) if n else 0.0
        out.append((mask, n, p_sum))
    return out


def _sample_boxes_batched(low: torch.Tensor, candidates: list[int],
                          boxes: list[tuple[int, int, int, int]], sy: float, sx: float,
                          threshold: float) -> list[tuple[np.ndarray, int, float]]:
    """The same as :func:`_sample_boxes_numpy` for all boxes at once on ``low``'s device (GPU):
    boxes are padded to the largest, sampled with two batched gathers, thresholded, and copied to
    the host in one transfer."""
    device = low.device
    hm, wm = low.shape[-2:]
    geo = np.asarray(boxes, dtype=np.int64)
    bh, bw = int((geo[:, 2] - geo[:, 0]).max()), int((geo[:, 3] - geo[:, 1]).max())

    def taps(starts: np.ndarray, stops: np.ndarray, scale: float, size: int, span: int):
        pix = starts[:, None] + np.arange(span)[None, :]
        coord = np.clip((pix + 0.5) * scale - 0.5, 0.0, size - 1)
        i0 = np.floor(coord).astype(np.int64)
        w1 = (coord - i0).astype(np.float32)
        valid = pix < stops[:, None]
        i1 = np.minimum(i0 + 1, size - 1)
        return (torch.from_numpy(i0).to(device), torch.from_numpy(i1).to(device),
                torch.from_numpy(w1).to(device), torch.from_numpy(valid).to(device))

    iy0, iy1, wy, vy = taps(geo[:, 0], geo[:, 2], sy, hm, bh)  # (K, bh)
    ix0, ix1, wx, vx = taps(geo[:, 1], geo[:, 3], sx, wm, bw)  # (K, bw)
    sel = low[torch.as_tensor(candidates, device=device)]  # (K, hm, wm)
    gather_rows = lambda idx: sel.gather(1, idx[:, :, None].expand(-1, -1, wm))  # noqa: E731
    top = gather_rows(iy0)
    rows = top + wy[:, :, None] * (gather_rows(iy1) - top)  # (K, bh, wm)
    gather_cols = lambda idx: rows.gather(2, idx[:, None, :].expand(-1, bh, -1))  # noqa: E731
    left = gather_cols(ix0)
    p = left + wx[:, None, :] * (gather_cols(ix1) - left)  # (K, bh, bw)
    mask = (p > threshold) & vy[:, :, None] & vx[:, None, :]
    counts = mask.sum(dim=(1, 2))
    sums = (p.double() * mask).sum(dim=(1, 2))
    mask_np, counts_np, sums_np = mask.cpu().numpy(), counts.cpu().numpy(), sums.cpu().numpy()
    out = []
    for i, (y0, x0, y1, x1) in enumerate(boxes):
        out.append((mask_np[i, : y1 - y0, : x1 - x0], int(counts_np[i]), float(sums_np[i])))
    return out


def cluster_queries(scores: torch.Tensor, labels: torch.Tensor, mask_logits: torch.Tensor,
                    iou_threshold: float, mask_threshold: float = 0.5
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge near-duplicate queries (PCTrans): ``scores (K,)`` sorted high to low, ``labels (K,)``,
    ``mask_logits (K, h, w)``.

    Each cluster of :func:`mask_clusters` becomes one query with the mean class score and the
    mean mask probabilities (returned as logits). Returns the merged
    ``(scores, labels, mask_logits)``.
    """
    prob = mask_logits.float().sigmoid()
    clusters = [members for _, members in mask_clusters(
        scores.float().cpu().numpy(), labels, prob, iou_threshold, mask_threshold)]
    if len(clusters) == len(scores):
        return scores, labels, mask_logits
    device = mask_logits.device
    new_scores = torch.stack([scores[torch.as_tensor(m, device=device)].mean() for m in clusters])
    new_labels = labels[torch.as_tensor([int(m[0]) for m in clusters], device=device)]
    mean_prob = torch.stack([prob[torch.as_tensor(m, device=device)].mean(0) for m in clusters])
    mean_prob = mean_prob.clamp(1e-6, 1 - 1e-6)
    return new_scores, new_labels, torch.log(mean_prob / (1 - mean_prob)).contiguous()


def mask_clusters(scores: np.ndarray, labels: torch.Tensor, mask_prob: torch.Tensor,
                  iou_threshold: float, mask_threshold: float = 0.5
                  ) -> list[tuple[int, np.ndarray]]:
    """Greedy mask clustering of queries (``scores (K,)``, ``labels (K,)``, mask probabilities
    ``(K, h, w)``): in score order, each query not yet taken gathers every untaken query of its
    class whose binary mask (probability > ``mask_threshold``) overlaps its own with IoU above
    ``iou_threshold``. Returns ``(leader, members)`` per cluster, leader first in score order;
    ``members`` are sorted indices and include the leader. Shared by PCTrans' query merge
    (:func:`cluster_queries`) and the merge of mirror views (:mod:`.flips`)."""
    hot = (mask_prob > mask_threshold).flatten(1).float()
    inter = hot @ hot.T
    area = hot.sum(1)
    iou = inter / (area[:, None] + area[None, :] - inter).clamp(min=1.0)
    linked = ((iou > iou_threshold) & (labels[:, None] == labels[None, :])).cpu().numpy()
    taken = np.zeros(len(scores), dtype=bool)
    clusters: list[tuple[int, np.ndarray]] = []
    for i in np.argsort(-scores, kind="stable"):
        if taken[i]:
            continue
        members = np.union1d(np.flatnonzero(linked[i] & ~taken), [i])
        taken[members] = True
        clusters.append((int(i), members))
    return clusters


def remove_duplicates(instances: Instances, iou_threshold: float) -> Instances:
    """Greedy mask-IoU suppression: drop an instance overlapping a higher-scored one above IoU."""
    if len(instances) < 2:
        return instances
    order = np.argsort(-instances.scores, kind="stable")
    ranked = instances[order]
    over = ranked.pairwise_iou() > iou_threshold
    dropped = np.zeros(len(ranked), bool)
    for i in range(len(ranked)):
        if not dropped[i]:  # a kept instance drops every lower-scored one it overlaps
            dropped[i + 1:] |= over[i, i + 1:]
    return ranked[np.flatnonzero(~dropped)]
