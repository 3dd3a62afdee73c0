"""Inference engine (no Qt): preprocessing, prediction, post-processing and tiling."""

from .device import available_devices, select_device
from .postprocess import PostprocessSettings
from .segmenter import SegmentationCancelled, Segmenter

__all__ = [
    "PostprocessSettings",
    "SegmentationCancelled",
    "Segmenter",
    "available_devices",
    "select_device",
]
