"""Shared tiny fixtures for the training tests (2-core CPU budget: small models, small images)."""

from __future__ import annotations

import pytest
import torch

from napari_iaunet.model import IAUNetConfig
from napari_iaunet.training.synthetic import SynthParams, generate

TINY_SIZE = 64


def tiny_config(**changes) -> IAUNetConfig:
    """A ResNet-18 IAUNet small enough for a few CPU training steps per second."""
    base = dict(backbone="resnet18", num_queries=8, hidden_dim=32, mask_dim=32, num_heads=2,
                dec_layers=1, dim_feedforward=64, input_size=TINY_SIZE)
    base.update(changes)
    return IAUNetConfig(**base)


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: these models are tiny, and on a shared 2-core machine a second
    thread mostly waits at barriers (measured 3× slower steps under load)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(name="tiny_config")
def tiny_config_fixture():
    """The :func:`tiny_config` factory."""
    return tiny_config


@pytest.fixture(scope="session")
def tiny_pairs():
    """Four 64-px synthetic images with a handful of large cells each."""
    return generate(4, TINY_SIZE, seed=7, params=SynthParams(scale=0.15, max_cells=8))
