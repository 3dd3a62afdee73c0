"""Read microscopy images from disk: PNG, JPEG and TIFF, 8- or 16-bit, gray, RGB or RGBA."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

__all__ = ["IMAGE_SUFFIXES", "read_image"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def read_image(path: str | os.PathLike, allow_stack: bool = False) -> np.ndarray:
    """Read an image as stored (dtype kept): ``(H, W)`` gray or ``(H, W, 3|4)`` RGB(A).

    TIFF files are read with tifffile, everything else with imageio. A single channel axis
    (``(H, W, 1)``) is dropped and a channel-first ``(3|4, H, W)`` TIFF is moved to channel-last.
    Other shapes (stacks, volumes) raise ``ValueError`` unless ``allow_stack`` is True, in which
    case the array is returned as read.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            image = tifffile.imread(path)
        else:
            import imageio.v3 as iio

            with warnings.catch_warnings():  # imageio's fallback plugins warn about themselves
                warnings.simplefilter("ignore", DeprecationWarning)
                image = iio.imread(path)
    except Exception as exc:  # every reader has its own exception types
        raise ValueError(f"cannot read image {path}: {exc}") from exc
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    elif image.ndim == 3 and image.shape[0] in (3, 4) and image.shape[-1] not in (3, 4):
        image = np.moveaxis(image, 0, -1)
    if image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (3, 4)) or allow_stack:
        return image
    raise ValueError(
        f"{path} holds an array of shape {image.shape}; expected a 2-D gray, RGB or RGBA image "
        f"(save one frame per file, or open the stack in napari and segment the current frame)"
    )
