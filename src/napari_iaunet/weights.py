"""Where model files live: the bundled default and other checkpoints a user can pick.

The default model ships in two layouts. A wheel or sdist install carries it as package data in
``napari_iaunet/_weights/`` (the build copies the repository's top-level ``weights/`` there, see
``setup.py``); a source checkout (editable install, ``PYTHONPATH=src``) finds ``weights/`` itself.
Beside the default lies ``iaunet_default.pt.sha256``, the one record of its SHA-256: a default
that does not match it is refused in one sentence. After replacing the default, call
:func:`record_default_sha256` to update the record.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = [
    "DEFAULT_SHA256_NAME",
    "DEFAULT_WEIGHTS_NAME",
    "DefaultModelError",
    "default_weights",
    "file_sha256",
    "is_default",
    "list_weights",
    "record_default_sha256",
    "verify_default",
    "weights_dirs",
]

DEFAULT_WEIGHTS_NAME = "iaunet_default.pt"
DEFAULT_SHA256_NAME = DEFAULT_WEIGHTS_NAME + ".sha256"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
REINSTALL_HINT = ("reinstall napari-iaunet with "
                  "'pip install --force-reinstall --no-deps napari-iaunet' "
                  "(in a source checkout: 'git checkout weights/')")
# installed from a wheel or sdist: the build copies weights/ into the package as _weights/
_PACKAGE_WEIGHTS = Path(__file__).resolve().parent / "_weights"
# a source checkout: src/napari_iaunet/weights.py → repository root / weights
_SOURCE_ROOT = Path(__file__).resolve().parents[2]
_REPO_WEIGHTS = (_SOURCE_ROOT / "weights" if (_SOURCE_ROOT / "pyproject.toml").is_file()
                 else None)


class DefaultModelError(ValueError):
    """The default model's file does not match the SHA-256 recorded for it."""


def _bundled_dirs() -> list[Path]:
    """The package's own weights folders: package data first, then a checkout's ``weights/``."""
    return [d for d in (_PACKAGE_WEIGHTS, _REPO_WEIGHTS) if d is not None and d.is_dir()]


def weights_dirs() -> list[Path]:
    """Folders searched for checkpoints: ``$NAPARI_IAUNET_WEIGHTS_DIR`` first, then the bundled
    folder (``napari_iaunet/_weights`` when installed, ``weights/`` in a source checkout)."""
    dirs = []
    env = os.environ.get("NAPARI_IAUNET_WEIGHTS_DIR")
    if env:
        dirs.append(Path(env).expanduser())
    dirs.extend(_bundled_dirs())
    return [d for d in dirs if d.is_dir()]


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file (about 0.1 s for the 33 MB default)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _recorded_sha256() -> tuple[str, Path] | None:
    """The SHA-256 recorded for the bundled default and the file that records it."""
    for d in _bundled_dirs():
        record = d / DEFAULT_SHA256_NAME
        if record.is_file():
            text = record.read_text(encoding="utf-8").split()
            return (text[0].lower() if text else ""), record
    return None


def verify_default(path: str | Path) -> Path:
    """Check that ``path``, a file named ``iaunet_default.pt``, is the bundled default model.

    Returns ``path``; raises :class:`DefaultModelError` when its SHA-256 differs from the
    recorded one (damaged or replaced file) or when no record can be found.
    """
    path = Path(path)
    recorded = _recorded_sha256()
    if recorded is None:
        raise DefaultModelError(
            f"the SHA-256 record of the default model ({DEFAULT_SHA256_NAME}) is missing, so "
            f"{path} cannot be checked; {REINSTALL_HINT}")
    expected, record = recorded
    actual = file_sha256(path)
    if actual != expected:
        raise DefaultModelError(
            f"the default model {path} is damaged or was replaced (its SHA-256 {actual[:12]}… "
            f"differs from {expected[:12]}… recorded in {record}); {REINSTALL_HINT}, or pass "
            "another checkpoint with --weights")
    return path


def is_default(path: str | Path) -> bool:
    """Whether ``path`` is the default model's file in one of :func:`weights_dirs`."""
    path = Path(path)
    if path.name != DEFAULT_WEIGHTS_NAME:
        return False
    parent = path.resolve().parent
    return any(parent == d.resolve() for d in weights_dirs())


def default_weights() -> Path:
    """Path of the bundled default checkpoint, checked against its recorded SHA-256.

    FileNotFoundError says how to get one; :class:`DefaultModelError` says it is damaged.
    """
    for d in weights_dirs():
        candidate = d / DEFAULT_WEIGHTS_NAME
        if candidate.is_file():
            return verify_default(candidate)
    searched = [str(d) for d in (_PACKAGE_WEIGHTS, _REPO_WEIGHTS) if d is not None]
    raise FileNotFoundError(
        f"no default model found ({DEFAULT_WEIGHTS_NAME} in {' or '.join(searched)} or "
        f"$NAPARI_IAUNET_WEIGHTS_DIR); {REINSTALL_HINT}, pass a checkpoint with --weights, or "
        "train one with 'napari-iaunet train'")


def record_default_sha256(path: str | Path) -> Path:
    """Write ``<path>.sha256`` (``sha256sum`` format) for a new default model file ``path``.

    Call it whenever ``weights/iaunet_default.pt`` is replaced; returns the record's path.
    """
    path = Path(path)
    record = path.with_name(path.name + ".sha256")
    record.write_text(f"{file_sha256(path)}  {path.name}\n", encoding="utf-8")
    return record


def list_weights() -> list[Path]:
    """Every checkpoint in the weights folders, the default first."""
    found: list[Path] = []
    for d in weights_dirs():
        for p in sorted(d.iterdir()):
            if p.suffix in CHECKPOINT_SUFFIXES and p.is_file() and p not in found:
                found.append(p)
    found.sort(key=lambda p: p.name != DEFAULT_WEIGHTS_NAME)
    return found
