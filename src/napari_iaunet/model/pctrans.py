"""PCTrans = backbone encoder + deformable-attention pixel decoder + query decoder with centre
guidance, a dynamic mask head and contrast losses (Chen et al., ICCV Workshops 2023)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import PCTransConfig
from .decoder import IAUNetDecoder
from .deformable import DeformablePixelDecoder
from .encoder import Encoder, build_encoder
from .inputs import check_images

__all__ = ["PCTrans", "build_pctrans"]


class PCTrans(nn.Module):
    """Query-based instance segmentation with a multi-scale deformable-attention pixel decoder.

    Takes and returns what :class:`~napari_iaunet.model.iaunet.IAUNet` does (normalised
    ``(B, 3, H, W)`` images, ``H`` and ``W`` multiples of 32 → ``pred_logits``, ``pred_masks``
    at 1/4 scale, ``pred_centres``, ``aux_outputs`` ...), so the set loss, the Segmenter and
    checkpoints serve both. The query decoder is IAUNet's (queries visit the 1/32, 1/16 and 1/8
    memories, ``dec_layers`` blocks each) without its U-Net pixel decoder.
    """

    def __init__(self, encoder: Encoder, pixel_decoder: DeformablePixelDecoder,
                 decoder: IAUNetDecoder, config: PCTransConfig) -> None:
        super().__init__()
        self.encoder = encoder
        self.pixel_decoder = pixel_decoder
        self.decoder = decoder
        self.config = config
        self.with_aux = True

    def forward(self, images: torch.Tensor, with_aux: bool | None = None) -> dict[str, Any]:
        check_images(images, "PCTrans")
        memories, mask_features = self.pixel_decoder(self.encoder(images))
        return self.decoder.decode(memories, mask_features,
                                   with_aux=self.with_aux if with_aux is None else with_aux)


def build_pctrans(config: PCTransConfig,
                  backbone_weights: str | Path | None = None) -> PCTrans:
    """A randomly initialised PCTrans for ``config`` (``backbone_weights``: a local file)."""
    encoder = build_encoder(config.backbone, img_size=config.input_size,
                            pretrained_path=backbone_weights)
    pixel_decoder = DeformablePixelDecoder(
        encoder.channels, hidden_dim=config.hidden_dim, mask_dim=config.mask_dim,
        num_heads=config.num_heads, num_layers=config.enc_layers, num_points=config.enc_points,
        dim_feedforward=config.enc_dim_feedforward, dropout=config.dropout)
    decoder = IAUNetDecoder(
        encoder_channels=encoder.channels, num_classes=config.num_classes,
        num_queries=config.num_queries, hidden_dim=config.hidden_dim,
        mask_dim=config.mask_dim, num_heads=config.num_heads, dec_layers=config.dec_layers,
        dim_feedforward=config.dim_feedforward, dropout=config.dropout,
        centre_guidance=config.centre_guidance, dynamic_mask_head=config.dynamic_mask_head,
        contrast_losses=config.contrast_losses, unet_pixel_decoder=False,
        query_groups=config.query_groups, masked_attention=config.masked_attention)
    return PCTrans(encoder, pixel_decoder, decoder, config)
