"""The model description that travels inside every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, TypeVar

__all__ = [
    "INTENSITY_MODES",
    "MASKRCNN_VARIANTS",
    "REVVITY_MEAN",
    "REVVITY_STD",
    "IAUNetConfig",
    "MaskRCNNConfig",
    "ModelConfig",
    "PCTransConfig",
]

_C = TypeVar("_C", bound="_FromDict")

# How image values reach the 0-255 scale (napari_iaunet.inference.preprocess.to_model_range):
#   "percentile": every image, whatever its dtype, is stretched so that its 0.1 and 99.9
#                 percentiles land on 0 and 255 (the same picture as uint8, uint16 or float
#                 reaches the network the same way); models trained since 2026-12-03;
#   "dtype":      uint8 values are kept as they are and only other dtypes are stretched (models
#                 written before, whose configs have no ``intensity``).
INTENSITY_MODES = ("percentile", "dtype")

# Revvity-25 statistics on raw 0-255 pixel values (the authors' dataset config).
REVVITY_MEAN = 133.488
REVVITY_STD = 26.903


class _FromDict:
    """``from_dict`` / ``replace`` shared by the model configs (dataclasses with ``to_dict``)."""

    family: ClassVar[str]

    def _check_common(self) -> None:
        """Normalise and check the fields every family has: classes, mean/std, input size."""
        name = type(self).__name__
        self.class_names = tuple(self.class_names)
        self.pixel_mean = tuple(float(v) for v in self.pixel_mean)
        self.pixel_std = tuple(float(v) for v in self.pixel_std)
        if len(self.class_names) != self.num_classes:
            if self.class_names == ("cell",):
                self.class_names = tuple(f"class_{i}" for i in range(self.num_classes))
            else:
                raise ValueError(f"{name}: {len(self.class_names)} class names for "
                                 f"num_classes={self.num_classes}")
        if len(self.pixel_mean) != 3 or len(self.pixel_std) != 3:
            raise ValueError(f"{name}: pixel_mean and pixel_std need 3 values (RGB)")
        if min(self.pixel_std) <= 0:
            raise ValueError(f"{name}: pixel_std must be positive")
        if self.intensity not in INTENSITY_MODES:
            raise ValueError(f"{name}: intensity must be one of {', '.join(INTENSITY_MODES)}, "
                             f"not {self.intensity!r}")
        if self.input_size % self.size_divisibility:
            raise ValueError(f"{name}: input_size {self.input_size} must be a multiple of "
                             f"{self.size_divisibility}")

    @classmethod
    def from_dict(cls: type[_C], d: dict[str, Any]) -> _C:
        """Inverse of ``to_dict``; unknown keys are an error (they mean another version)."""
        d = _pop_family(d, cls.family)
        # written before the field existed: uint8 values went in raw (see INTENSITY_MODES)
        d.setdefault("intensity", "dtype")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown keys {sorted(unknown)}")
        return cls(**d)

    def replace(self: _C, **changes: Any) -> _C:
        """A copy with some fields changed."""
        d = self.to_dict()
        d.update(changes)
        return type(self).from_dict(d)


@dataclass
class IAUNetConfig(_FromDict):
    """Everything needed to rebuild an IAUNet and feed it images.

    ``pixel_mean`` / ``pixel_std`` act on images scaled to the 0-255 range (see
    :func:`napari_iaunet.inference.preprocess.to_model_range`), one value per channel.
    ``match_brightness``: shift every image's mean intensity to the mean of ``pixel_mean`` before
    normalising (training and inference alike), so a plate imaged brighter or darker than the
    training images looks like them (:func:`~napari_iaunet.inference.preprocess.brightness_offset`).
    ``intensity``: ``"percentile"`` stretches every image, whatever its dtype, to 0-255 by its
    0.1/99.9 percentiles; ``"dtype"`` (configs written before the field) keeps uint8 raw.
    """

    backbone: str = "resnet50"
    num_queries: int = 100
    num_classes: int = 1
    class_names: tuple[str, ...] = ("cell",)
    hidden_dim: int = 256
    mask_dim: int = 256
    num_heads: int = 8
    dec_layers: int = 3  # transformer blocks per pixel-decoder level (3 levels)
    dim_feedforward: int = 1024
    dropout: float = 0.1
    input_size: int = 512  # longest image side fed to the network
    size_divisibility: int = 32
    pixel_mean: tuple[float, float, float] = (REVVITY_MEAN,) * 3
    pixel_std: tuple[float, float, float] = (REVVITY_STD,) * 3
    match_brightness: bool = False
    intensity: str = "percentile"
    # PCTrans options (docs/model_families.md), all off by default: a config without them
    # builds exactly the original IAUNet (same parameters and state-dict keys).
    centre_guidance: bool = False  # queries predict their centre; it guides cross-attention
    dynamic_mask_head: bool = False  # CondInst-style per-query 1x1 convs (needs centre_guidance)
    contrast_losses: bool = False  # QEC + MCC training losses (no parameters)
    # Group DETR training (Chen et al., ICCV 2023): training runs this many independent copies
    # of the queries, each matched one-to-one to the ground truth and attending only to its own
    # group, so every image gives the decoder more positive matches per step; inference and
    # validation use the first group only (the output is that of a num_queries model).
    query_groups: int = 1
    # Mask2Former's masked attention (Cheng et al., CVPR 2022; not in IAUNet): from the second
    # transformer block on, each query attends only to the pixels its previous prediction
    # covers (mask probability ≥ 0.5; everywhere when that is empty). No new parameters.
    masked_attention: bool = False
    # trained to answer click queries too (TrainConfig.click_queries): one query per clicked
    # point, started from the pixel there, predicts the cell under it (the edit tools' "add").
    # No parameters: only what the model learnt changes.
    click_queries: bool = False
    # clicks answered by blocks and heads of their own (model.click_decoder), trained alone
    # (TrainConfig.train_click_decoder) so the segmentation stays exactly as it was. Needs
    # click_queries; adds a copy of the transformer blocks and heads to the weights.
    click_decoder: bool = False

    family: ClassVar[str] = "iaunet"  # not stored: a config without "family" is an IAUNet

    def __post_init__(self) -> None:
        self._check_common()
        if self.hidden_dim % self.num_heads:
            raise ValueError("IAUNetConfig: hidden_dim must be divisible by num_heads")
        if self.dynamic_mask_head and not self.centre_guidance:
            raise ValueError("IAUNetConfig: dynamic_mask_head needs centre_guidance (its relative "
                             "coordinates are taken to each query's predicted centre)")
        if self.query_groups < 1:
            raise ValueError("IAUNetConfig: query_groups must be ≥ 1")
        if self.query_groups > 1 and self.centre_guidance:
            raise ValueError(f"{type(self).__name__}: query groups (--query-groups) do not work "
                             "with centre guidance (PCTrans and its options): use one group")
        if self.click_decoder and not self.click_queries:
            raise ValueError(f"{type(self).__name__}: click_decoder answers click queries: it "
                             "needs click_queries")
        if self.click_queries and self.centre_guidance:
            raise ValueError(f"{type(self).__name__}: click queries (--click-queries) do not work "
                             "with centre guidance (PCTrans and its options)")

    @property
    def pctrans_options(self) -> tuple[str, ...]:
        """The PCTrans options switched on (empty for a plain IAUNet)."""
        return tuple(name for name in PCTRANS_OPTIONS if getattr(self, name))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe dict (lists instead of tuples).

        PCTrans options that are off are left out, so a plain IAUNet's dict is exactly the one
        written before the options existed (and older versions still read it).
        """
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        if not d["match_brightness"]:
            del d["match_brightness"]  # a dict without it reads in older versions
        if d["intensity"] == "dtype":
            del d["intensity"]  # what a dict without it means (older versions read it)
        if d["query_groups"] == 1:
            del d["query_groups"]  # likewise
        if not d["masked_attention"]:
            del d["masked_attention"]  # likewise
        if not d["click_queries"]:
            del d["click_queries"]  # likewise
        if not d["click_decoder"]:
            del d["click_decoder"]  # likewise
        if self.family == "iaunet":
            for name in PCTRANS_OPTIONS:
                if not d[name]:
                    del d[name]
        else:
            d = {"family": self.family, **d}
        return d

    def summary_line(self) -> str:
        """The architecture line of ``napari-iaunet info``."""
        return (f"backbone:    {self.backbone}, {self.num_queries} queries, "
                f"input {self.input_size}px")

    def describe(self) -> str:
        """One line naming the architecture (e.g. ``resnet50, 100 queries``)."""
        text = f"{self.backbone}, {self.num_queries} queries"
        if self.pctrans_options:
            text += " + " + ", ".join(o.replace("_", " ") for o in self.pctrans_options)
        if self.click_queries:
            text += ", answers clicks" + (" (own click decoder)" if self.click_decoder else "")
        return text


