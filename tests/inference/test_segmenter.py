from pathlib import Path

import numpy as np
import pytest
import torch

from napari_iaunet.inference import PostprocessSettings, SegmentationCancelled, Segmenter
from napari_iaunet.inference.device import available_devices, select_device
from napari_iaunet.instances import Instances
from napari_iaunet.model import IAUNetConfig, build_model

TINY = IAUNetConfig(backbone="resnet18", num_queries=8, input_size=64)


@pytest.fixture(scope="module")
def segmenter():
    torch.manual_seed(0)
    model = build_model(TINY)
    with torch.no_grad():  # make every query confident so the plumbing has instances to carry
        model.decoder.class_embed.bias.copy_(torch.tensor([4.0, -4.0]))
    return Segmenter(model, device="cpu", settings=PostprocessSettings(score_threshold=0.0))


@pytest.mark.parametrize(
    "image",
    [np.random.default_rng(0).integers(0, 255, (90, 70), dtype=np.uint8),
     np.random.default_rng(1).integers(0, 65535, (70, 90), dtype=np.uint16),
     np.random.default_rng(2).random((64, 64, 3)).astype(np.float32),
     np.random.default_rng(3).integers(0, 255, (50, 80, 4), dtype=np.uint8),
     np.random.default_rng(4).random((3, 40, 60))],
    ids=["gray-u8", "gray-u16", "rgb-float", "rgba", "chw"],
)
def test_any_2d_image_gives_instances_at_original_size(segmenter, image):
    inst = segmenter.segment(image)
    assert isinstance(inst, Instances)
    expected = image.shape[1:] if image.shape[0] == 3 else image.shape[:2]
    assert inst.image_shape == tuple(expected)
    assert len(inst) > 0
    assert (inst.scores[:-1] >= inst.scores[1:]).all()
    assert list(inst.ids) == list(range(1, len(inst) + 1))


def test_stacks_refused_by_segment_and_handled_frame_by_frame(segmenter):
    stack = np.random.default_rng(0).integers(0, 255, (3, 40, 40), dtype=np.uint8)
    with pytest.raises(ValueError, match="segment each frame"):
        segmenter.segment(np.zeros((5, 40, 40), np.uint8))
    results = segmenter.segment_stack(stack)
    assert len(results) == 3 and all(r.image_shape == (40, 40) for r in results)


def test_batch_equals_one_by_one(segmenter):
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 255, (64, 64), dtype=np.uint8) for _ in range(3)]
    batched = segmenter.segment_batch(images)
    for im, b in zip(images, batched):
        single = segmenter.segment(im)
        assert len(single) == len(b)
        np.testing.assert_array_equal(single.to_dense(), b.to_dense())


def test_large_image_is_tiled(segmenter):
    seg = Segmenter(segmenter.model, device="cpu", settings=segmenter.settings, tile_size=64)
    calls = []
    image = np.random.default_rng(6).integers(0, 255, (150, 130), dtype=np.uint8)
    inst = seg.segment(image, progress=lambda d, t: calls.append((d, t)))
    assert inst.image_shape == (150, 130)
    assert calls[-1][0] == calls[-1][1] > 1  # several tiles went through the model


def test_cancel(segmenter):
    with pytest.raises(SegmentationCancelled):
        segmenter.segment(np.zeros((64, 64), np.uint8), cancel=lambda: True)


def test_device_selection():
    assert available_devices()[-1] == "cpu"
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto").type == available_devices()[0]
    if "cuda" not in available_devices():
        with pytest.raises(ValueError, match="not available"):
            select_device("cuda")


def test_from_checkpoint(tmp_path, segmenter):
    from napari_iaunet.checkpoint import save_checkpoint

    path = save_checkpoint(tmp_path / "tiny.pt", segmenter.model)
    seg = Segmenter.from_checkpoint(path, device="cpu", tile_size=None)
    assert seg.config == TINY and seg.checkpoint_info.path == path


@pytest.mark.data
def test_real_revvity_image_end_to_end(segmenter, shared_data: Path):
    from napari_iaunet.io.images import read_image

    image_path = sorted((shared_data / "revvity25" / "images").iterdir())[0]
    image = read_image(image_path)
    inst = segmenter.segment(image)
    assert inst.image_shape == image.shape[:2] == (1080, 1080)


def test_auto_tiling_follows_the_training_image_size(tmp_path, segmenter):
    """A checkpoint that records its training images' size is tiled only well beyond it."""
    from napari_iaunet.checkpoint import save_checkpoint
    from napari_iaunet.inference.segmenter import auto_tile_size

    size = TINY.input_size
    assert auto_tile_size(size, None) == 2 * size
    assert auto_tile_size(size, 1080) == 1080
    assert auto_tile_size(size, 10) == size  # never tiles smaller than the input

    def tiles_for(path, shape):
        seg = Segmenter.from_checkpoint(path, device="cpu")
        return seg._tile_size(shape)

    plain = save_checkpoint(tmp_path / "plain.pt", segmenter.model)
    assert tiles_for(plain, (4 * size, 4 * size)) == 2 * size  # no record: the old rule
    recorded = save_checkpoint(tmp_path / "side.pt", segmenter.model, {"image_side": 8 * size})
    assert tiles_for(recorded, (4 * size, 4 * size)) is None  # within its training scale
    assert tiles_for(recorded, (13 * size, 13 * size)) == 8 * size


