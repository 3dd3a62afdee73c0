"""Set-prediction loss: classification CE + point-sampled sigmoid BCE and Dice, deep supervision.

For every decoder output (the final one and each auxiliary one) the queries are matched to the
ground truth again (:class:`~napari_iaunet.training.matcher.HungarianMatcher`), then

* ``loss_ce``: softmax cross-entropy over C+1 classes for all queries, unmatched queries labelled
  "no object" (weight ``no_object_weight`` = 0.1 in the class weights);
* ``loss_bce`` / ``loss_dice``: on matched pairs only, at ``num_points`` points chosen by
  importance sampling (PointRend/Mask2Former: ``oversample_ratio`` × points drawn uniformly, the
  ``importance_sample_ratio`` share with the most uncertain prediction, −|logit|, kept, the rest
  uniform), summed over masks and divided by the number of ground-truth masks in the batch
  (all-reduced across processes under DDP).

Weights are applied explicitly: ``loss = Σ_outputs (w_ce·ce + w_bce·bce + w_dice·dice)`` with
1.0 / 5.0 / 2.0 by default. (The reference code renamed its mask-loss keys without renaming the
weights, so its BCE and Dice silently ran at weight 1.0; here the weight of every term is looked
up by the same name that produces it, and an unknown term is an error.)

PCTrans terms (:mod:`.pctrans_losses`) join when the outputs carry what they need:
``loss_centre`` (+ ``.i``) with ``pred_centres``, ``loss_mcc`` (+ ``.i``) and ``loss_qec`` (once,
across all outputs) with ``query_embeddings``; weights ``weight_centre`` / ``weight_qec`` /
``weight_mcc`` (5.0 / 1.0 / 1.0).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from .matcher import NUM_POINTS, HungarianMatcher, point_sample, point_sample_indexed
from .pctrans_losses import centre_of_mass, loss_centre, loss_mcc, loss_qec

__all__ = ["SetCriterion", "num_masks_across_processes", "sample_uncertain_points"]


@torch.no_grad()
def sample_uncertain_points(logits: torch.Tensor, num_points: int, oversample_ratio: float,
                            importance_sample_ratio: float,
                            generator: torch.Generator | None = None) -> torch.Tensor:
    """Point coordinates ``(M, num_points, 2)`` in [0, 1] biased towards uncertain pixels.

    ``logits (M, 1, h, w)``: mask logits; uncertainty is ``-|logit|`` at the candidate points.
    """
    m = logits.shape[0]
    n_over = max(num_points, int(num_points * oversample_ratio))
    cand = torch.rand(m, n_over, 2, device=logits.device, generator=generator)
    uncertainty = -point_sample(logits, cand).abs()[:, 0]  # (M, n_over)
    n_imp = int(importance_sample_ratio * num_points)
    n_rand = num_points - n_imp
    if uncertainty.device.type == "cpu" and n_imp < n_over:
        # same set as topk (order is irrelevant), in linear time
        part = np.argpartition(uncertainty.numpy(), n_over - n_imp, axis=1)[:, n_over - n_imp:]
        idx = torch.from_numpy(np.ascontiguousarray(part))
    else:
        idx = uncertainty.topk(n_imp, dim=1).indices  # (M, n_imp)
    coords = torch.gather(cand, 1, idx[..., None].expand(-1, -1, 2))
    if n_rand:
        rand = torch.rand(m, n_rand, 2, device=logits.device, generator=generator)
        coords = torch.cat([coords, rand], dim=1)
    return coords


def num_masks_across_processes(count: int, device: torch.device) -> float:
    """Ground-truth masks per process, averaged over all processes (≥ 1) — the loss normaliser."""
    n = torch.as_tensor(float(count), device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(n)
        n = n / dist.get_world_size()
    return max(float(n.item()), 1.0)


class SetCriterion(torch.nn.Module):
    """The IAUNet training loss over all decoder outputs.

    Targets are one dict per image: ``labels (N,)`` int64 and ``masks (N, H, W)`` bool/float at the
    (padded) network input resolution; predictions may be at any resolution (usually H/4).
    """

    TERMS = ("ce", "bce", "dice", "centre", "qec", "mcc")

    def __init__(self, num_classes: int = 1, *, weight_ce: float = 1.0, weight_bce: float = 5.0,
                 weight_dice: float = 2.0, no_object_weight: float = 0.1,
                 num_points: int = NUM_POINTS, oversample_ratio: float = 3.0,
                 importance_sample_ratio: float = 0.75, deep_supervision: bool = True,
                 matcher: HungarianMatcher | None = None, weight_centre: float = 5.0,
                 weight_qec: float = 1.0, weight_mcc: float = 1.0,
                 qec_temperature: float = 0.1, mcc_temperature: float = 0.1,
                 mcc_points: int = 4096) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.weights = {"ce": float(weight_ce), "bce": float(weight_bce),
                        "dice": float(weight_dice), "centre": float(weight_centre),
                        "qec": float(weight_qec), "mcc": float(weight_mcc)}
        if qec_temperature <= 0 or mcc_temperature <= 0:
            raise ValueError("SetCriterion: contrast temperatures must be positive")
        self.qec_temperature = float(qec_temperature)
        self.mcc_temperature = float(mcc_temperature)
        self.mcc_points = int(mcc_points)
        self.matcher = matcher or HungarianMatcher(weight_ce, weight_bce, weight_dice, num_points,
                                                   cost_centre=weight_centre)
        self.num_points = int(num_points)
        self.oversample_ratio = float(oversample_ratio)
        self.importance_sample_ratio = float(importance_sample_ratio)
        self.deep_supervision = bool(deep_supervision)
        empty_weight = torch.ones(self.num_classes + 1)
        empty_weight[-1] = float(no_object_weight)
        self.register_buffer("empty_weight", empty_weight, persistent=False)

    # ------------------------------------------------------------------ terms
    def loss_ce(self, logits: torch.Tensor, matches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                targets: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
        """Weighted softmax CE; unmatched queries are "no object" (index C)."""
        b, q, _ = logits.shape
        classes = torch.full((b, q), self.num_classes, dtype=torch.int64, device=logits.device)
        for i, ((src, tgt), t) in enumerate(zip(matches, targets)):
            if len(src):
                classes[i, src.to(logits.device)] = t["labels"][tgt.to(t["labels"].device)].to(
                    logits.device)
        return F.cross_entropy(logits.float().transpose(1, 2), classes,
                               weight=self.empty_weight.to(logits.device))

    def loss_masks(self, masks: torch.Tensor, matches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                   gt_masks: Sequence[torch.Tensor], num_masks: float,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Point-sampled sigmoid BCE and Dice of matched pairs, each summed / ``num_masks``."""
        src = [masks[i, s.to(masks.device)] for i, (s, _) in enumerate(matches)]
        pred = torch.cat(src).float()[:, None]  # (M, 1, h, w)
        if pred.shape[0] == 0:
            zero = masks.sum() * 0.0
            return zero, zero
        with torch.no_grad():
            coords = sample_uncertain_points(pred, self.num_points, self.oversample_ratio,
                                             self.importance_sample_ratio, generator)
            # ground truth at the same points, image by image, without copying full masks
            labels, start = [], 0
            for g, (_, t) in zip(gt_masks, matches):
                if len(t):
                    labels.append(point_sample_indexed(g, t, coords[start:start + len(t)]))
                    start += len(t)
            labels = torch.cat(labels)
        logits = point_sample(pred, coords)[:, 0]  # (M, P)
        bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(1)
        prob = logits.sigmoid()
        dice = 1.0 - (2.0 * (prob * labels).sum(1) + 1.0) / (prob.sum(1) + labels.sum(1) + 1.0)
        return bce.sum() / num_masks, dice.sum() / num_masks

    # ------------------------------------------------------------------ total
    def forward(self, outputs: dict, targets: Sequence[dict[str, torch.Tensor]],
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """All loss terms and their weighted sum ``"loss"``.

        Keys: ``loss_ce``, ``loss_bce``, ``loss_dice`` for the final output and ``loss_ce.{i}``…
        for auxiliary output ``i``; every term is unweighted, ``loss`` is the weighted total.
        With the PCTrans outputs also ``loss_centre``, ``loss_mcc`` (per output) and ``loss_qec``.
        """
        device = outputs["pred_logits"].device
        with torch.autocast(device_type=device.type, enabled=False):
            gt_masks = [t["masks"].to(device).float() for t in targets]
            match_targets = [{"labels": t["labels"].to(device), "masks": g}
                             for t, g in zip(targets, gt_masks)]
            num_masks = num_masks_across_processes(sum(len(t["labels"]) for t in targets), device)
            levels: list[tuple[str, dict]] = [("", outputs)]
            if self.deep_supervision:
                levels += [(f".{i}", aux) for i, aux in enumerate(outputs.get("aux_outputs", []))]
            losses: dict[str, torch.Tensor] = {}
            gt_centres = ([centre_of_mass(g) for g in gt_masks]
                          if "pred_centres" in outputs else None)
            if gt_centres is not None:  # the matcher adds an L1 centre cost
                for t, c in zip(match_targets, gt_centres):
                    t["centres"] = c
            contrast = "query_embeddings" in outputs
            embeddings, all_matches = [], []
            for suffix, out in levels:
                matches = self.matcher(out, match_targets, generator)
                losses["loss_ce" + suffix] = self.loss_ce(out["pred_logits"], matches,
                                                          match_targets)
                bce, dice = self.loss_masks(out["pred_masks"], matches, gt_masks, num_masks,
                                            generator)
                losses["loss_bce" + suffix] = bce
                losses["loss_dice" + suffix] = dice
                if gt_centres is not None:
                    losses["loss_centre" + suffix] = loss_centre(out["pred_centres"], matches,
                                                                 gt_centres, num_masks)
                if contrast:
                    losses["loss_mcc" + suffix] = loss_mcc(
                        out["pred_masks"], matches, gt_masks, num_masks, self.mcc_temperature,
                        self.mcc_points, generator)
                    embeddings.append(out["query_embeddings"])
                    all_matches.append(matches)
            if contrast:
                losses["loss_qec"] = loss_qec(embeddings, all_matches, self.qec_temperature)
            losses["loss"] = self.weighted_total(losses)
        return losses

    def weight_of(self, key: str) -> float:
        """The weight applied to loss term ``key`` (e.g. ``"loss_bce.3"`` → 5.0)."""
        term = key.removeprefix("loss_").split(".")[0]
        if term not in self.weights:
            raise KeyError(f"SetCriterion: no weight for loss term '{key}'")
        return self.weights[term]

    def weighted_total(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """``Σ weight_of(key) × value`` over every term (not the total itself)."""
        terms = [self.weight_of(k) * v for k, v in losses.items() if k != "loss"]
        return torch.stack(terms).sum()
