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


def segment(image: np.ndarray, weights: str | Path | None = None, **settings: Any) -> Instances:
    """Segment one 2-D image with ``weights`` (the bundled default when None).

    ``settings`` go to :class:`napari_iaunet.inference.Segmenter` (``device``, ``tile_size``,
    ``settings=PostprocessSettings(...)``, ...). For many images build one ``Segmenter`` and
    reuse it.
    """
    from .inference import Segmenter

    return Segmenter.from_checkpoint(weights, **settings).segment(image)


def __getattr__(name: str) -> Any:
    if name == "Instances":
        from .instances import Instances

        return Instances
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
