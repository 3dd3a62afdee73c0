"""napari-iaunet: IAUNet cell instance segmentation for napari and the command line."""

__version__ = "0.1.0"
