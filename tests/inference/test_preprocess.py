import numpy as np
import pytest
import torch

from napari_iaunet.inference.preprocess import (
    as_hwc,
    brightness_offset,
    pad_batch,
    prepare,
    resized_shape,
    to_model_range,
)


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((20, 30), (20, 30, 1)), ((20, 30, 3), (20, 30, 3)), ((20, 30, 4), (20, 30, 3)),
     ((3, 20, 30), (20, 30, 3)), ((20, 30, 1), (20, 30, 1))],
)
def test_as_hwc_accepts_2d_layouts(shape, expected):
    assert as_hwc(np.zeros(shape, np.uint8)).shape == expected


@pytest.mark.parametrize("shape", [(5, 20, 30), (2, 3, 20, 30), (10,)])
def test_as_hwc_refuses_stacks_with_a_clear_message(shape):
    with pytest.raises(ValueError, match="expected a 2-D image"):
        as_hwc(np.zeros(shape, np.uint8))


def test_uint8_kept_raw_and_gray_replicated_in_dtype_mode():
    img = np.arange(200, dtype=np.uint8).reshape(10, 20)
    out = to_model_range(img, "dtype")
    assert out.shape == (10, 20, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out[..., 0], img)
    np.testing.assert_array_equal(out[..., 2], img)


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.float32, np.float64, np.int8])
def test_other_dtypes_stretched_to_0_255(dtype):
    rng = np.random.default_rng(0)
    img = (rng.random((64, 64)) * 1000).astype(dtype)
    out = to_model_range(img)
    assert out.min() >= 0 and out.max() <= 255
    assert out.max() > 250 and out.min() < 5


def test_16bit_dim_image_uses_full_range():
    img = np.full((32, 32), 1000, np.uint16)
    img[8:24, 8:24] = 1200
    out = to_model_range(img)
    assert out[16, 16, 0] == pytest.approx(255) and out[0, 0, 0] == pytest.approx(0)


def test_nan_and_constant_and_bool():
    img = np.ones((8, 8), np.float32)
    img[0, 0] = np.nan
    assert np.isfinite(to_model_range(img)).all()
    assert to_model_range(np.zeros((8, 8), np.float32)).max() == 0
    assert to_model_range(np.eye(8, dtype=bool)).max() == 255
    with pytest.raises(ValueError, match="no finite"):
        to_model_range(np.full((8, 8), np.nan))
    with pytest.raises(ValueError, match="dtype"):
        to_model_range(np.zeros((8, 8), np.complex64))


def test_prepare_resizes_longest_side_and_pads_to_32():
    img = np.full((1080, 700), 133, np.uint8)
    p = prepare(img, 512, (133.0,) * 3, (10.0,) * 3, intensity="dtype")
    assert p.resized_shape == resized_shape((1080, 700), 512) == (512, 332)
    assert p.tensor.shape == (3, 512, 352)
    # the image area normalises to 0 and so does the padding (padding == the mean)
    assert torch.allclose(p.tensor, torch.zeros_like(p.tensor), atol=1e-4)


@pytest.mark.parametrize("copy", [
    lambda a: a.astype(np.uint16),
    lambda a: a.astype(np.uint16) * 257,  # the 8-bit picture at 16-bit range
    lambda a: a / 255.0,
    lambda a: a.astype(np.float32) * 3.5 - 20.0,
    lambda a: a.astype(np.int32),
])
def test_percentile_mode_does_not_depend_on_the_dtype(copy):
    """The same picture as uint8, uint16 or float reaches the network the same way."""
    from skimage import data

    img = data.camera()[::4, ::4]
    ref = to_model_range(img)
    np.testing.assert_allclose(to_model_range(copy(img)), ref, atol=1e-3)
    assert ref.min() == 0 and ref.max() == pytest.approx(255)  # stretched, not raw
    rgb = np.stack([img, img // 2, 255 - img], axis=-1)
    np.testing.assert_allclose(to_model_range(copy(rgb)), to_model_range(rgb), atol=1e-3)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, bool])
def test_integer_percentiles_are_numpys(dtype):
    """The histogram shortcut for 8/16-bit images gives np.percentile's stretch exactly."""
    rng = np.random.default_rng(3)
    high = 2 if dtype is bool else np.iinfo(dtype).max + 1
    for shape in [(7, 9), (40, 50, 3)]:
        img = rng.integers(0, high, shape).astype(dtype)
        values = img.astype(np.float64)
        lo, hi = np.percentile(values, [0.1, 99.9])
        if hi <= lo:
            lo, hi = values.min(), values.max()
        expected = np.clip((values - lo) * (255.0 / (hi - lo)), 0, 255)
        out = to_model_range(img)[..., : img.shape[-1] if img.ndim == 3 else 1]
        np.testing.assert_allclose(out.reshape(expected.shape), expected, atol=1e-3)


def test_unknown_intensity_mode_is_refused():
    with pytest.raises(ValueError, match="intensity mode"):
        to_model_range(np.zeros((8, 8), np.uint8), "raw")


def test_pad_batch():
    a, b = torch.ones(3, 32, 64), torch.ones(3, 64, 32)
    batch = pad_batch([a, b])
    assert batch.shape == (2, 3, 64, 64)
    assert batch[0, :, 40:, :].abs().sum() == 0


def test_brightness_offset_moves_the_mean_to_the_models_and_keeps_contrast():
    raw = {"intensity": "dtype"}  # uint8 fed as it is, so the offset is all that moves it
    rgb = to_model_range(np.random.default_rng(0).integers(50, 90, (40, 50), dtype=np.uint8),
                         **raw)
    off = brightness_offset(rgb, (110.0, 114.0, 118.0))
    assert rgb.mean() + off == pytest.approx(114.0)
    plain = prepare(rgb.astype(np.uint8), 64, (114.0,) * 3, (30.0,) * 3, **raw)
    shifted = prepare(rgb.astype(np.uint8), 64, (114.0,) * 3, (30.0,) * 3, offset=off, **raw)
    h, w = shifted.resized_shape
    diff = (shifted.tensor - plain.tensor)[:, :h, :w]
    torch.testing.assert_close(diff, torch.full_like(diff, off / 30.0))  # one shift, same contrast
    assert shifted.tensor[:, :h, :w].mean().abs() < 1e-3  # the image now sits at the model's mean
    own = prepare(rgb.astype(np.uint8), 64, (110.0, 114.0, 118.0), (30.0,) * 3, offset=None, **raw)
    torch.testing.assert_close(own.tensor, prepare(rgb.astype(np.uint8), 64, (110.0, 114.0, 118.0),
                                                   (30.0,) * 3, offset=off, **raw).tensor)
