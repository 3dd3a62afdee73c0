"""Sample data for File ▸ Open Sample: our own synthetic brightfield cells (free to ship).

Not the Revvity-25 images: their licence is non-commercial. The synthetic image imitates their
look (see :mod:`napari_iaunet.training.synthetic`) and comes with exact, overlapping ground-truth
instances, shown as an instance group ready for the edit tools and for fine-tuning.
"""

from __future__ import annotations

from typing import Any

SAMPLE_SIZE = 512
IMAGE_NAME = "synthetic cells"


def _sample() -> tuple[Any, Any]:
    from .training.synthetic import sample_data

    return sample_data(SAMPLE_SIZE)


def make_sample_image() -> list[tuple]:
    """The synthetic brightfield image alone (to try segmentation on)."""
    image, _ = _sample()
    return [(image, {"name": IMAGE_NAME, "rgb": True}, "image")]


def make_sample_with_instances() -> list[tuple]:
    """The synthetic image and its ground-truth cells as an instance group."""
    from ._widgets.layer_group import group_layer_data

    image, instances = _sample()
    labels = group_layer_data(instances, image_name=IMAGE_NAME, source="sample",
                              kind="true cells", image_file=None)
    return [(image, {"name": IMAGE_NAME, "rgb": True}, "image"), *labels]