PCTRANS_OPTIONS = ("centre_guidance", "dynamic_mask_head", "contrast_losses")


@dataclass
class PCTransConfig(IAUNetConfig):
    """PCTrans (Chen et al., ICCVW 2023) as a family of its own: IAUNet's backbone, queries and
    transformer decoder, with PCTrans' multi-scale deformable-attention pixel decoder
    (``enc_layers`` layers over the 1/8-1/32 features, ``enc_points`` samples per head and
    level) in place of the U-Net pixel decoder, and its three other pieces switched on by
    default: centre guidance, the dynamic mask head and the QEC/MCC contrast losses. The
    Segmenter clusters near-duplicate queries for this family (PCTrans' inference).
    """

    centre_guidance: bool = True
    dynamic_mask_head: bool = True
    contrast_losses: bool = True
    enc_layers: int = 6
    enc_points: int = 4
    enc_dim_feedforward: int = 1024

    family: ClassVar[str] = "pctrans"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.enc_layers < 1 or self.enc_points < 1 or self.enc_dim_feedforward < 1:
            raise ValueError("PCTransConfig: enc_layers, enc_points and enc_dim_feedforward "
                             "must be ≥ 1")
        if self.hidden_dim % 32:
            raise ValueError("PCTransConfig: hidden_dim must be a multiple of 32 (GroupNorm "
                             "groups of the pixel decoder)")

    def summary_line(self) -> str:
        """The architecture line of ``napari-iaunet info``."""
        return f"model:       {self.describe()}, input {self.input_size}px"

    def describe(self) -> str:
        """One line naming the architecture (e.g. ``PCTrans resnet50, 100 queries``)."""
        text = (f"PCTrans {self.backbone}, {self.num_queries} queries, "
                f"{self.enc_layers} deformable encoder layers")
        off = [o.replace("_", " ") for o in PCTRANS_OPTIONS if not getattr(self, o)]
        return text + (f" (without {', '.join(off)})" if off else "")


