"""Mask R-CNN, the second model family: torchvision's detector behind the engine's conventions.

Two variants (:class:`~napari_iaunet.model.config.MaskRCNNConfig` ``variant``):

* ``r50_fpn`` — torchvision's ``maskrcnn_resnet50_fpn`` (ResNet-50, FPN on all four stages plus
  a max-pool level, anchors 32…512, 7×7 box RoIAlign, 14×14 mask RoIAlign), built from the same
  components so a local COCO weights file loads by name.
* ``r18_cbam`` — the LIVECell study's custom model: ResNet-18 with a CBAM block (channel then
  spatial attention) after each of its four stages, an FPN over the outputs of stages 2-4
  (strides 8/16/32, 256 channels, no extra level), one anchor size per level (32/64/128) with
  ratios 0.5/1/2, 7×7 RoIAlign and a 2×1024 box head (``TwoMLPHead``), a mask head of four 3×3
  convolutions and a deconvolution (``MaskRCNNHeads`` + ``MaskRCNNPredictor``), score threshold
  0.4 and NMS 0.5. Only CBAM is written here; everything else is torchvision's.

Images reach the network already resized (longest side = ``input_size``) and normalised with the
config's ``pixel_mean``/``pixel_std`` on the 0-255 scale, like IAUNet's. The model's transform
(:class:`PreparedTransform`) therefore only pads and batches, and in eval mode returns boxes in
input pixels and each detection's 28×28 mask probabilities (no full-image masks); the
:class:`~napari_iaunet.inference.Segmenter` pastes them inside their boxes.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import resnet18
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign

from .config import MaskRCNNConfig

__all__ = [
    "CBAM",
    "MaskRCNNModel",
    "PreparedTransform",
    "build_maskrcnn",
    "load_maskrcnn_weights",
]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------- CBAM
class ChannelAttention(nn.Module):
    """CBAM channel attention: a shared 2-layer MLP on average- and max-pooled features."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(x.mean(dim=(2, 3), keepdim=True))
        peak = self.mlp(x.amax(dim=(2, 3), keepdim=True))
        return x * torch.sigmoid(avg + peak)


class SpatialAttention(nn.Module):
    """CBAM spatial attention: a 7×7 convolution over the channel mean and max."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al. 2018): channel, then spatial."""

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))


class _BackboneWithFPN(nn.Module):
    """Named stage outputs → torchvision FPN, without an extra pooled level."""

    def __init__(self, body: nn.Module, return_layers: dict[str, str],
                 in_channels: list[int], out_channels: int = 256) -> None:
        super().__init__()
        self.body = IntermediateLayerGetter(body, return_layers=return_layers)
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=None)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.fpn(self.body(x))


def resnet18_cbam_fpn() -> _BackboneWithFPN:
    """ResNet-18 with CBAM after each stage; FPN (256 ch) over stages 2-4 as levels '0'-'2'."""
    net = resnet18(weights=None)
    body = nn.Sequential(OrderedDict([
        ("conv1", net.conv1), ("bn1", net.bn1), ("relu", net.relu), ("maxpool", net.maxpool),
        ("layer1", net.layer1), ("cbam1", CBAM(64)),
        ("layer2", net.layer2), ("cbam2", CBAM(128)),
        ("layer3", net.layer3), ("cbam3", CBAM(256)),
        ("layer4", net.layer4), ("cbam4", CBAM(512)),
    ]))
    return _BackboneWithFPN(body, {"cbam2": "0", "cbam3": "1", "cbam4": "2"}, [128, 256, 512])


