"""A forward pass and the family's post-processing: prepared images → :class:`Instances`.

The model registry names one of these per family (``ModelFamily.predict``); the
:class:`~napari_iaunet.inference.Segmenter` calls it for every batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..instances import Instances
from .device import autocast
from .flips import ViewAgreement, flip_views, merge_views
from .preprocess import PreparedImage, pad_batch

if TYPE_CHECKING:
    from .segmenter import Segmenter

__all__ = ["predict_detections", "predict_queries"]


@torch.inference_mode()
def predict_queries(segmenter: Segmenter, prepared: list[PreparedImage],
                    candidate_sources: list | None = None) -> list[Instances]:
    """Query models (IAUNet, PCTrans): one padded batch in, per-query class scores and masks
    out, post-processed with the segmenter's effective settings.

    ``candidate_sources``: when a list, every query of each image is appended to it as a
    :class:`~napari_iaunet.inference.candidates.CandidateSource` (click-to-add candidates).

    With ``segmenter.flips > 1`` the batch runs with its mirror images
    (:mod:`~napari_iaunet.inference.flips`) and the instances are the merged views; the
    click-to-add candidates stay the unflipped view's queries.
    """
    from .postprocess import postprocess

    batch = pad_batch([p.tensor for p in prepared])
    flips = segmenter.flips
    if flips > 1:
        batch = flip_views(batch, flips)  # view after view: the first len(prepared) are unflipped
    if segmenter.fuse and segmenter.device.type == "cpu":  # the fused CPU copy is channels-last
        batch = batch.contiguous(memory_format=torch.channels_last)
    # a model trained with click queries keeps what answering clicks needs with its candidates
    keep = candidate_sources is not None and bool(getattr(segmenter.config, "click_queries",
                                                           False))
    outputs = _forward(segmenter, batch, keep, chunk=max(segmenter.batch_size, len(prepared)))
    padded = tuple(batch.shape[-2:])
    settings = segmenter.effective_settings()
    if candidate_sources is not None:
        from .candidates import CandidateSource

        for i, p in enumerate(prepared):
            src = CandidateSource.from_outputs(outputs["pred_logits"][i],
                                               outputs["pred_masks"][i], padded,
                                               p.resized_shape, p.original_shape,
                                               mask_threshold=settings.mask_threshold)
            if keep:  # float16 on the host: ~7 MB for a 512-px view of a Lite0 model
                src.click_context = outputs["click_context"].select(i).to("cpu", torch.float16)
            candidate_sources.append(src)
    if flips > 1:
        merged = merge_views(outputs["pred_logits"], outputs["pred_masks"], flips,
                             settings.score_threshold, settings.mask_threshold)
        queries = [(logits, masks) for logits, masks, _ in merged]
        for _, _, agreement in merged:
            segmenter.last_agreement = (segmenter.last_agreement or ViewAgreement()) + agreement
    else:
        queries = list(zip(outputs["pred_logits"], outputs["pred_masks"]))
    return [
        postprocess(logits, masks, padded, p.resized_shape, p.original_shape, settings)
        for (logits, masks), p in zip(queries, prepared, strict=True)
    ]


def _forward(segmenter: Segmenter, batch: torch.Tensor, keep_context: bool, chunk: int
             ) -> dict[str, torch.Tensor]:
    """The network on ``batch`` ``chunk`` images per pass (the mirror views of a CPU segmenter
    run one at a time: a batch of four costs 20–27 % more per image there, docs/performance.md).
    The first chunk holds the unflipped view of every image and keeps the click context."""
    model = segmenter.inference_model()
    parts = []
    for start in range(0, batch.shape[0], chunk):
        with autocast(segmenter.device, segmenter.amp):
            parts.append(model(batch[start:start + chunk], with_aux=False,
                               **({"keep_context": True} if keep_context and start == 0
                                  else {})))
    if len(parts) == 1:
        return parts[0]
    merged = {k: torch.cat([p[k] for p in parts]) for k in ("pred_logits", "pred_masks")}
    if "click_context" in parts[0]:
        merged["click_context"] = parts[0]["click_context"]
    return merged


@torch.inference_mode()
def predict_detections(segmenter: Segmenter, prepared: list[PreparedImage],
                       candidate_sources: list | None = None) -> list[Instances]:
    """Mask R-CNN: unpadded images in, boxes + 28×28 masks out, pasted inside their boxes.

    A detector has no queries to keep: ``candidate_sources`` gets None per image.
    """
    if candidate_sources is not None:
        candidate_sources.extend([None] * len(prepared))
    from .detections import detections_to_instances

    images = [p.tensor[:, :p.resized_shape[0], :p.resized_shape[1]] for p in prepared]
    with autocast(segmenter.device, segmenter.amp):
        outputs = segmenter.model.detect(images, score_threshold=segmenter.settings.score_threshold)
    return [
        detections_to_instances(o["boxes"], o["scores"], o["labels"], o["masks"],
                                p.resized_shape, p.original_shape, segmenter.settings)
        for o, p in zip(outputs, prepared)
    ]
