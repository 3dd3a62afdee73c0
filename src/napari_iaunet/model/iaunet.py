"""IAUNet = backbone encoder + IAUNet decoder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import IAUNetConfig, ModelConfig
from .decoder import IAUNetDecoder
from .encoder import Encoder, build_encoder

__all__ = ["IAUNet", "build_model", "check_images"]


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

    def forward(self, images: torch.Tensor, with_aux: bool | None = None) -> dict[str, Any]:
        check_images(images, "IAUNet")
        features = self.encoder(images)
        return self.decoder(features, with_aux=self.with_aux if with_aux is None else with_aux)


def check_images(images: torch.Tensor, model_name: str) -> None:
    """Raise a clear ``ValueError`` unless ``images`` is ``(B, C, H, W)`` with ``H``, ``W``
    multiples of 32 (what the query-based models take)."""
    if images.dim() != 4:
        raise ValueError(f"{model_name} expects (B, 3, H, W) images, got shape "
                         f"{tuple(images.shape)}")
    height, width = images.shape[-2:]
    if height % 32 or width % 32:
        raise ValueError(f"{model_name} needs H and W divisible by 32, got {height}x{width}")


def build_model(config: ModelConfig, backbone_weights: str | Path | None = None) -> nn.Module:
    """A randomly initialised model for ``config``; ``backbone_weights`` loads local weights.

    The config's family picks the network: an :class:`IAUNet` for :class:`IAUNetConfig`, a
    :class:`~napari_iaunet.model.pctrans.PCTrans` for
    :class:`~napari_iaunet.model.config.PCTransConfig`, a torchvision Mask R-CNN for
    :class:`~napari_iaunet.model.config.MaskRCNNConfig` (``backbone_weights`` may then be a
    COCO Mask R-CNN or ResNet state dict).
    """
    if config.family == "maskrcnn":
        from .maskrcnn import build_maskrcnn

        return build_maskrcnn(config, backbone_weights)
    if config.family == "pctrans":
        from .pctrans import build_pctrans

        return build_pctrans(config, backbone_weights)
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
    )
    return IAUNet(encoder, decoder, config)
