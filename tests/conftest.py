"""Fixtures shared by every test folder (keep this file small; folder conftests hold the rest)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path | None:
    """The real-data folder: ``$NAPARI_IAUNET_DATA``, else ``../shared/data`` beside the repo."""
    env = os.environ.get("NAPARI_IAUNET_DATA")
    candidate = Path(env) if env else REPO_ROOT / ".." / "shared" / "data"
    return candidate.resolve() if candidate.is_dir() else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real data folder (revvity25/, isbi2014/, usiigaci/, dsb2018/); skips if absent."""
    root = shared_data_root()
    if root is None:
        pytest.skip("real data not available (set NAPARI_IAUNET_DATA or provide ../shared/data)")
    return root
