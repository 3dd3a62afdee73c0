"""Fine-tuning on a user's corrections, without Qt: the recipe and the data checks.

The napari fine-tune widget is a thin layer over this module (and so are the benchmarks that
replay it): :class:`FineTuneSettings` and :func:`make_train_config` are its recipe,
:func:`scan_coco_folder` and :func:`pairing_problem` check its data; where runs go is
:mod:`napari_iaunet.training.run_folder`'s job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .trainer import TrainConfig

__all__ = [
    "CocoEntry",
    "DataError",
    "FineTuneSettings",
    "make_train_config",
    "pairing_problem",
    "points_for",
    "scan_coco_folder",
]

PAPER_POINTS = 12544  # points per mask at the paper's 512-px input (112²)


# ---------------------------------------------------------------------------------- recipe
@dataclass
class FineTuneSettings:
    """What the settings controls stand for; the defaults suit a handful of corrected images.

    200 steps of batch 2 show every image of a small set dozens of times under augmentation; the
    learning rate is half the from-scratch one (the start model is already trained);
    validation (with a validation image) and checkpoints every 25 steps keep *Cancel* cheap.
    """

    steps: int = 200
    lr: float = 5e-5
    batch_size: int = 2
    input_size: int | None = None  # None: the model's
    augment: bool = True
    device: str = "auto"
    every: int = 25  # validate and write last.pt every N steps


def points_for(input_size: int) -> int:
    """Sampled points per mask for the mask losses: the paper's 12 544 at a 512-px input, scaled
    with the number of predicted mask pixels for smaller inputs (at least 256)."""
    return int(min(PAPER_POINTS, max(256, round(PAPER_POINTS * (input_size / 512) ** 2))))


def make_train_config(settings: FineTuneSettings, out_dir: str | Path, *, input_size: int,
                      resume: bool = False, new_model: bool = False) -> TrainConfig:
    """The :class:`~napari_iaunet.training.TrainConfig` the widget runs (the benchmark uses it
    too). ``input_size`` is the size actually trained at (the settings' or the model's).
    Fine-tuning keeps the model's intensity normalisation and its BatchNorm statistics (batches of
    two images of one plate would drag them towards that plate); a ``new_model`` takes the
    training images' statistics and learns its BatchNorm statistics."""
    from .trainer import TrainConfig

    every = max(1, int(settings.every))
    kwargs: dict[str, Any] = dict(
        out_dir=Path(out_dir), steps=int(settings.steps), batch_size=int(settings.batch_size),
        lr=float(settings.lr), min_lr=min(1e-6, float(settings.lr) / 10),
        input_size=int(input_size), num_points=points_for(int(input_size)),
        val_every=every, checkpoint_every=every, device=settings.device, resume=resume,
        normalisation="data" if new_model else "keep", freeze_batchnorm=not new_model,
    )
    if not settings.augment:
        # no flips, 90° rotations or scale jitter; the unused scale range is recorded as (1, 1)
        # too, so the run's stored config reads the same to anything that looks only at it
        kwargs.update(augment=False, scale_range=(1.0, 1.0))
    return TrainConfig(**kwargs)


# ---------------------------------------------------------------------------------- data
class DataError(ValueError):
    """The ticked data cannot train a model; the message says why."""


@dataclass
class CocoEntry:
    """A COCO file (and its image folder) found in a folder the user added."""

    json_path: Path
    image_dir: Path
    n_images: int
    n_cells: int
    n_categories: int

    @property
    def spec(self) -> str:
        return f"{self.json_path}:{self.image_dir}"

    def label(self) -> str:
        return (f"COCO {self.json_path.parent.name}/{self.json_path.name} · "
                f"{_plural(self.n_images, 'image')}, {_plural(self.n_cells, 'cell')}")


def scan_coco_folder(folder: str | Path) -> list[CocoEntry]:
    """The COCO instance files of ``folder`` (images in ``folder/images`` or beside them).

    Raises :class:`DataError` naming the problem: no COCO file, or images that are missing.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder")
    entries, problems = [], []
    for path in sorted(folder.glob("*.json")):
        try:
            coco = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            problems.append(f"{path.name}: not readable JSON ({exc})")
            continue
        if not (isinstance(coco, dict) and isinstance(coco.get("images"), list)
                and isinstance(coco.get("annotations"), list)):
            continue  # some other JSON file
        image_dir = folder / "images" if (folder / "images").is_dir() else folder
        names = [str(im.get("file_name", "")) for im in coco["images"]]
        missing = [n for n in names if not (image_dir / n).is_file()]
        if missing:
            problems.append(f"{path.name}: {len(missing)} of {len(names)} images are not in "
                            f"{image_dir} (first: {missing[0]})")
            continue
        cells = sum(1 for a in coco["annotations"] if not a.get("iscrowd", 0))
        entries.append(CocoEntry(path, image_dir, len(names), cells,
                                 len(coco.get("categories") or [])))
    if not entries:
        raise DataError("; ".join(problems) if problems else
                        f"no COCO instance file (*.json with images and annotations) in {folder}")
    return entries


def pairing_problem(image_name: str, image_shape: tuple[int, ...], rgb: bool,
                    frame: tuple[int, ...] | None, cells_shape: tuple[int, int]) -> str | None:
    """Why cells drawn on a ``cells_shape`` plane cannot train with the image ``image_name`` of
    shape ``image_shape`` (``rgb``: its last axis is colour) at ``frame`` (the leading indices
    of a stack), or None when they fit."""
    spatial_shape = image_shape[:-1] if rgb else image_shape
    if frame and (len(frame) > len(spatial_shape) - 2 or any(
            int(f) >= s for f, s in zip(frame, spatial_shape))):
        return f"frame {tuple(frame)} is not in '{image_name}'"
    if len(spatial_shape) - (len(frame) if frame else 0) != 2:
        return f"'{image_name}' is not a 2-D image (a stack without a frame)"
    shape = tuple(int(v) for v in spatial_shape[-2:])
    if shape != tuple(cells_shape):
        return (f"the cells are {cells_shape[0]}×{cells_shape[1]} but '{image_name}' is "
                f"{shape[0]}×{shape[1]}")
    return None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
