"""Where model files live: the bundled default and other checkpoints a user can pick."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DEFAULT_WEIGHTS_NAME", "default_weights", "list_weights", "weights_dirs"]

DEFAULT_WEIGHTS_NAME = "iaunet_default.pt"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
# src/napari_iaunet/weights.py → repository root / weights (source and editable installs)
_REPO_WEIGHTS = Path(__file__).resolve().parents[2] / "weights"


def weights_dirs() -> list[Path]:
    """Folders searched for checkpoints: ``$NAPARI_IAUNET_WEIGHTS_DIR`` first, then ``weights/``."""
    dirs = []
    env = os.environ.get("NAPARI_IAUNET_WEIGHTS_DIR")
    if env:
        dirs.append(Path(env).expanduser())
    dirs.append(_REPO_WEIGHTS)
    return [d for d in dirs if d.is_dir()]


def default_weights() -> Path:
    """Path of the bundled default checkpoint; FileNotFoundError says how to get one."""
    for d in weights_dirs():
        candidate = d / DEFAULT_WEIGHTS_NAME
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"no default model found ({DEFAULT_WEIGHTS_NAME} in {_REPO_WEIGHTS} or "
        "$NAPARI_IAUNET_WEIGHTS_DIR); pass a checkpoint with --weights, or train one with "
        "'napari-iaunet train' (see weights/README.md)"
    )


def list_weights() -> list[Path]:
    """Every checkpoint in the weights folders, the default first."""
    found: list[Path] = []
    for d in weights_dirs():
        for p in sorted(d.iterdir()):
            if p.suffix in CHECKPOINT_SUFFIXES and p.is_file() and p not in found:
                found.append(p)
    found.sort(key=lambda p: p.name != DEFAULT_WEIGHTS_NAME)
    return found
