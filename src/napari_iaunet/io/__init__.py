"""File input and output: atomic writes, images, COCO JSON."""

from .atomic import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text
from .coco import (
    CocoImage,
    coco_to_instances,
    instances_to_coco,
    instances_to_coco_single,
    read_coco,
    read_predictions,
    validate_coco,
    write_coco,
)
from .images import read_image

__all__ = [
    "CocoImage",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "coco_to_instances",
    "instances_to_coco",
    "instances_to_coco_single",
    "read_coco",
    "read_image",
    "read_predictions",
    "validate_coco",
    "write_coco",
]
