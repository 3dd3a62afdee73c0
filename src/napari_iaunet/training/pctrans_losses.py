"""PCTrans loss terms: centre L1, query-embedding contrast (QEC), mask-candidate contrast (MCC).

:class:`~napari_iaunet.training.losses.SetCriterion` adds them when the decoder outputs what
they need (``pred_centres`` with ``centre_guidance``, ``query_embeddings`` with
``contrast_losses``); each is weighted by its own name (``centre``, ``qec``, ``mcc``).

* ``loss_centre``: L1 between the predicted centre (normalised (x, y) on the padded input) of
  every matched query and its ground truth's centre of mass, summed over x and y and over the
  matched pairs, divided by the number of ground-truth masks (like the mask terms).
* ``loss_qec`` (once per batch, over all decoder outputs): supervised InfoNCE on the
  L2-normalised query embeddings of one image across all decoder blocks. An embedding matched
  to ground truth ``t`` at one block has as positives the embeddings matched to ``t`` at the
  other blocks; every other embedding of the image (other queries, any block) is a negative.
* ``loss_mcc`` (per decoder output): each ground-truth mask, point-sampled at points shared by
  all queries of the image, is compared (cosine similarity of the point vectors / τ) with every
  query's mask probabilities; cross-entropy picks its matched query, so near-duplicate queries
  of the same cell and look-alike neighbours are pushed apart.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .matcher import point_sample

__all__ = ["centre_of_mass", "loss_centre", "loss_mcc", "loss_qec"]

Matches = Sequence[tuple[torch.Tensor, torch.Tensor]]


def centre_of_mass(masks: torch.Tensor) -> torch.Tensor:
    """Normalised (x, y) centres ``(N, 2)`` of ``masks (N, H, W)`` (pixel centres at
    ``(i + 0.5) / size``); an empty mask gets the image centre."""
    h, w = masks.shape[-2:]
    m = masks.float()
    area = m.sum(dim=(1, 2))
    xs = (torch.arange(w, device=m.device, dtype=torch.float32) + 0.5) / w
    ys = (torch.arange(h, device=m.device, dtype=torch.float32) + 0.5) / h
    cx = (m.sum(dim=1) * xs).sum(dim=1) / area.clamp(min=1.0)
    cy = (m.sum(dim=2) * ys).sum(dim=1) / area.clamp(min=1.0)
    centres = torch.stack([cx, cy], dim=1)
    return torch.where((area > 0)[:, None], centres, torch.full_like(centres, 0.5))


def loss_centre(pred_centres: torch.Tensor, matches: Matches,
                gt_centres: Sequence[torch.Tensor], num_masks: float) -> torch.Tensor:
    """Σ |centre − GT centre| (x and y) over matched pairs / ``num_masks``."""
    total = pred_centres.sum() * 0.0
    for i, (src, tgt) in enumerate(matches):
        if len(src):
            pred = pred_centres[i, src.to(pred_centres.device)].float()
            total = total + (pred - gt_centres[i][tgt.to(pred.device)]).abs().sum()
    return total / num_masks


def loss_qec(embeddings: Sequence[torch.Tensor], matches: Sequence[Matches],
             temperature: float = 0.1) -> torch.Tensor:
    """Query-embedding contrast across decoder blocks (see the module docstring).

    ``embeddings[l]`` is block ``l``'s ``(B, Q, D)``, ``matches[l]`` its matching. Returns the
    mean over anchors that have a positive (0 when there is none).
    """
    total = embeddings[0].sum() * 0.0
    count = 0
    batch, q = embeddings[0].shape[:2]
    device = embeddings[0].device
    for b in range(batch):
        z = F.normalize(torch.cat([e[b].float() for e in embeddings]), dim=-1)  # (L*Q, D)
        labels = torch.full((len(embeddings) * q,), -1, dtype=torch.int64, device=device)
        for level, level_matches in enumerate(matches):
            src, tgt = level_matches[b]
            labels[level * q + src.to(device)] = tgt.to(device)
        if (labels >= 0).sum() < 2:
            continue
        sim = z @ z.T / temperature
        self_mask = torch.eye(len(z), dtype=torch.bool, device=device)
        log_prob = sim.masked_fill(self_mask, float("-inf")).log_softmax(dim=1)
        positive = (labels[:, None] == labels[None, :]) & (labels[:, None] >= 0) & ~self_mask
        anchors = positive.any(dim=1)
        if not anchors.any():
            continue
        per_anchor = -(log_prob.masked_fill(~positive, 0.0).sum(1) / positive.sum(1).clamp(min=1))
        total = total + per_anchor[anchors].sum()
        count += int(anchors.sum())
    return total / max(count, 1)


def loss_mcc(masks: torch.Tensor, matches: Matches, gt_masks: Sequence[torch.Tensor],
             num_masks: float, temperature: float = 0.1, num_points: int = 4096,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Mask-candidate contrast of one decoder output (see the module docstring).

    ``masks (B, Q, h, w)`` logits, ``gt_masks[b] (N, H, W)``. Σ cross-entropy over ground truths
    / ``num_masks``.
    """
    total = masks.sum() * 0.0
    for b, (src, tgt) in enumerate(matches):
        if not len(src):
            continue
        coords = torch.rand(1, num_points, 2, device=masks.device, generator=generator)
        with torch.no_grad():
            gt = point_sample(gt_masks[b][None].float(), coords)[0]  # (N, P)
        prob = point_sample(masks[b][None].float(), coords)[0].sigmoid()  # (Q, P)
        sim = F.normalize(gt[tgt.to(gt.device)], dim=1) @ F.normalize(prob, dim=1).T
        total = total + F.cross_entropy(sim / temperature, src.to(sim.device), reduction="sum")
    return total / num_masks
