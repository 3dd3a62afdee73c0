"""IAUNet = backbone encoder + IAUNet decoder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import IAUNetConfig
from .decoder import IAUNetDecoder
from .encoder import Encoder, build_encoder
from .inputs import check_images

__all__ = ["IAUNet", "build_iaunet"]


class IAUNet(nn.Module):
    """Instance-aware U-Net for instance segmentation.

    ``model(images)`` takes normalised ``(B, 3, H, W)`` images (``H``, ``W`` multiples of 32,
    any aspect ratio) and returns ``{"pred_logits": (B, Q, C+1), "pred_masks": (B, Q, H/4, W/4),
    "aux_outputs": [8 x {"pred_logits", "pred_masks"}]}`` (float32, mask logits at 1/4 scale).
    Set ``with_aux = False`` (or pass ``with_aux=False``) to skip the earlier blocks' heads at
    inference; the final outputs are identical.
    """

    def __init__(self, encoder: Encoder, decoder: IAUNetDecoder, config: IAUNetConfig) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.config = config
        self.with_aux = True

    def forward(self, images: torch.Tensor, with_aux: bool | None = None,
                clicks: torch.Tensor | None = None, keep_context: bool = False
                ) -> dict[str, Any]:
        """``clicks (B, K, 2)``: also answer one click query per point (``(y, x)`` fractions of
        the input) as ``click_logits`` / ``click_masks``; ``keep_context``: also return what
        answering later clicks needs (``click_context``; :meth:`IAUNetDecoder.decode`)."""
        check_images(images, "IAUNet")
        features = self.encoder(images)
        return self.decoder(features, with_aux=self.with_aux if with_aux is None else with_aux,
                            clicks=clicks, keep_context=keep_context)


def build_iaunet(config: IAUNetConfig, backbone_weights: str | Path | None = None) -> IAUNet:
    """A randomly initialised IAUNet for ``config`` (``backbone_weights``: a local backbone file
    or ``"imagenet"``, see :func:`~napari_iaunet.model.encoder.build_encoder`). Any family:
    :func:`napari_iaunet.model.build_model`."""
    encoder = build_encoder(
        config.backbone, img_size=config.input_size, pretrained_path=backbone_weights
    )
    decoder = IAUNetDecoder(
        encoder_channels=encoder.channels,
        num_classes=config.num_classes,
        num_queries=config.num_queries,
        hidden_dim=config.hidden_dim,
        mask_dim=config.mask_dim,
        num_heads=config.num_heads,
        dec_layers=config.dec_layers,
        dim_feedforward=config.dim_feedforward,
        dropout=config.dropout,
        centre_guidance=config.centre_guidance,
        dynamic_mask_head=config.dynamic_mask_head,
        contrast_losses=config.contrast_losses,
        query_groups=config.query_groups,
        masked_attention=config.masked_attention,
        click_decoder=config.click_decoder,
    )
    return IAUNet(encoder, decoder, config)
