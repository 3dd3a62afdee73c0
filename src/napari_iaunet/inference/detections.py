"""Box detections with low-resolution masks (Mask R-CNN) → :class:`Instances`.

Each detection brings a box (xyxy, network-input pixels), a score, a class label (1…C, 0 being
torchvision's background) and a ``M×M`` (28×28) mask-probability map that spans its box. The map
is resampled only over the box's pixels in the original image — never onto a full-image canvas —
with bilinear interpolation, as torchvision's ``paste_masks_in_image`` does (the map is padded by
one zero pixel on every side and the box grown to match, so masks fade out at the box edge), but
in continuous coordinates and straight to original pixels in one step.
"""

from __future__ import annotations

import numpy as np
import torch

from ..instances import Instances
from .postprocess import PostprocessSettings, _tighten, assemble_instances

__all__ = ["detections_to_instances", "paste_in_box"]


def _taps(start: float, stop: float, lo: int, hi: int, size: int
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps of the pixels ``lo … hi-1`` on a map of ``size`` samples spanning the
    continuous interval ``[start, stop]`` (sample centres at ``start + (i + 0.5) · step``)."""
    pix = np.arange(lo, hi, dtype=np.float64)
    coord = (pix + 0.5 - start) * (size / max(stop - start, 1e-6)) - 0.5
    coord = np.clip(coord, 0.0, size - 1)
    i0 = np.floor(coord).astype(np.intp)
    return i0, np.minimum(i0 + 1, size - 1), (coord - i0).astype(np.float32)


def paste_in_box(prob: np.ndarray, box: tuple[float, float, float, float],
                 image_shape: tuple[int, int], threshold: float = 0.5
                 ) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """Resample an ``(M, M)`` probability map spanning ``box`` (x0, y0, x1, y1 in image pixels)
    and threshold it; returns ``((y0, x0, y1, x1), crop)`` tight around the mask, or None if
    nothing passes ``threshold``."""
    H, W = image_shape
    m = prob.shape[-1]
    padded = np.pad(prob.astype(np.float32, copy=False), 1)  # zeros around, as torchvision
    x0, y0, x1, y1 = (float(v) for v in box)
    gx, gy = (x1 - x0) / m, (y1 - y0) / m  # one map pixel, in image pixels
    x0, x1, y0, y1 = x0 - gx, x1 + gx, y0 - gy, y1 + gy
    r0, r1 = max(0, int(np.floor(y0))), min(H, int(np.ceil(y1)))
    c0, c1 = max(0, int(np.floor(x0))), min(W, int(np.ceil(x1)))
    if r0 >= r1 or c0 >= c1:
        return None
    iy0, iy1, wy = _taps(y0, y1, r0, r1, m + 2)
    ix0, ix1, wx = _taps(x0, x1, c0, c1, m + 2)
    top, bottom = padded[iy0], padded[iy1]
    rows = top + wy[:, None] * (bottom - top)
    left, right = rows[:, ix0], rows[:, ix1]
    mask = (left + wx * (right - left)) > threshold
    if not mask.any():
        return None
    return _tighten((r0, c0, r1, c1), mask)


def detections_to_instances(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    masks: torch.Tensor,
    resized_shape: tuple[int, int],
    original_shape: tuple[int, int],
    settings: PostprocessSettings | None = None,
) -> Instances:
    """One image's detections → :class:`Instances` in original image pixels.

    ``boxes (K, 4)`` are xyxy in the resized image (``resized_shape``, before padding),
    ``masks (K, 1, M, M)`` probabilities inside each box, ``labels`` 1…C. Detections scoring at
    most ``settings.score_threshold``, with an empty mask or fewer than ``min_area`` pixels are
    dropped; ``duplicate_iou`` applies the mask-IoU duplicate filter. The score is the detector's.
    """
    settings = settings or PostprocessSettings()
    H, W = (int(v) for v in original_shape)
    h, w = (int(v) for v in resized_shape)
    keep = scores.float() > settings.score_threshold
    if not bool(keep.any()):
        return Instances.empty((H, W))
    scale = torch.tensor([W / w, H / h, W / w, H / h], dtype=torch.float64)
    boxes_np = (boxes[keep].detach().double().cpu() * scale).numpy()
    scores_np = scores[keep].detach().float().cpu().numpy()
    labels_np = labels[keep].detach().cpu().numpy().astype(np.int64) - 1
    probs = masks[keep].detach().float().cpu().numpy().reshape(len(scores_np), *masks.shape[-2:])

    kept_boxes, crops, kept_scores, classes = [], [], [], []
    for box, prob, score, label in zip(boxes_np, probs, scores_np, labels_np):
        pasted = paste_in_box(prob, tuple(box), (H, W), settings.mask_threshold)
        if pasted is None:
            continue
        tight_box, crop = pasted
        if int(np.count_nonzero(crop)) < max(1, settings.min_area):
            continue
        kept_boxes.append(tight_box)
        crops.append(crop)
        kept_scores.append(float(score))
        classes.append(int(label))
    return assemble_instances((H, W), kept_boxes, crops, kept_scores, classes, settings)
