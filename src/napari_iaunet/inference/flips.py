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

from dataclasses import dataclass

import numpy as np
import torch

from .postprocess import mask_clusters

__all__ = ["DEFAULT_FLIPS", "FLIP_VIEWS", "ViewAgreement", "check_flips", "flip_views",
           "merge_views"]

# views as the image dimensions to flip (…, H, W): none, left-right, up-down, both (= 180°)
FLIP_VIEWS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))
DEFAULT_FLIPS = 4
MERGE_IOU = 0.5
CONFIDENT = 0.5  # class probability at which a view is taken to have found a cell


@dataclass(frozen=True)
class ViewAgreement:
    """How far the mirror views confirm the unflipped one: of its queries with class probability
    ≥ 0.5 (``confident``), how many belong to a merged cell whose mean probability over all views
    is ≥ 0.5 too (``confirmed``). Low agreement means the model is unsure of this image: it is
    unlike the images the model learnt from (measured in docs/inference.md)."""

    confident: int = 0
    confirmed: int = 0

    def __add__(self, other: ViewAgreement) -> ViewAgreement:
        return ViewAgreement(self.confident + other.confident, self.confirmed + other.confirmed)

    @property
    def fraction(self) -> float | None:
        """``confirmed / confident``; None when the unflipped view was confident of nothing."""
        return self.confirmed / self.confident if self.confident else None

    def is_low(self, below: float = 0.25, at_least: int = 5) -> bool:
        """Whether the views disagree: at least ``at_least`` confident cells, and under
        ``below`` of them confirmed."""
        return self.confident >= at_least and self.confirmed < below * self.confident

    def sentence(self, one_view: str = "--flips 1") -> str:
        """One line for a person; ``one_view`` names the setting that shows a single view."""
        return (f"the mirror images confirm {self.confirmed} of the {self.confident} detections "
                f"the image alone gives: it looks unlike the model's training images, so expect "
                f"missed cells (fine-tune on a few corrected ones; {one_view} shows what one "
                f"view finds)")


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
                ) -> list[tuple[torch.Tensor, torch.Tensor, ViewAgreement]]:
    """Merge the outputs of :func:`flip_views`' batch into one set of queries per image.

    ``pred_logits (V·B, Q, C+1)`` and ``pred_masks (V·B, Q, h, w)`` as the network returns them
    (the masks still in each view's orientation). A query enters when its best class
    probability exceeds ``min_score / V`` (below that, it adds too little to lift a cell above
    ``min_score``). Returns, per image, ``(logits (K, C+1), mask_logits (K, h, w))``
    whose softmax gives the merged class probabilities (the no-object column takes the rest),
    ordered by merged score, ready for :func:`~napari_iaunet.inference.postprocess.postprocess`,
    and the image's :class:`ViewAgreement`.
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
               ) -> tuple[torch.Tensor, torch.Tensor, ViewAgreement]:
    """One image: queries of all views (``prob (N, C)``, ``mask_prob (N, h, w)``) → cells."""
    n, num_classes = prob.shape
    h, w = mask_prob.shape[-2:]
    if n == 0:
        return (torch.zeros((0, num_classes + 1), device=prob.device),
                torch.zeros((0, h, w), device=prob.device), ViewAgreement())
    best, label = prob.max(-1)
    best_np = best.cpu().numpy()
    cell_probs, cell_masks = [], []
    confident = (view_of == 0) & (best_np >= CONFIDENT)
    confirmed = 0
    for i, members in mask_clusters(best_np, label, mask_prob, iou_threshold, mask_threshold):
        chosen = [i]  # the leader is its view's best member (the most confident query)
        for v in range(n_views):
            if v == view_of[i]:
                continue
            in_view = members[view_of[members] == v]
            if len(in_view):
                chosen.append(int(in_view[np.argmax(best_np[in_view])]))
        idx = torch.as_tensor(chosen, device=prob.device)
        cell_probs.append(prob[idx].sum(0) / n_views)
        cell_masks.append(mask_prob[idx].mean(0))
        if best_np[chosen].sum() / n_views >= CONFIDENT:
            confirmed += int(confident[members].sum())
    p = torch.stack(cell_probs).clamp(1e-6, 1.0)
    rest = (1.0 - p.sum(-1, keepdim=True)).clamp(min=1e-6)
    logits = torch.log(torch.cat([p, rest], dim=-1))
    m = torch.stack(cell_masks).clamp(1e-6, 1 - 1e-6)
    return logits, torch.log(m / (1 - m)), ViewAgreement(int(confident.sum()), confirmed)
