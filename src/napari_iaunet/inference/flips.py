"""Test-time flips: segment an image together with its mirror images and keep what they agree on.

A query model answers each view with its own set of queries; which query finds which cell changes
from view to view, so the views are merged cell by cell, not query by query. Every view's masks
are flipped back onto the image, then, greedily from the most confident query down, each query
not yet taken gathers the untaken queries of its class whose binary masks (at the network's 1/4
resolution) overlap its own above ``iou_threshold`` (the duplicate filter's 0.5: the IoU at which
two masks are taken for the same cell elsewhere). From each view the cluster keeps its best
query; the cell's class probabilities are the mean over ALL views (a view that missed the cell
counts 0, so a fragment that one view alone returns drops in rank) and its mask the mean
probability of the views that found it.

With the four views (the image, left-right, up-down, both) the result is equivariant: the
mirrored image gives the mirrored cells. Measured on the bundled model's unseen images in
``weights/MODEL_CARD.md`` and the speed cost in ``docs/performance.md``.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["DEFAULT_FLIPS", "FLIP_VIEWS", "check_flips", "flip_views", "merge_views"]

# views as the image dimensions to flip (…, H, W): none, left-right, up-down, both (= 180°)
FLIP_VIEWS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))
DEFAULT_FLIPS = 4
MERGE_IOU = 0.5


def check_flips(flips: int) -> int:
    """``flips`` as an int in 1…4, else a ValueError that says what it means."""
    if isinstance(flips, bool) or not isinstance(flips, (int, np.integer)) or not 1 <= flips <= 4:
        raise ValueError(f"flips must be 1, 2, 3 or 4 (views of the image: itself, then "
                         f"mirrored left-right, up-down, both), got {flips!r}")
    return int(flips)


def flip_views(batch: torch.Tensor, flips: int) -> torch.Tensor:
    """``batch (B, C, H, W)`` → ``(flips·B, C, H, W)``: view after view, each the whole batch."""
    return torch.cat([batch.flip(dims) if dims else batch for dims in FLIP_VIEWS[:flips]])


def merge_views(pred_logits: torch.Tensor, pred_masks: torch.Tensor, flips: int,
                min_score: float, mask_threshold: float = 0.5, iou_threshold: float = MERGE_IOU
                ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Merge the outputs of :func:`flip_views`' batch into one set of queries per image.

    ``pred_logits (V·B, Q, C+1)`` and ``pred_masks (V·B, Q, h, w)`` as the network returns them
    (the masks still in each view's orientation). A query enters when its best class
    probability exceeds ``min_score / V`` (below that, it adds too little to lift a cell above
    ``min_score``). Returns, per image, ``(logits (K, C+1), mask_logits (K, h, w))``
    whose softmax gives the merged class probabilities (the no-object column takes the rest),
    ordered by merged score, ready for :func:`~napari_iaunet.inference.postprocess.postprocess`.
    """
    views = FLIP_VIEWS[:flips]
    n_views = len(views)
    batch = pred_logits.shape[0] // n_views
    num_classes = pred_logits.shape[-1] - 1
    merged = []
    for b in range(batch):
        probs, masks, view_of = [], [], []
        for v, dims in enumerate(views):
            i = v * batch + b
            p = pred_logits[i].float().softmax(-1)[:, :num_classes]
            keep = torch.nonzero(p.max(-1).values > min_score / n_views).flatten()
            m = pred_masks[i, keep].float()
            probs.append(p[keep])
            masks.append(m.flip(dims) if dims else m)
            view_of.append(np.full(len(keep), v))
        prob = torch.cat(probs)
        mask_prob = torch.cat(masks).sigmoid()
        merged.append(_merge_one(prob, mask_prob, np.concatenate(view_of), n_views,
                                 mask_threshold, iou_threshold))
    return merged


def _merge_one(prob: torch.Tensor, mask_prob: torch.Tensor, view_of: np.ndarray, n_views: int,
               mask_threshold: float, iou_threshold: float
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """One image: queries of all views (``prob (N, C)``, ``mask_prob (N, h, w)``) → cells."""
    n, num_classes = prob.shape
    h, w = mask_prob.shape[-2:]
    if n == 0:
        return (torch.zeros((0, num_classes + 1), device=prob.device),
                torch.zeros((0, h, w), device=prob.device))
    best, label = prob.max(-1)
    hot = (mask_prob > mask_threshold).flatten(1).float()
    inter = hot @ hot.T
    area = hot.sum(1)
    iou = inter / (area[:, None] + area[None, :] - inter).clamp(min=1.0)
    linked = ((iou > iou_threshold) & (label[:, None] == label[None, :])).cpu().numpy()
    best_np = best.cpu().numpy()
    taken = np.zeros(n, dtype=bool)
    cell_probs, cell_masks = [], []
    for i in np.argsort(-best_np, kind="stable"):
        if taken[i]:
            continue
        members = np.flatnonzero(linked[i] & ~taken)
        taken[members] = True
        taken[i] = True
        chosen = [int(i)]  # the leader is its view's best member (the most confident query)
        for v in range(n_views):
            if v == view_of[i]:
                continue
            in_view = members[view_of[members] == v]
            if len(in_view):
                chosen.append(int(in_view[np.argmax(best_np[in_view])]))
        idx = torch.as_tensor(chosen, device=prob.device)
        cell_probs.append(prob[idx].sum(0) / n_views)
        cell_masks.append(mask_prob[idx].mean(0))
    p = torch.stack(cell_probs).clamp(1e-6, 1.0)
    rest = (1.0 - p.sum(-1, keepdim=True)).clamp(min=1e-6)
    logits = torch.log(torch.cat([p, rest], dim=-1))
    m = torch.stack(cell_masks).clamp(1e-6, 1 - 1e-6)
    return logits, torch.log(m / (1 - m))
