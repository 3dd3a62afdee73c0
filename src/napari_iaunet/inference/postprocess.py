"""Network outputs → :class:`Instances` in original image pixels.

Follows the reference evaluator: score = class probability × maskness (mean probability inside the
mask), a score threshold, no NMS (overlapping cells survive) unless a mask-IoU duplicate filter is
asked for, probability maps resized to the original image with bilinear interpolation
(align_corners=False) and thresholded at 0.5.

Two exact shortcuts keep this fast on large images:

* a query whose class probability is below the threshold cannot pass (maskness ≤ 1), so it is
  dropped before any mask is resized;
* bilinear interpolation never exceeds its neighbours, so a pixel can only reach p > 0.5 near a
  low-resolution pixel that already has p > 0.5. Each kept mask is therefore resampled only inside
  that (slightly grown) box, straight from the 1/4-resolution logits to original pixels in one
  step (the reference's two resizes, 1/4 → padded input and resized → original, fold into one).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..instances import Instances

__all__ = ["PostprocessSettings", "postprocess", "remove_duplicates"]


@dataclass(frozen=True)
class PostprocessSettings:
    """Thresholds applied to raw predictions."""

    score_threshold: float = 0.5  # the reference evaluates AP with 0.01
    mask_threshold: float = 0.5
    duplicate_iou: float | None = None  # e.g. 0.8 drops near-identical masks (off by default)
    min_area: int = 0  # drop masks smaller than this many pixels

    def __post_init__(self) -> None:
        if not 0.0 <= self.score_threshold < 1.0:
            raise ValueError("score_threshold must be in [0, 1)")
        if not 0.0 < self.mask_threshold < 1.0:
            raise ValueError("mask_threshold must be in (0, 1)")
        if self.duplicate_iou is not None and not 0.0 < self.duplicate_iou <= 1.0:
            raise ValueError("duplicate_iou must be in (0, 1] or None")


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

    low = pred_masks[query_idx].float().sigmoid()  # (K, Hm, Wm)
    hm, wm = low.shape[-2:]
    hp, wp = padded_shape
    h, w = resized_shape
    # original pixel centre (y + 0.5) → low-res sampling coordinate: y_l = (y + 0.5) * s - 0.5
    sy, sx = h * hm / (H * hp), w * wm / (W * wp)
    hot = low > settings.mask_threshold
    any_rows, any_cols = hot.any(dim=2), hot.any(dim=1)

    boxes, crops, scores, classes = [], [], [], []
    for k in range(low.shape[0]):
        rows = torch.nonzero(any_rows[k]).flatten()
        if rows.numel() == 0:
            continue
        cols = torch.nonzero(any_cols[k]).flatten()
        y0, y1 = _support(int(rows[0]), int(rows[-1]), sy, hm, H)
        x0, x1 = _support(int(cols[0]), int(cols[-1]), sx, wm, W)
        if y0 >= y1 or x0 >= x1:
            continue
        p = _sample_box(low[k], y0, y1, x0, x1, sy, sx)
        mask = p > settings.mask_threshold
        n = int(mask.sum())
        if n == 0 or n < settings.min_area:
            continue
        maskness = float((p * mask).sum()) / (n + 1e-6)
        score = float(cls_scores[k]) * maskness
        if score <= settings.score_threshold:
            continue
        boxes.append((y0, x0, y1, x1))
        crops.append(mask.cpu().numpy())
        scores.append(score)
        classes.append(int(labels[k]))

    if not crops:
        return Instances.empty((H, W))
    order = np.argsort(-np.asarray(scores), kind="stable")
    inst = Instances(
        image_shape=(H, W),
        boxes=np.asarray(boxes, np.int64)[order],
        crops=[crops[i] for i in order],
        scores=np.asarray(scores, np.float32)[order],
        class_ids=np.asarray(classes, np.int64)[order],
    ).tightened()
    if settings.duplicate_iou is not None:
        inst = remove_duplicates(inst, settings.duplicate_iou)
    return inst.with_ids(np.arange(1, len(inst) + 1))


def _support(first: int, last: int, scale: float, low_size: int, full_size: int) -> tuple[int, int]:
    """Original-pixel range whose samples can touch low-res pixels ``first - 1 .. last + 1``."""
    lo = (first - 1 + 0.5) / scale - 0.5 if first > 0 else 0.0
    hi = (last + 1 + 0.5) / scale - 0.5 if last < low_size - 1 else float(full_size)
    return max(0, int(np.floor(lo))), min(full_size, int(np.ceil(hi)) + 1)


def _sample_box(low: torch.Tensor, y0: int, y1: int, x0: int, x1: int,
                sy: float, sx: float) -> torch.Tensor:
    """Bilinear samples (align_corners=False, border clamp) of ``low`` at original pixels."""
    hm, wm = low.shape
    ys = torch.arange(y0, y1, device=low.device, dtype=torch.float32)
    xs = torch.arange(x0, x1, device=low.device, dtype=torch.float32)
    gy = (2.0 * ((ys + 0.5) * sy) / hm) - 1.0  # normalised coordinate of y_l = (y+.5)s - .5
    gx = (2.0 * ((xs + 0.5) * sx) / wm) - 1.0
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)[None]  # (1, bh, bw, 2)
    out = F.grid_sample(low[None, None], grid, mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out[0, 0]


def remove_duplicates(instances: Instances, iou_threshold: float) -> Instances:
    """Greedy mask-IoU suppression: drop an instance overlapping a higher-scored one above IoU."""
    if len(instances) < 2:
        return instances
    order = np.argsort(-instances.scores, kind="stable")
    ranked = instances[order]
    iou = ranked.pairwise_iou()
    keep: list[int] = []
    for i in range(len(ranked)):
        if all(iou[i, j] <= iou_threshold for j in keep):
            keep.append(i)
    return ranked[np.asarray(keep)]
