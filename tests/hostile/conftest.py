"""Fixtures for the hostile-input tests (see README.md in this folder): a tiny checkpoint, a
tiny COCO training set (helpers: hostile_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A resnet18 IAUNet (6 queries, 64 px) with confident queries, saved once per session."""
    from napari_iaunet.checkpoint import save_checkpoint
    from napari_iaunet.model import IAUNetConfig, build_model

    torch.manual_seed(0)
    model = build_model(IAUNetConfig(backbone="resnet18", num_queries=6, input_size=64))
    with torch.no_grad():
        model.decoder.class_embed.bias.copy_(torch.tensor([4.0, -4.0]))
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    return save_checkpoint(path, model, {"description": "tiny test model"})


@pytest.fixture(scope="session")
def tiny_coco(tmp_path_factory) -> Path:
    """Two 64-px synthetic images with a few cells each: ``DIR/annotations.json`` + images/."""
    from napari_iaunet.training.synthetic import SynthParams, write_synthetic_coco

    out = tmp_path_factory.mktemp("coco")
    return write_synthetic_coco(out, 2, 64, seed=3, params=SynthParams(scale=0.15, max_cells=6))
