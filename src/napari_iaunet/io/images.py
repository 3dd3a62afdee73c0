"""Read microscopy images from disk: PNG, JPEG and TIFF, 8- or 16-bit, gray, RGB or RGBA."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

__all__ = ["IMAGE_SUFFIXES", "read_image"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


# TIFF axis letters (tifffile) of one 2-D image: rows, columns, colour samples
_IMAGE_AXES = {"Y", "X", "S"}


def _read_tiff(path: Path, allow_stack: bool) -> np.ndarray:
    """A TIFF's first series; colour samples ('S') last; stacks refused unless allowed."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise ValueError("it holds no image")
        series = tif.series[0]
        axes = series.axes
        image = np.asarray(series.asarray())
    if image.ndim != len(axes):  # tifffile did not describe the array: trust only its shape
        return image
    extra = [(a, n) for a, n in zip(axes, image.shape) if a not in _IMAGE_AXES and n > 1]
    if extra and not allow_stack:
        planes = int(np.prod([n for _, n in extra]))
        described = " × ".join(f"{n} {_AXIS_NAMES.get(a, a)}" for a, n in extra)
        raise _StackError(
            f"{path} is a stack of {planes} planes ({described}), not one 2-D image; "
            "segment it plane by plane in napari (or with Segmenter.segment_stack in Python), or "
            "save one plane per file")
    if not extra:
        keep = [i for i, a in enumerate(axes) if a in _IMAGE_AXES or image.shape[i] > 1]
        image = image.reshape([image.shape[i] for i in keep])
        axes = "".join(axes[i] for i in keep)
        if "S" in axes:
            image = np.moveaxis(image, axes.index("S"), -1)
    return image


_AXIS_NAMES = {"Z": "slices", "T": "time points", "C": "channels", "Q": "frames",
               "I": "frames", "R": "tiles", "P": "positions"}


class _StackError(ValueError):
    """A file holds a stack where one 2-D image was expected (message ready for the user)."""


def _reader_reason(exc: Exception) -> str:
    """The useful part of an image library's error (never its plug-in install advice)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "backend" in text or "pip install" in text:
        return ""
    return f" ({text[:160]})"


def read_image(path: str | os.PathLike, allow_stack: bool = False) -> np.ndarray:
    """Read an image as stored (dtype kept): ``(H, W)`` gray or ``(H, W, 3|4)`` RGB(A).

    TIFF files are read with tifffile (their axes decide: colour samples become the last axis;
    slices, time points, channels or frames make a stack), everything else with imageio. A
    single channel axis (``(H, W, 1)``) is dropped. Stacks raise ``ValueError`` unless
    ``allow_stack`` is True, in which case the array is returned as read. Empty, damaged and
    unreadable files raise ``ValueError`` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes): the copy or download that made it did "
                         "not finish; copy the image again")
    tiff = path.suffix.lower() in (".tif", ".tiff")
    try:
        if tiff:
            image = _read_tiff(path, allow_stack)
        else:
            import imageio.v3 as iio

            with warnings.catch_warnings():  # imageio's fallback plugins warn about themselves
                warnings.simplefilter("ignore", DeprecationWarning)
                image = np.asarray(iio.imread(path))
    except _StackError:
        raise
    except Exception as exc:  # every reader has its own exception types
        kind = "TIFF" if tiff else path.suffix.lstrip(".").upper() or "image"
        raise ValueError(f"cannot read image {path}: the file is damaged, truncated or not a "
                         f"{kind} image{_reader_reason(exc)}; open it in an image viewer to "
                         "check, or export it again") from exc
    if image.size == 0 or image.ndim < 2:
        raise ValueError(f"cannot read image {path}: it holds no pixels (shape {image.shape}); "
                         "the file is damaged or truncated, export it again")
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    elif (not tiff and image.ndim == 3 and image.shape[0] in (3, 4)
          and image.shape[-1] not in (3, 4)):
        image = np.moveaxis(image, 0, -1)
    if image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (3, 4)) or allow_stack:
        return image
    raise ValueError(
        f"{path} holds an array of shape {image.shape}; expected a 2-D gray, RGB or RGBA image "
        f"(save one frame per file, or open the stack in napari and segment the current frame)"
    )
