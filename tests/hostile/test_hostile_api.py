"""The Python API given what it does not expect: a path, None, a dict of settings."""

from __future__ import annotations

import imageio.v3 as iio
import pytest
from hostile_helpers import gray

import napari_iaunet
from napari_iaunet.inference import PostprocessSettings, Segmenter


def test_segment_accepts_a_path(tiny_weights, tmp_path):
    iio.imwrite(tmp_path / "im.png", gray())
    instances = napari_iaunet.segment(tmp_path / "im.png", tiny_weights, device="cpu")
    assert instances.image_shape == (48, 64)
    assert napari_iaunet.segment(str(tmp_path / "im.png"), tiny_weights,
                                 device="cpu").image_shape == (48, 64)


def test_segment_none_says_what_it_needs(tiny_weights):
    with pytest.raises(TypeError, match=r"needs an image: a numpy array .* got None"):
        napari_iaunet.segment(None, tiny_weights)


def test_segmenter_given_a_path_says_so(tiny_weights, tmp_path):
    seg = Segmenter.from_checkpoint(tiny_weights, device="cpu")
    with pytest.raises(TypeError, match=r"a path was given \('im.png'\).*read_image"):
        seg.segment("im.png")
    with pytest.raises(TypeError, match=r"takes an image array .* got NoneType"):
        seg.segment(None)


def test_settings_as_a_dict(tiny_weights):
    instances = napari_iaunet.segment(gray(), tiny_weights, device="cpu",
                                      settings={"score_threshold": 0.0, "duplicate_iou": None})
    assert len(instances) > 0
    seg = Segmenter.from_checkpoint(tiny_weights, device="cpu", settings={"min_area": 3})
    assert seg.settings == PostprocessSettings(min_area=3)
    with pytest.raises(ValueError, match=r"unknown name\(s\) \['threshold'\]"):
        Segmenter.from_checkpoint(tiny_weights, device="cpu", settings={"threshold": 0.3})
    with pytest.raises(TypeError, match="settings must be a PostprocessSettings"):
        Segmenter.from_checkpoint(tiny_weights, device="cpu", settings=0.5)
