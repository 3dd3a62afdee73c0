"""The model description that travels inside every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["REVVITY_MEAN", "REVVITY_STD", "IAUNetConfig"]

# Revvity-25 statistics on raw 0-255 pixel values (the authors' dataset config).
REVVITY_MEAN = 133.488
REVVITY_STD = 26.903


@dataclass
class IAUNetConfig:
    """Everything needed to rebuild an IAUNet and feed it images.

    ``pixel_mean`` / ``pixel_std`` act on images scaled to the 0-255 range (see
    :func:`napari_iaunet.inference.preprocess.to_model_range`), one value per channel.
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

    def __post_init__(self) -> None:
        self.class_names = tuple(self.class_names)
        self.pixel_mean = tuple(float(v) for v in self.pixel_mean)
        self.pixel_std = tuple(float(v) for v in self.pixel_std)
        if len(self.class_names) != self.num_classes:
            if self.class_names == ("cell",):
                self.class_names = tuple(f"class_{i}" for i in range(self.num_classes))
            else:
                raise ValueError(
                    f"IAUNetConfig: {len(self.class_names)} class names for "
                    f"num_classes={self.num_classes}"
                )
        if len(self.pixel_mean) != 3 or len(self.pixel_std) != 3:
            raise ValueError("IAUNetConfig: pixel_mean and pixel_std need 3 values (RGB)")
        if min(self.pixel_std) <= 0:
            raise ValueError("IAUNetConfig: pixel_std must be positive")
        if self.hidden_dim % self.num_heads:
            raise ValueError("IAUNetConfig: hidden_dim must be divisible by num_heads")
        if self.input_size % self.size_divisibility:
            raise ValueError(
                f"IAUNetConfig: input_size {self.input_size} must be a multiple of "
                f"{self.size_divisibility}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe dict (lists instead of tuples)."""
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IAUNetConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (they mean another version)."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"IAUNetConfig: unknown keys {sorted(unknown)}")
        return cls(**d)

    def replace(self, **changes: Any) -> IAUNetConfig:
        """A copy with some fields changed."""
        d = self.to_dict()
        d.update(changes)
        return IAUNetConfig.from_dict(d)