# ---------------------------------------------------------------------------------- Mask R-CNN
# variant -> (display name, default box score threshold)
MASKRCNN_VARIANTS: dict[str, tuple[str, float]] = {
    # torchvision's maskrcnn_resnet50_fpn with its default score threshold
    "r50_fpn": ("Mask R-CNN R50-FPN", 0.05),
    # the LIVECell study's custom model: ResNet-18 + CBAM, score threshold 0.4
    "r18_cbam": ("Mask R-CNN R18-CBAM-FPN", 0.4),
}


@dataclass
class MaskRCNNConfig(_FromDict):
    """Everything needed to rebuild a Mask R-CNN (torchvision) and feed it images.

    Images are prepared exactly as for IAUNet (longest side to ``input_size``, 0-255 scale
    normalised with ``pixel_mean`` / ``pixel_std``, padded to ``size_divisibility``); the model's
    own transform neither resizes nor normalises again. ``num_classes`` counts foreground
    classes (torchvision's ``num_classes`` is one more, for the background).
    ``score_threshold`` (None: the variant's, 0.05 for ``r50_fpn``, 0.4 for ``r18_cbam``) and
    ``nms_threshold`` apply when the model is called directly; the
    :class:`~napari_iaunet.inference.Segmenter` uses its own settings' score threshold instead.
    ``box_batch_size_per_image`` is the number of proposals sampled per image to train the box
    and mask heads (a quarter of them positive at most).
    """

    variant: str = "r50_fpn"
    num_classes: int = 1
    class_names: tuple[str, ...] = ("cell",)
    input_size: int = 512
    size_divisibility: int = 32
    pixel_mean: tuple[float, float, float] = (REVVITY_MEAN,) * 3
    pixel_std: tuple[float, float, float] = (REVVITY_STD,) * 3
    match_brightness: bool = False  # as IAUNetConfig's
    intensity: str = "percentile"  # as IAUNetConfig's
    score_threshold: float | None = None
    nms_threshold: float = 0.5
    detections_per_img: int = 300  # torchvision's default of 100 is low for cell images
    box_batch_size_per_image: int = 512  # RoIs sampled per training image (torchvision: 512)

    family: ClassVar[str] = "maskrcnn"

    def __post_init__(self) -> None:
        if self.variant not in MASKRCNN_VARIANTS:
            raise ValueError(f"MaskRCNNConfig: unknown variant {self.variant!r} "
                             f"(choose from {', '.join(MASKRCNN_VARIANTS)})")
        if self.num_classes < 1:
            raise ValueError("MaskRCNNConfig: num_classes must be ≥ 1")
        self._check_common()
        if self.score_threshold is None:
            self.score_threshold = MASKRCNN_VARIANTS[self.variant][1]
        self.score_threshold = float(self.score_threshold)
        if not 0.0 <= self.score_threshold < 1.0 or not 0.0 < self.nms_threshold <= 1.0:
            raise ValueError("MaskRCNNConfig: thresholds must lie in [0, 1)")
        if self.detections_per_img < 1 or self.box_batch_size_per_image < 1:
            raise ValueError("MaskRCNNConfig: detections_per_img and box_batch_size_per_image "
                             "must be ≥ 1")

    @property
    def backbone(self) -> str:
        """The architecture's display name (IAUNet's field of the same name, for callers that
        print ``config.backbone``)."""
        return MASKRCNN_VARIANTS[self.variant][0]

    @property
    def num_queries(self) -> int:
        """The most detections per image (the counterpart of IAUNet's queries)."""
        return self.detections_per_img

    def summary_line(self) -> str:
        """The architecture line of ``napari-iaunet info``."""
        return (f"model:       {self.backbone}, input {self.input_size}px, score threshold "
                f"{self.score_threshold:g}, NMS {self.nms_threshold:g}, at most "
                f"{self.detections_per_img} detections")

    def describe(self) -> str:
        """One line naming the architecture (e.g. ``Mask R-CNN R50-FPN``)."""
        return self.backbone

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe dict with ``"family": "maskrcnn"``."""
        d: dict[str, Any] = {"family": self.family}
        for k, v in asdict(self).items():
            d[k] = list(v) if isinstance(v, tuple) else v
        if not d["match_brightness"]:
            del d["match_brightness"]
        if d["intensity"] == "dtype":
            del d["intensity"]
        return d



ModelConfig = IAUNetConfig | MaskRCNNConfig  # PCTransConfig is an IAUNetConfig


def _pop_family(d: dict[str, Any], expected: str) -> dict[str, Any]:
    d = dict(d)
    family = d.pop("family", "iaunet")
    if family != expected:
        raise ValueError(f"a {family!r} model description is not a {expected!r} one")
    return d
