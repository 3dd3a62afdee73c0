"""napari-iaunet: IAUNet cell instance segmentation for napari and the command line.

The library imports without Qt or napari. Quick start::

    from napari_iaunet import segment
    instances = segment(image)            # bundled default model, overlapping Instances
    masks = instances.to_dense()          # (N, H, W) booleans, on demand
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Instances", "segment"]

if TYPE_CHECKING:
    import numpy as np

    from .instances import Instances


def segment(image: np.ndarray | str | Path, weights: str | Path | None = None,
            **settings: Any) -> Instances:
    """Segment one 2-D image (an array, or the path of an image file) with ``weights`` (the
    bundled default when None).

    ``settings`` go to :class:`napari_iaunet.inference.Segmenter` (``device``, ``tile_size``,
    ``settings=PostprocessSettings(...)`` or a dict of its fields, ...). For many images build
    one ``Segmenter`` and reuse it.
    """
    import os

    from .inference import Segmenter

    if isinstance(image, (str, os.PathLike)):
        from .io.images import read_image

        image = read_image(image)
    elif image is None:
        raise TypeError("segment() needs an image: a numpy array (H×W gray or H×W×3 colour) "
                        "or the path of an image file, got None")
    return Segmenter.from_checkpoint(weights, **settings).segment(image)


def __getattr__(name: str) -> Any:
    if name == "Instances":
        from .instances import Instances

        return Instances
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
