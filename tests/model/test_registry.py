"""The model-family registry: every family declared once, and checkpoints written before it
existed read exactly as before.

``families_before_registry.json`` holds, for a small model of each family, the config dict and the
state-dict names and shapes that napari-iaunet wrote before the registry (commit b7e4c05).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from napari_iaunet.model import build_model, config_from_dict, family_of
from napari_iaunet.model.registry import FAMILIES, is_model_config, new_model_config, new_models

BEFORE = json.loads((Path(__file__).parent / "families_before_registry.json").read_text())


@pytest.mark.parametrize("family", sorted(BEFORE))
def test_configs_and_weights_written_before_read_the_same(family):
    old = BEFORE[family]
    config = config_from_dict(old["config"])
    assert family_of(config).name == family
    assert config.to_dict() == old["config"]  # written back unchanged
    assert config.intensity == "dtype"  # their uint8 images went in raw: they still do
    with torch.device("meta"):
        model = build_model(config)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == old["state_dict"]


def test_every_family_declares_what_the_package_asks():
    for name, family in FAMILIES.items():
        assert family.name == name and family.config_class.family == name
        assert callable(family.predictor())
        assert family.new_models, f"{name} offers no new model"
        assert is_model_config(family.config_class())
    assert not is_model_config(object())


def test_new_model_presets_build_their_configs():
    for key, (family, preset) in new_models().items():
        config = new_model_config(key, ("cell", "debris"))
        assert family_of(config) is family and config.class_names == ("cell", "debris")
        for field, value in preset.options.items():
            assert getattr(config, field) == value
    with pytest.raises(ValueError, match="unknown new model"):
        new_model_config("unet")


def test_new_config_keeps_only_the_familys_own_options():
    config = FAMILIES["maskrcnn"].new_config(("cell",), 256, variant="r18_cbam",
                                             backbone="resnet50", num_queries=7)
    assert config.variant == "r18_cbam" and config.input_size == 256
    config = FAMILIES["pctrans"].new_config(("cell",), 256, backbone="resnet18", variant="x",
                                            enc_layers=None)
    assert config.backbone == "resnet18" and config.enc_layers == 6  # None: the default


def test_unknown_family_is_one_sentence():
    with pytest.raises(ValueError, match="unknown model family 'yolo'"):
        config_from_dict({"family": "yolo"})
