"""The model families, each declared once.

A family is one :class:`ModelFamily` entry in :data:`FAMILIES`: its config class (stored in
every checkpoint under the config's ``family`` name), the function that builds the network, its
training loss, how its outputs become instances, its inference defaults, its display name and
the "new model" presets the fine-tune widget offers. Everything else (checkpoint loading, the
trainer, the Segmenter, the command line, the widgets) asks this table instead of comparing
family names.

The builder, loss and prediction functions are named as ``"module:function"`` and imported on
first use, so this module imports neither torch nor the training or inference packages
(docs/architecture.md says how to add a family).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .config import IAUNetConfig, MaskRCNNConfig, ModelConfig, PCTransConfig

__all__ = [
    "DEFAULT_FAMILY",
    "FAMILIES",
    "ModelFamily",
    "NewModel",
    "build_model",
    "config_from_dict",
    "family_of",
    "is_model_config",
    "new_model_config",
    "new_models",
]


@dataclass(frozen=True)
class NewModel:
    """A "new model" choice of the fine-tune widget: a family's config with some fields set,
    started from random weights or (``pretrained``) from installed ImageNet backbone weights."""

    key: str
    label: str
    options: dict[str, Any] = field(default_factory=dict)
    pretrained: bool = False


@dataclass(frozen=True)
class ModelFamily:
    """Everything the rest of the package needs to know about one model family."""

    name: str  # the config's ``family`` (stored in checkpoints; IAUNet's is implied)
    display_name: str
    config_class: type
    builder: str  # "module:function(config, backbone_weights) -> nn.Module"
    loss: str  # "module:function(model_config, train_config, device) -> (loss_fn, loss_keys)"
    # "module:function(segmenter, prepared_images, candidate_sources=None) -> list[Instances]";
    # a list as candidate_sources gets each image's query masks (None for a detector)
    predict: str
    query_based: bool = True  # per-query masks and class scores: query clustering applies
    fuses: bool = True  # the Segmenter folds BatchNorm and fuses conv+ReLU for inference
    clusters_queries: bool = False  # inference merges near-duplicate queries by default
    takes_backbone: bool = True  # built around a timm backbone of model.encoder.BACKBONES
    new_models: tuple[NewModel, ...] = ()

    def build(self, config: ModelConfig, backbone_weights: str | Path | None = None) -> Any:
        """A randomly initialised network for ``config`` (``backbone_weights``: a local file,
        or ``"imagenet"`` for the weights a pip package carries)."""
        return _resolve(self.builder)(config, backbone_weights)

    def training_loss(self, model_config: ModelConfig, train_config: Any, device: Any
                      ) -> tuple[Callable[..., Any], tuple[str, ...]]:
        """The family's loss ``fn(net, images, targets, autocast)`` and the terms to report."""
        return _resolve(self.loss)(model_config, train_config, device)

    def predictor(self) -> Callable[..., Any]:
        """``fn(segmenter, prepared_images, candidate_sources=None) -> list[Instances]``: a
        forward pass and the family's post-processing."""
        return _resolve(self.predict)

    def new_config(self, class_names: tuple[str, ...] | list[str], input_size: int,
                   **options: Any) -> ModelConfig:
        """A config of this family; ``options`` that are not fields of its config (another
        family's settings) are left out, None values too."""
        known = {f.name for f in fields(self.config_class)}
        values = {k: v for k, v in options.items() if k in known and v is not None}
        return self.config_class(num_classes=len(class_names), class_names=tuple(class_names),
                                 input_size=int(input_size), **values)


def _resolve(target: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


DEFAULT_FAMILY = "iaunet"  # a config without "family" (every checkpoint before PCTrans) is one
FAMILIES: dict[str, ModelFamily] = {
    "iaunet": ModelFamily(
        name="iaunet", display_name="IAUNet", config_class=IAUNetConfig,
        builder="napari_iaunet.model.iaunet:build_iaunet",
        loss="napari_iaunet.training.losses:set_training_loss",
        predict="napari_iaunet.inference.predict:predict_queries",
        new_models=(
            NewModel("iaunet_lite0_imagenet", "new IAUNet-EfficientNet-Lite0 (ImageNet encoder)",
                     {"backbone": "efficientnet_lite0", "hidden_dim": 128, "mask_dim": 128,
                      "match_brightness": True}, pretrained=True),
            NewModel("iaunet", "new IAUNet-R50 (random weights)"),
        )),
    "pctrans": ModelFamily(
        name="pctrans", display_name="PCTrans", config_class=PCTransConfig,
        builder="napari_iaunet.model.pctrans:build_pctrans",
        loss="napari_iaunet.training.losses:set_training_loss",
        predict="napari_iaunet.inference.predict:predict_queries",
        clusters_queries=True,  # PCTrans' inference merges near-duplicate queries
        new_models=(NewModel("pctrans", "new PCTrans-R50 (random weights)"),)),
    "maskrcnn": ModelFamily(
        name="maskrcnn", display_name="Mask R-CNN", config_class=MaskRCNNConfig,
        builder="napari_iaunet.model.maskrcnn:build_maskrcnn",
        loss="napari_iaunet.training.maskrcnn_loss:maskrcnn_training_loss",
        predict="napari_iaunet.inference.predict:predict_detections",
        query_based=False, fuses=False, takes_backbone=False,
        new_models=(
            NewModel("maskrcnn_r18_cbam", "new Mask R-CNN R18-CBAM (random weights)",
                     {"variant": "r18_cbam"}),
            NewModel("maskrcnn_r50_fpn", "new Mask R-CNN R50-FPN (random weights)",
                     {"variant": "r50_fpn"}),
        )),
}


def family_of(config: ModelConfig) -> ModelFamily:
    """The family a config belongs to."""
    name = getattr(config, "family", None)
    if name not in FAMILIES:
        raise ValueError(f"{type(config).__name__} is not the config of a known model family "
                         f"({', '.join(FAMILIES)})")
    return FAMILIES[name]


def is_model_config(config: Any) -> bool:
    """Whether ``config`` is the config of a registered family."""
    return isinstance(config, tuple(f.config_class for f in FAMILIES.values()))


def config_from_dict(d: dict[str, Any]) -> ModelConfig:
    """The config a checkpoint's dict describes: its ``family`` field picks the class (none:
    IAUNet, as in every checkpoint written before the other families were added)."""
    name = d.get("family", DEFAULT_FAMILY)
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r} (known: {', '.join(FAMILIES)})")
    return FAMILIES[name].config_class.from_dict(d)


def build_model(config: ModelConfig, backbone_weights: str | Path | None = None) -> Any:
    """A randomly initialised network of ``config``'s family; ``backbone_weights`` loads a
    local backbone file, or ``"imagenet"`` the ImageNet weights an installed package carries
    (Mask R-CNN: a COCO Mask R-CNN or ResNet state dict)."""
    return family_of(config).build(config, backbone_weights)


def new_models() -> dict[str, tuple[ModelFamily, NewModel]]:
    """Every family's "new model" presets by key, in table order."""
    return {m.key: (f, m) for f in FAMILIES.values() for m in f.new_models}


def new_model_config(key: str, class_names: tuple[str, ...] = ("cell",)) -> ModelConfig:
    """The config of the "new model" preset ``key``."""
    presets = new_models()
    if key not in presets:
        raise ValueError(f"unknown new model {key!r} (known: {', '.join(presets)})")
    family, preset = presets[key]
    options = dict(preset.options)
    input_size = options.pop("input_size", family.config_class().input_size)
    return family.new_config(class_names, input_size, **options)
