"""Training and fine-tuning: synthetic data, COCO datasets, augmentation, loss, trainer, DDP.

Importing this package is cheap; the submodules (and torch) load on first use of a name.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "AnnotatedImage",
    "AnnotatedImages",
    "AugmentConfig",
    "HungarianMatcher",
    "PrintProgress",
    "SetCriterion",
    "SynthParams",
    "TrainCallback",
    "TrainConfig",
    "TrainResult",
    "ValidationCancelled",
    "generate",
    "plot_loss_curve",
    "sample_data",
    "sample_image",
    "train",
    "validate",
    "write_synthetic_coco",
]

_LAZY = {
    "AnnotatedImage": "dataset",
    "AnnotatedImages": "dataset",
    "AugmentConfig": "augment",
    "HungarianMatcher": "matcher",
    "PrintProgress": "callbacks",
    "SetCriterion": "losses",
    "SynthParams": "synthetic",
    "TrainCallback": "callbacks",
    "TrainConfig": "trainer",
    "TrainResult": "trainer",
    "ValidationCancelled": "trainer",
    "generate": "synthetic",
    "plot_loss_curve": "callbacks",
    "sample_data": "synthetic",
    "sample_image": "synthetic",
    "train": "trainer",
    "validate": "trainer",
    "write_synthetic_coco": "synthetic",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
