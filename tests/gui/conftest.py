"""Fixtures for the napari GUI tests: a tiny untrained checkpoint and a synthetic image.

The tiny model's output is not judged (it is untrained); tests that need real cells feed the
synthetic ground truth through ``SegmentWidget.show_result`` — the widget's result seam.
"""

from __future__ import annotations

import numpy as np
import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/gui" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.gui)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A resnet18 IAUNet with 8 queries and 64 channels (~2 s to build), saved once per run."""
    from napari_iaunet._widgets import make_torch_import_safe

    make_torch_import_safe()  # viewers (OpenGL) may exist already: see _torch_guard
    from napari_iaunet.checkpoint import save_checkpoint
    from napari_iaunet.model import IAUNetConfig, build_model

    cfg = IAUNetConfig(backbone="resnet18", num_queries=8, hidden_dim=64, mask_dim=64,
                       num_heads=4, dim_feedforward=128, dec_layers=1, input_size=256)
    model = build_model(cfg)
    path = tmp_path_factory.mktemp("weights") / "tiny_resnet18.pt"
    return save_checkpoint(path, model, {"description": "tiny untrained test model",
                                         "training_data": "none (random weights)"})


@pytest.fixture(scope="session")
def synthetic():
    """A 256×256 synthetic brightfield image (uint8 RGB) and its overlapping instances."""
    from napari_iaunet.training.synthetic import generate_one

    image, instances = generate_one(np.random.default_rng(7), 256)
    assert len(instances) > 5
    return image, instances


@pytest.fixture
def no_weights_dir(monkeypatch, tmp_path):
    """An empty weights folder so tests do not depend on what weights/ holds."""
    import napari_iaunet.weights as weights

    empty = tmp_path / "no_weights"
    empty.mkdir()
    monkeypatch.setattr(weights, "_REPO_WEIGHTS", empty)
    monkeypatch.setattr(weights, "_PACKAGE_WEIGHTS", empty)  # tests run against a wheel install
    monkeypatch.delenv("NAPARI_IAUNET_WEIGHTS_DIR", raising=False)
    return empty
