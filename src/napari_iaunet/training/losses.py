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

Click queries (``click_logits`` / ``click_masks`` in the outputs, each target's ``click_cells``:
the cell each click was placed in, :mod:`.clicks`): no matching, each click is paired with its
cell; ``loss_click_ce`` / ``loss_click_bce`` / ``loss_click_dice`` (+ ``.i``) are the same terms
with the same weights, divided by the number of clicks.

PCTrans terms (:mod:`.pctrans_losses`) join when the outputs carry what they need:
``loss_centre`` (+ ``.i``) with ``pred_centres``, ``loss_mcc`` (+ ``.i``) and ``loss_qec`` (once,
across all outputs) with ``query_embeddings``; weights ``weight_centre`` / ``weight_qec`` /
``weight_mcc`` (5.0 / 1.0 / 1.0).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from .clicks import missed_cells, sample_clicks, smallest_cells_at
from .matcher import NUM_POINTS, HungarianMatcher, Match, point_sample, point_sample_indexed
from .pctrans_losses import centre_of_mass, loss_centre, loss_mcc, loss_qec

__all__ = ["SET_LOSS_KEYS", "SetCriterion", "num_masks_across_processes", "sample_uncertain_points",
           "set_training_loss"]


@torch.no_grad()
def sample_uncertain_points(logits: torch.Tensor, num_points: int, oversample_ratio: float,
                            importance_sample_ratio: float,
                            generator: torch.Generator | None = None) -> torch.Tensor:
    """Point coordinates ``(M, num_points, 2)`` in [0, 1] biased towards uncertain pixels.

    ``logits (M, 1, h, w)``: mask logits; uncertainty is ``-|logit|`` of the pixel under each
    candidate point.
    """
    n_over, n_imp, n_rand = _point_budget(num_points, oversample_ratio, importance_sample_ratio)
    m = logits.shape[0]
    cand = torch.rand(m, n_over, 2, device=logits.device, generator=generator)
    idx = _k_smallest(_abs_logits_at(logits, cand)[:, 0], n_imp)
    coords = torch.gather(cand, 1, idx[..., None].expand(-1, -1, 2))
    if n_rand:
        rand = torch.rand(m, n_rand, 2, device=logits.device, generator=generator)
        coords = torch.cat([coords, rand], dim=1)
    return coords


def _point_budget(num_points: int, oversample_ratio: float, importance_sample_ratio: float
                  ) -> tuple[int, int, int]:
    """(candidates, importance-sampled points, uniform points) per mask."""
    n_over = max(num_points, int(num_points * oversample_ratio))
    n_imp = int(importance_sample_ratio * num_points)
    return n_over, n_imp, num_points - n_imp


