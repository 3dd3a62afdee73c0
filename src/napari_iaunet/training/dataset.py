"""Training data: annotated images from COCO files or from memory, and the torch Dataset.

* :class:`AnnotatedImage` — one image (in memory or a file path, read lazily) and its
  :class:`~napari_iaunet.instances.Instances`.
* :class:`AnnotatedImages` — a list of those with where-it-came-from metadata; built from any
  number of ``COCO[:IMAGES]`` specs (:meth:`AnnotatedImages.from_coco`) or from
  ``(image, Instances)`` pairs (:meth:`AnnotatedImages.from_pairs`, what the napari fine-tune
  widget uses).
* :func:`normalisation_stats` — per-channel mean/std on the 0-255 scale of
  :func:`~napari_iaunet.inference.preprocess.to_model_range` (stored in the checkpoint config).
* :class:`TrainingDataset` — augmented, normalised, padded samples; :func:`collate`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..inference.preprocess import brightness_offset, check_intensity, to_model_range
from ..instances import Instances
from .augment import AugmentConfig, augment

__all__ = [
    "AnnotatedImage",
    "AnnotatedImages",
    "TrainingDataset",
    "collate",
    "normalisation_stats",
    "parse_spec",
]

log = logging.getLogger(__name__)


def parse_spec(spec: str | Path) -> tuple[Path, Path]:
    """Split ``COCO.json[:IMAGE_FOLDER]`` into paths; the folder defaults to ``<json dir>/images``.

    The split happens at the first ``.json:`` so Windows drive letters (``C:\\...``) survive.
    """
    text = str(spec)
    marker = text.lower().find(".json:")
    if marker >= 0:
        coco, images = Path(text[:marker + 5]), Path(text[marker + 6:])
    else:
        coco = Path(text)
        images = coco.parent / "images"
    return coco.expanduser(), images.expanduser()


@dataclass
class AnnotatedImage:
    """One training image and its instances; the pixels stay on disk until :meth:`load`."""

    instances: Instances
    image: np.ndarray | None = None
    path: Path | None = None
    name: str = ""
    # validation scores only the cells inside this (y0, x0, y1, x1) part of the image (the
    # model still sees the whole image): the held-back strip of a fine-tune
    score_window: tuple[int, int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.image is None and self.path is None:
            raise ValueError("AnnotatedImage needs an image array or a path")
        if self.image is not None:
            shape = tuple(np.asarray(self.image).shape[:2])
            if np.asarray(self.image).ndim == 3 and self.image.shape[0] in (1, 3, 4) \
                    and self.image.shape[-1] > 4:
                shape = tuple(self.image.shape[1:3])
            if shape != self.instances.image_shape:
                raise ValueError(
                    f"{self.name or 'image'}: image is {shape[0]}×{shape[1]} but its instances "
                    f"belong to a {self.instances.image_shape[0]}×{self.instances.image_shape[1]} "
                    "image")

    def load_raw(self) -> np.ndarray:
        """The pixels as stored (any dtype and channel layout)."""
        if self.image is not None:
            return self.image
        from ..io.images import read_image

        return read_image(self.path)

    def load(self, intensity: str = "percentile") -> np.ndarray:
        """``(H, W, 3)`` float32 on the 0-255 scale (``intensity``: a model config's, see
        :func:`~napari_iaunet.inference.preprocess.to_model_range`)."""
        rgb = to_model_range(self.load_raw(), intensity)
        if rgb.shape[:2] != self.instances.image_shape:
            raise ValueError(
                f"{self.path or self.name}: the image is {rgb.shape[0]}×{rgb.shape[1]} but its "
                f"annotations say {self.instances.image_shape[0]}×{self.instances.image_shape[1]}")
        return rgb


@dataclass
class AnnotatedImages:
    """A list of :class:`AnnotatedImage` plus a description of the sources (checkpoint metadata)."""

    items: list[AnnotatedImage] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)
    class_names: list[str] | None = None  # from the COCO categories (None: not known)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> AnnotatedImage:
        return self.items[i]

    def __iter__(self):
        return iter(self.items)

    @property
    def num_instances(self) -> int:
        return sum(len(it.instances) for it in self.items)

    def __add__(self, other: AnnotatedImages) -> AnnotatedImages:
        names = self.class_names or other.class_names
        if self.class_names and other.class_names and self.class_names != other.class_names:
            where = other.sources[0].get("coco", "the second source") if other.sources else "?"
            raise ValueError(f"{where}: categories {other.class_names} differ from "
                             f"{self.class_names} of the other training files")
        return AnnotatedImages(self.items + other.items, self.sources + other.sources, names)

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[np.ndarray, Instances]], name: str = "memory"
                   ) -> AnnotatedImages:
        """In-memory ``(image, Instances)`` pairs (e.g. an open napari image and its layers)."""
        items = [AnnotatedImage(inst, image=np.asarray(img), name=f"{name}[{i}]")
                 for i, (img, inst) in enumerate(pairs)]
        return cls(items, [{"source": name, "images": len(items),
                            "instances": sum(len(i.instances) for i in items)}])

    @classmethod
    def from_coco(cls, specs: str | Path | Sequence[str | Path]) -> AnnotatedImages:
        """Read ``COCO[:IMAGES]`` specs (see :func:`parse_spec`); each image must exist.

        Overlapping instances are kept; ``iscrowd`` and degenerate annotations are skipped and
        counted in the log. A malformed file raises ValueError naming the file (and annotation).
        """
        if isinstance(specs, (str, Path)):
            specs = [specs]
        out = cls()
        for spec in specs:
            out = out + _read_coco_spec(spec)
        return out

    @classmethod
    def coerce(cls, data: Any) -> AnnotatedImages:
        """Accept AnnotatedImages, COCO spec string(s), or ``(image, Instances)`` pairs."""
        if isinstance(data, AnnotatedImages):
            return data
        if isinstance(data, (str, Path)):
            return cls.from_coco([data])
        data = list(data)
        if all(isinstance(d, (str, Path)) for d in data):
            return cls.from_coco(data)
        if all(isinstance(d, AnnotatedImage) for d in data):
            return cls(data, [{"source": "memory", "images": len(data)}])
        return cls.from_pairs(data)


def _read_coco_spec(spec: str | Path) -> AnnotatedImages:
    from ..io.coco import coco_to_instances, read_coco

    coco_path, image_dir = parse_spec(spec)
    if not coco_path.is_file():
        raise FileNotFoundError(f"annotation file not found: {coco_path}")
    if not image_dir.is_dir():
        raise FileNotFoundError(
            f"image folder not found: {image_dir} (for {coco_path}); give it as "
            f"'{coco_path}:IMAGE_FOLDER'")
    coco = read_coco(coco_path)
    pairs = coco_to_instances(coco, source=str(coco_path))
    items = []
    missing = []
    skipped = {"iscrowd": 0, "degenerate": 0}
    for pair in pairs:
        entry, inst = pair[0], pair[1]
        for key, value in getattr(pair, "skipped", {}).items():
            skipped[key] = skipped.get(key, 0) + int(value)
        path = image_dir / entry["file_name"]
        if not path.is_file():
            missing.append(str(path))
            continue
        items.append(AnnotatedImage(inst, path=path, name=entry["file_name"]))
    if missing:
        raise FileNotFoundError(
            f"{coco_path}: {len(missing)} image(s) listed in the annotations are not in "
            f"{image_dir} (first: {missing[0]})")
    n_kept = sum(len(it.instances) for it in items)
    log.info("%s: %d images, %d instances; skipped %d iscrowd and %d degenerate annotations",
             coco_path, len(items), n_kept, skipped.get("iscrowd", 0),
             skipped.get("degenerate", 0))
    names = [str(c.get("name", f"class_{k}")) for k, c in enumerate(coco["categories"])]
    return AnnotatedImages(items, [{"coco": str(coco_path), "images_dir": str(image_dir),
                                    "images": len(items), "instances": n_kept,
                                    "skipped": skipped}], names)


def normalisation_stats(data: AnnotatedImages | Sequence[AnnotatedImage], max_images: int = 64,
                        max_pixels: int = 1_000_000, intensity: str = "percentile"
                        ) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and std (0-255 scale, ``intensity`` as the model's) over up to
    ``max_images`` evenly spaced images."""
    items = list(data)
    if not items:
        raise ValueError("normalisation_stats: no training images")
    pick = np.linspace(0, len(items) - 1, min(len(items), max_images)).round().astype(int)
    pick = np.unique(pick)
    total = np.zeros(3)
    total_sq = np.zeros(3)
    count = 0
    for i in pick:
        rgb = items[i].load(intensity).reshape(-1, 3).astype(np.float64)
        step = max(1, len(rgb) // max_pixels)
        rgb = rgb[::step]
        total += rgb.sum(0)
        total_sq += (rgb ** 2).sum(0)
        count += len(rgb)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0))
    std = np.maximum(std, 1.0)  # a flat image must not blow up the normalisation
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