def test_brightness_matching_makes_a_darker_plate_look_like_the_brighter_one(segmenter):
    """A model with ``match_brightness`` sees an image and a uniformly darker copy alike;
    without it the two differ. Tiles share the whole image's offset."""
    rng = np.random.default_rng(7)
    bright = rng.integers(100, 140, (64, 64), dtype=np.uint8)
    dark = bright - np.uint8(50)
    # uint8 values go in raw (a model written before percentile stretching was the rule; with
    # it, the two images are the same picture already)
    cfg = segmenter.config.replace(intensity="dtype")
    assert not cfg.match_brightness
    legacy = build_model(cfg)
    legacy.load_state_dict(segmenter.model.state_dict())
    legacy.eval()
    off = Segmenter(legacy, device="cpu", settings=segmenter.settings)
    on = Segmenter(legacy, device="cpu", settings=segmenter.settings,
                   match_brightness=True)
    assert on.effective_match_brightness() and not off.effective_match_brightness()
    a, b = on.segment(bright), on.segment(dark)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-4)
    np.testing.assert_array_equal(a.to_dense(), b.to_dense())
    s1, s2 = off.segment(bright).scores, off.segment(dark).scores
    assert len(s1) != len(s2) or not np.allclose(s1, s2, rtol=1e-3)  # unmatched: they differ
    # the setting follows the model config when not given
    model = build_model(cfg.replace(match_brightness=True))
    model.load_state_dict(segmenter.model.state_dict())
    model.eval()
    follows = Segmenter(model, device="cpu", settings=segmenter.settings)
    assert follows.effective_match_brightness()
    np.testing.assert_allclose(follows.segment(dark).scores, b.scores, rtol=1e-4)
    tiled = Segmenter(legacy, device="cpu", settings=segmenter.settings, tile_size=64,
                      match_brightness=True)
    big = rng.integers(100, 140, (150, 130), dtype=np.uint8)
    seen = []
    tiled.segment_batch = lambda crops, offsets=None, **kw: (  # record what the tiles get
        seen.append(offsets) or Segmenter.segment_batch(tiled, crops, offsets=offsets, **kw))
    tiled.segment(big)
    assert len(set(seen[0])) == 1 and seen[0][0] == pytest.approx(cfg.pixel_mean[0] - big.mean())


def test_tiles_of_a_uint16_image_share_one_intensity_stretch(segmenter, monkeypatch):
    """A tile stretched on its own would blow a background tile's noise up to the full range."""
    from napari_iaunet.inference.preprocess import to_model_range

    rng = np.random.default_rng(0)
    image = (1000 + rng.integers(0, 20, (160, 160))).astype(np.uint16)  # flat, faint noise
    image[:, 100:] += 30000  # a bright region in the right-hand tiles only
    seg = Segmenter(segmenter.model, device="cpu", settings=segmenter.settings, tile_size=64)
    seen = []
    real = seg.segment_batch

    def spy(crops, **kwargs):
        seen.extend(crops)
        return real(crops, **kwargs)

    monkeypatch.setattr(seg, "segment_batch", spy)
    seg.segment(image)
    whole = np.rint(to_model_range(image)).clip(0, 255).astype(np.uint8)
    assert len(seen) > 4 and all(c.dtype == np.uint8 for c in seen)
    background = [c for c in seen if c.max() < 50]  # tiles left of the bright region
    assert background and all(c.std() < 2.0 for c in background)  # noise stays faint
    assert whole.max() == 255 and whole[:, :90].max() < 50


@pytest.mark.parametrize("tile_size", [None, 64])
def test_a_uint8_image_and_its_uint16_or_float_copy_give_the_same_instances(segmenter,
                                                                            tile_size):
    """Percentile intensity scaling (every model since 2026-12-03): the dtype does not matter,
    whole or tiled. The fixture keeps every query (score threshold 0), so all masks compare."""
    from skimage import data

    assert segmenter.config.intensity == "percentile"
    image = data.camera()[::4, ::4][:96, :112]  # a real picture, 96×112
    seg = Segmenter(segmenter.model, device="cpu", settings=segmenter.settings,
                    tile_size=tile_size)
    reference = seg.segment(image)
    assert len(reference) > 0
    for copy in (image.astype(np.uint16), image.astype(np.uint16) * 257, image / 255.0):
        got = seg.segment(copy)
        np.testing.assert_allclose(got.scores, reference.scores, atol=1e-4)
        np.testing.assert_array_equal(got.to_dense(), reference.to_dense())