def _abs_logits_at(logits: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """``|logit|`` of the pixel under each candidate (small = uncertain): ``logits (M, L, h, w)``
    (``L`` maps per row, e.g. decoder outputs), ``cand (M, n, 2)`` (x, y) in [0, 1] →
    ``(M, L, n)``.

    Only the choice of points uses it, so the nearest pixel stands in for bilinear
    interpolation: one gather instead of four, shared by the ``L`` maps.
    """
    h, w = logits.shape[-2:]
    x = (cand[..., 0] * w).long().clamp_(0, w - 1)
    y = (cand[..., 1] * h).long().clamp_(0, h - 1)
    index = (y * w + x)[:, None, :].expand(-1, logits.shape[1], -1)
    return torch.gather(logits.flatten(2), 2, index).abs_()


def _k_smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``(M, k)`` of the ``k`` smallest values of each row of ``(M, n)`` (any order)."""
    n = values.shape[1]
    if k <= 0:
        return torch.zeros(values.shape[0], 0, dtype=torch.int64, device=values.device)
    if values.device.type == "cpu" and k < n:
        # the same set as topk, in linear time
        part = np.argpartition(values.numpy(), k - 1, axis=1)[:, :k]
        return torch.from_numpy(np.ascontiguousarray(part))
    return values.topk(k, dim=1, largest=False).indices


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
    With ``query_groups`` > 1 (a model trained with ``IAUNetConfig.query_groups``) each output's
    queries are split into that many equal groups, each matched and scored on its own; give
    ``num_queries`` (queries per group) and outputs of any other size are refused (an eval-mode
    model runs one group only).
    """

    TERMS = ("ce", "bce", "dice", "centre", "qec", "mcc", "click_ce", "click_bce", "click_dice")

    def __init__(self, num_classes: int = 1, *, weight_ce: float = 1.0, weight_bce: float = 5.0,
                 weight_dice: float = 2.0, no_object_weight: float = 0.1,
                 num_points: int = NUM_POINTS, oversample_ratio: float = 3.0,
                 importance_sample_ratio: float = 0.75, deep_supervision: bool = True,
                 matcher: HungarianMatcher | None = None, weight_centre: float = 5.0,
                 weight_qec: float = 1.0, weight_mcc: float = 1.0,
                 qec_temperature: float = 0.1, mcc_temperature: float = 0.1,
                 mcc_points: int = 4096, query_groups: int = 1,
                 num_queries: int | None = None) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        if query_groups < 1:
            raise ValueError("SetCriterion: query_groups must be ≥ 1")
        self.query_groups = int(query_groups)
        self.num_queries = num_queries
        self.weights = {"ce": float(weight_ce), "bce": float(weight_bce),
                        "dice": float(weight_dice), "centre": float(weight_centre),
                        "qec": float(weight_qec), "mcc": float(weight_mcc),
                        "click_ce": float(weight_ce), "click_bce": float(weight_bce),
                        "click_dice": float(weight_dice)}
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
    def loss_ce(self, logits: torch.Tensor, matches: Sequence[Match],
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

    def loss_masks(self, masks: torch.Tensor, matches: Sequence[Match],
                   gt_masks: Sequence[torch.Tensor], num_masks: float,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Point-sampled sigmoid BCE and Dice of matched pairs, each summed / ``num_masks``."""
        return self.mask_losses([masks], [matches], gt_masks, num_masks, generator)[0]

    def mask_losses(self, masks: Sequence[torch.Tensor], matches: Sequence[Sequence[Match]],
                    gt_masks: Sequence[torch.Tensor], num_masks: float,
                    generator: torch.Generator | None = None
                    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """:meth:`loss_masks` of every decoder output (``masks[l]`` with ``matches[l]``).

        The candidate and uniform points are drawn once per ground-truth instance and shared by
        all outputs, so the full-resolution ground truth is sampled once per step instead of once
        per output; each output still picks its own most uncertain candidates.
        """
        device = masks[0].device
        counts = [len(g) for g in gt_masks]
        total = sum(counts)
        offsets = np.cumsum([0, *counts[:-1]]).tolist()
        # per output: the matched predictions (M, h, w) and their rows among all instances
        matched = [self._matched(m, mt, offsets) for m, mt in zip(masks, matches)]
        if total == 0 or all(rows is None for rows, _ in matched):
            return [(m.sum() * 0.0, m.sum() * 0.0) for m in masks]
        n_over, n_imp, n_rand = _point_budget(self.num_points, self.oversample_ratio,
                                              self.importance_sample_ratio)
        with torch.no_grad():
            # one row per ground-truth instance of the batch, in (image, target) order
            cand = torch.rand(total, n_over, 2, device=device, generator=generator)
            rand = torch.rand(total, n_rand, 2, device=device, generator=generator)
            gt_cand = self._gt_at(gt_masks, offsets, cand)
            gt_rand = self._gt_at(gt_masks, offsets, rand)
            everyone = torch.arange(total, device=device)
            complete = all(rows is not None and len(rows) == total and bool((rows == everyone)
                                                                            .all())
                           for rows, _ in matched)
            if complete:  # the usual case: one sampling of all outputs' candidates at once
                stacked = torch.stack([pred.detach() for _, pred in matched], dim=1)
                certainty = _abs_logits_at(stacked, cand)  # (M, L, n_over)
        result = []
        for level, (rows, pred) in enumerate(matched):
            if rows is None:
                zero = masks[level].sum() * 0.0
                result.append((zero, zero))
                continue
            with torch.no_grad():
                if complete:
                    idx = _k_smallest(certainty[:, level], n_imp)
                    o_cand, o_rand, o_gt_cand, o_gt_rand = cand, rand, gt_cand, gt_rand
                else:
                    o_cand, o_rand, o_gt_cand, o_gt_rand = (cand[rows], rand[rows],
                                                            gt_cand[rows], gt_rand[rows])
                    idx = _k_smallest(_abs_logits_at(pred.detach()[:, None], o_cand)[:, 0],
                                      n_imp)
                coords = torch.cat([torch.gather(o_cand, 1, idx[..., None].expand(-1, -1, 2)),
                                    o_rand], dim=1)
                labels = torch.cat([torch.gather(o_gt_cand, 1, idx), o_gt_rand], dim=1)
            logits = point_sample(pred[:, None], coords)[:, 0]  # (M, P)
            bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(1)
            prob = logits.sigmoid()
            dice = 1.0 - (2.0 * (prob * labels).sum(1) + 1.0) / (prob.sum(1) + labels.sum(1)
                                                                  + 1.0)
            result.append((bce.sum() / num_masks, dice.sum() / num_masks))
        return result

    @staticmethod
    def _matched(masks: torch.Tensor, matches: Sequence[Match], offsets: Sequence[int]
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Matched mask logits ``(M, h, w)`` (float32) and their instance rows, in (image,
        target) order; ``(None, None)`` when nothing is matched."""
        rows, preds = [], []
        for i, (src, tgt) in enumerate(matches):
            if len(src):
                order = torch.argsort(tgt)
                rows.append(tgt[order].to(masks.device) + offsets[i])
                preds.append(masks[i, src[order].to(masks.device)])
        if not rows:
            return None, None
        return torch.cat(rows), torch.cat(preds).float()

    @staticmethod
    def _gt_at(gt_masks: Sequence[torch.Tensor], offsets: Sequence[int], coords: torch.Tensor
               ) -> torch.Tensor:
        """Every ground-truth mask sampled at its own row of ``coords (total, P, 2)``."""
        parts = []
        for g, start in zip(gt_masks, offsets):
            if len(g):
                index = torch.arange(len(g), device=g.device)
                parts.append(point_sample_indexed(g, index, coords[start:start + len(g)]))
        return torch.cat(parts)

    # ------------------------------------------------------------------ total
    def forward(self, outputs: dict, targets: Sequence[dict[str, torch.Tensor]],
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """All loss terms and their weighted sum ``"loss"``.

        Keys: ``loss_ce``, ``loss_bce``, ``loss_dice`` for the final output and ``loss_ce.{i}``…
        for auxiliary output ``i``; every term is unweighted, ``loss`` is the weighted total.
        Query group ``g`` ≥ 1 adds the same terms with the suffix ``.g{g}``.
        With the PCTrans outputs also ``loss_centre``, ``loss_mcc`` (per output) and ``loss_qec``.
        """
        device = outputs["pred_logits"].device
        with torch.autocast(device_type=device.type, enabled=False):
            gt_masks = [t["masks"].to(device).float() for t in targets]
            match_targets = [{"labels": t["labels"].to(device), "masks": g}
                             for t, g in zip(targets, gt_masks)]
            num_masks = num_masks_across_processes(sum(len(t["labels"]) for t in targets), device)
            levels = self._supervised(outputs)
            if self.query_groups > 1:
                levels = [(suffix + (f".g{g}" if g else ""), group)
                          for suffix, out in levels
                          for g, group in enumerate(self._split_groups(out))]
            losses: dict[str, torch.Tensor] = {}
            gt_centres = ([centre_of_mass(g) for g in gt_masks]
                          if "pred_centres" in outputs else None)
            if gt_centres is not None:  # the matcher adds an L1 centre cost
                for t, c in zip(match_targets, gt_centres):
                    t["centres"] = c
            contrast = "query_embeddings" in outputs
            all_matches = self.matcher.match_outputs([out for _, out in levels], match_targets,
                                                     generator)
            mask_terms = self.mask_losses([out["pred_masks"] for _, out in levels], all_matches,
                                          gt_masks, num_masks, generator)
            for (suffix, out), matches, (bce, dice) in zip(levels, all_matches, mask_terms):
                losses["loss_ce" + suffix] = self.loss_ce(out["pred_logits"], matches,
                                                          match_targets)
                losses["loss_bce" + suffix] = bce
                losses["loss_dice" + suffix] = dice
                if gt_centres is not None:
                    losses["loss_centre" + suffix] = loss_centre(out["pred_centres"], matches,
                                                                 gt_centres, num_masks)
                if contrast:
                    losses["loss_mcc" + suffix] = loss_mcc(
                        out["pred_masks"], matches, gt_masks, num_masks, self.mcc_temperature,
                        self.mcc_points, generator)
            if contrast:
                embeddings = [out["query_embeddings"] for _, out in levels]
                losses["loss_qec"] = loss_qec(embeddings, all_matches, self.qec_temperature)
            if "click_masks" in outputs:
                losses.update(self.click_losses(outputs, match_targets, targets, generator))
            losses["loss"] = self.weighted_total(losses)
        return losses

    def click_losses(self, outputs: dict, match_targets: Sequence[dict[str, torch.Tensor]],
                     targets: Sequence[dict[str, torch.Tensor]],
                     generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """``loss_click_*`` terms: each click query against the cell it was placed in
        (``targets[i]["click_cells"]``, -1: none, its class target is then "no object")."""
        if any("click_cells" not in t for t in targets):
            raise ValueError("SetCriterion: the outputs hold click queries but the targets say "
                             "no click_cells (training.clicks.sample_clicks gives both)")
        device = outputs["click_masks"].device
        matches = []
        for t in targets:
            cells = t["click_cells"].to(device)
            src = torch.nonzero(cells >= 0).flatten()
            matches.append((src, cells[src]))
        levels = self._supervised(outputs)
        n_clicks = num_masks_across_processes(sum(len(s) for s, _ in matches), device)
        gt_masks = [t["masks"] for t in match_targets]
        terms = self.mask_losses([out["click_masks"] for _, out in levels],
                                 [matches] * len(levels), gt_masks, n_clicks, generator)
        losses = {}
        for (suffix, out), (bce, dice) in zip(levels, terms):
            losses["loss_click_ce" + suffix] = self.loss_ce(out["click_logits"], matches,
                                                            match_targets)
            losses["loss_click_bce" + suffix] = bce
            losses["loss_click_dice" + suffix] = dice
        return losses

    def _supervised(self, outputs: dict) -> list[tuple[str, dict]]:
        """The outputs the loss scores, with their key suffixes: the final one (``""``) and,
        with deep supervision, each auxiliary one (``".i"``)."""
        levels: list[tuple[str, dict]] = [("", outputs)]
        if self.deep_supervision:
            levels += [(f".{i}", aux) for i, aux in enumerate(outputs.get("aux_outputs", []))]
        return levels

    def _split_groups(self, output: dict) -> list[dict[str, torch.Tensor]]:
        """One output's per-query tensors cut into ``query_groups`` equal query groups."""
        total = output["pred_logits"].shape[1]
        expected = None if self.num_queries is None else self.num_queries * self.query_groups
        if total % self.query_groups or expected not in (None, total):
            of = "" if self.num_queries is None else f" of {self.num_queries}"
            raise ValueError(f"SetCriterion: {total} queries do not split into "
                             f"{self.query_groups} groups{of} (is the model in training mode?)")
        size = total // self.query_groups
        per_query = [k for k in ("pred_logits", "pred_masks", "pred_centres", "query_embeddings")
                     if k in output]
        return [{k: output[k][:, g * size:(g + 1) * size] for k in per_query}
                for g in range(self.query_groups)]

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


SET_LOSS_KEYS = ("loss", "loss_ce", "loss_bce", "loss_dice")


def set_training_loss(model_config: Any, cfg: Any, device: torch.device
                      ) -> tuple[Callable[..., dict[str, torch.Tensor]], tuple[str, ...]]:
    """The query families' training loss (IAUNet, PCTrans: the registry names it): ``fn(net,
    images, targets, autocast)`` running the network and the :class:`SetCriterion` configured
    by the :class:`~napari_iaunet.training.TrainConfig` ``cfg``, and the terms to report."""
    criterion = SetCriterion(
        model_config.num_classes, weight_ce=cfg.weight_ce, weight_bce=cfg.weight_bce,
        weight_dice=cfg.weight_dice, no_object_weight=cfg.no_object_weight,
        num_points=cfg.num_points, weight_centre=cfg.weight_centre, weight_qec=cfg.weight_qec,
        weight_mcc=cfg.weight_mcc, qec_temperature=cfg.qec_temperature,
        mcc_temperature=cfg.mcc_temperature,
        query_groups=getattr(model_config, "query_groups", 1),
        num_queries=getattr(model_config, "num_queries", None)).to(device)
    keys = SET_LOSS_KEYS
    if getattr(model_config, "centre_guidance", False):
        keys += ("loss_centre",)
    if getattr(model_config, "contrast_losses", False):
        keys += ("loss_qec", "loss_mcc")
    per_image = int(getattr(cfg, "click_queries", 0))
    hard_share = float(getattr(cfg, "hard_clicks", 0.0))
    smallest = getattr(cfg, "click_target", "clicked") == "smallest"
    if per_image:
        keys += ("loss_click_bce", "loss_click_dice")

    def set_loss(net: torch.nn.Module, images: torch.Tensor,
                 targets: list[dict[str, torch.Tensor]],
                 autocast: Callable[[], AbstractContextManager]) -> dict[str, torch.Tensor]:
        extra = {}
        if per_image:
            gt_masks = [t["masks"] for t in targets]
            prefer = None
            if hard_share:  # the segmentation is fixed (train_click_decoder): ask it first
                with torch.no_grad(), autocast():
                    prefer = missed_cells(net(images), gt_masks)
            clicks, cells = sample_clicks(gt_masks, per_image, prefer=prefer,
                                          prefer_share=hard_share)
            if smallest:  # one answer per click: the smallest cell under it
                cells = smallest_cells_at(gt_masks, clicks, cells)
            targets = [{**t, "click_cells": c} for t, c in zip(targets, cells)]
            extra["clicks"] = clicks.to(images.device)
        with autocast():
            outputs = net(images, **extra)
        return criterion(outputs, targets)

    return set_loss, keys