# ---------------------------------------------------------------------------------- the model
class PreparedTransform(GeneralizedRCNNTransform):
    """torchvision's transform minus what the engine already did: no resize, no normalisation,
    and (eval mode) no pasting of full-image masks — boxes stay in input pixels and ``masks``
    are each detection's ``(1, 28, 28)`` probabilities."""

    def __init__(self, size_divisible: int = 32) -> None:
        super().__init__(min_size=1, max_size=1, image_mean=[0.0, 0.0, 0.0],
                         image_std=[1.0, 1.0, 1.0], size_divisible=size_divisible)

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        return image

    def resize(self, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        return image, target

    def postprocess(self, result: list[dict[str, torch.Tensor]],
                    image_shapes: list[tuple[int, int]],
                    original_image_sizes: list[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
        return result

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size_divisible={self.size_divisible})"


class MaskRCNNModel(MaskRCNN):
    """torchvision's :class:`MaskRCNN` carrying its :class:`MaskRCNNConfig` as ``config``.

    Train mode: ``model(images, targets)`` → torchvision's loss dict. Eval mode: ``model(images)``
    (a list of normalised ``(3, h, w)`` tensors, or a batch) → per image ``{"boxes" (K, 4) xyxy in
    input pixels, "scores", "labels" (1…C), "masks" (K, 1, 28, 28) probabilities}``.
    """

    def __init__(self, backbone: nn.Module, config: MaskRCNNConfig, **kwargs: Any) -> None:
        super().__init__(
            backbone, num_classes=None if "mask_predictor" in kwargs else config.num_classes + 1,
            box_score_thresh=config.score_threshold, box_nms_thresh=config.nms_threshold,
            box_detections_per_img=config.detections_per_img,
            box_batch_size_per_image=config.box_batch_size_per_image, **kwargs)
        self.transform = PreparedTransform(config.size_divisibility)
        self.config = config

    @torch.no_grad()
    def detect(self, images: list[torch.Tensor], score_threshold: float | None = None
               ) -> list[dict[str, torch.Tensor]]:
        """Eval-mode detections with this call's ``score_threshold`` (None: the config's)."""
        old = self.roi_heads.score_thresh
        if score_threshold is not None:
            self.roi_heads.score_thresh = float(score_threshold)
        try:
            return self(list(images))
        finally:
            self.roi_heads.score_thresh = old


def build_maskrcnn(config: MaskRCNNConfig, weights: str | Path | None = None) -> MaskRCNNModel:
    """A randomly initialised Mask R-CNN for ``config`` (nothing is downloaded); ``weights``
    loads a local file: a torchvision COCO Mask R-CNN state dict or an ImageNet ResNet one
    (:func:`load_maskrcnn_weights`)."""
    if config.variant == "r50_fpn":
        # exactly maskrcnn_resnet50_fpn(weights=None, weights_backbone=None): BatchNorm2d, all
        # layers trainable, torchvision's anchors / RoI pooling / heads
        backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None,
                                       norm_layer=nn.BatchNorm2d, trainable_layers=5)
        model = MaskRCNNModel(backbone, config)
    elif config.variant == "r18_cbam":
        backbone = resnet18_cbam_fpn()
        levels = ["0", "1", "2"]
        classes = config.num_classes + 1
        model = MaskRCNNModel(
            backbone, config,
            rpn_anchor_generator=AnchorGenerator(sizes=((32,), (64,), (128,)),
                                                 aspect_ratios=((0.5, 1.0, 2.0),) * 3),
            box_roi_pool=MultiScaleRoIAlign(levels, output_size=7, sampling_ratio=2),
            box_head=TwoMLPHead(backbone.out_channels * 7 * 7, 1024),
            box_predictor=FastRCNNPredictor(1024, classes),
            mask_roi_pool=MultiScaleRoIAlign(levels, output_size=14, sampling_ratio=2),
            mask_head=MaskRCNNHeads(backbone.out_channels, [256, 256, 256, 256], 1),
            mask_predictor=MaskRCNNPredictor(256, 256, classes),
        )
    else:  # MaskRCNNConfig validates the variant; this guards against a new, unbuilt one
        raise ValueError(f"no builder for Mask R-CNN variant {config.variant!r}")
    if weights is not None:
        load_maskrcnn_weights(model, weights)
    return model


def load_maskrcnn_weights(model: MaskRCNNModel, path: str | Path) -> int:
    """Copy every tensor of a local weights file whose name and shape fit ``model``.

    Accepts a torchvision Mask R-CNN state dict (e.g. the COCO ``maskrcnn_resnet50_fpn`` file:
    everything but the 91-class predictors fits) or a plain ResNet one (ImageNet: loaded into
    ``backbone.body``), optionally wrapped in ``{"model": …}`` / ``{"state_dict": …}``. Returns
    the number of tensors loaded; a file with none that fit raises ValueError.
    """
    path = Path(path).expanduser()
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds no state dict")
    state = {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not any(k.startswith(("backbone.", "rpn.", "roi_heads.")) for k in state):
        state = {f"backbone.body.{k}": v for k, v in state.items()}  # a bare ResNet
    own = model.state_dict()
    fit = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not fit:
        raise ValueError(f"{path}: no tensor fits this {model.config.describe()} "
                         "(is it a Mask R-CNN or ResNet state dict of the same depth?)")
    model.load_state_dict(fit, strict=False)
    log.info("%s: loaded %d of %d tensors (%d in the file did not fit)", path, len(fit),
             len(own), len(state) - len(fit))
    return len(fit)