class TrainingDataset(torch.utils.data.Dataset):
    """Augmented training samples: ``(image (3, S, S) normalised, {"labels", "masks"})``.

    Index with an int, or with ``(index, seed)`` so that every draw is reproducible regardless of
    the worker that computes it (the trainer's sampler does this). Padding is bottom/right with
    zeros after normalisation (= the mean).
    """

    def __init__(self, data: AnnotatedImages | Sequence[AnnotatedImage],
                 pixel_mean: Sequence[float], pixel_std: Sequence[float],
                 augment_config: AugmentConfig | None = None, num_classes: int = 1,
                 seed: int = 0, cache_images: bool | None = None,
                 match_brightness: bool = False, intensity: str = "percentile") -> None:
        self.items = list(data)
        if not self.items:
            raise ValueError("TrainingDataset: no training images")
        self.mean = np.asarray(pixel_mean, np.float32).reshape(1, 1, 3)
        self.std = np.asarray(pixel_std, np.float32).reshape(1, 1, 3)
        self.match_brightness = bool(match_brightness)  # as the model config's (inference too)
        self.intensity = check_intensity(intensity)  # likewise
        self.augment_config = augment_config or AugmentConfig()
        self.seed = int(seed)
        for it in self.items:
            if len(it.instances) and int(it.instances.class_ids.max()) >= num_classes:
                raise ValueError(
                    f"{it.path or it.name}: class id {int(it.instances.class_ids.max())} but the "
                    f"model has {num_classes} class(es)")
        # keep raw pixels of small file-based sets in memory (uint8 1080² ≈ 3.5 MB each)
        self.cache_images = len(self.items) <= 256 if cache_images is None else cache_images
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.items)

    def _raw(self, i: int) -> np.ndarray:
        if not self.cache_images:
            return self.items[i].load_raw()
        if i not in self._cache:
            self._cache[i] = self.items[i].load_raw()
        return self._cache[i]

    def __getitem__(self, key: int | tuple[int, int]
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        index, seed = (key, self.seed) if isinstance(key, (int, np.integer)) else key
        item = self.items[int(index)]
        image = to_model_range(self._raw(int(index)), self.intensity)
        if self.match_brightness:  # the whole image's mean, before any crop (as at inference)
            image = image + np.float32(brightness_offset(image, self.mean.ravel()))
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(index)])
        image, inst = augment(image, item.instances, rng, self.augment_config)
        return self.to_tensors(image, inst)

    def to_tensors(self, image: np.ndarray, inst: Instances
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Normalise, pad to the input size, and build the target dict."""
        s = self.augment_config.input_size
        h, w = image.shape[:2]
        out = np.zeros((s, s, 3), np.float32)
        out[:h, :w] = (image - self.mean) / self.std
        masks = np.zeros((len(inst), s, s), bool)
        for i, (crop, (y0, x0, y1, x1)) in enumerate(zip(inst.crops, inst.boxes)):
            masks[i, y0:y1, x0:x1] = crop
        target = {"labels": torch.as_tensor(inst.class_ids, dtype=torch.int64),
                  "masks": torch.from_numpy(masks)}
        return torch.from_numpy(out).permute(2, 0, 1).contiguous(), target


def collate(batch: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]]
            ) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Stack images; keep targets as a list (their instance counts differ)."""
    images = torch.stack([b[0] for b in batch])
    return images, [b[1] for b in batch]
