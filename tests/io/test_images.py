"""read_image: PNG / JPEG / TIFF, 8- and 16-bit, gray / RGB / RGBA, clear errors."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_iaunet.io.images import read_image

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize(
    "array",
    [
        RNG.integers(0, 255, (20, 30), dtype=np.uint8),
        RNG.integers(0, 65535, (20, 30), dtype=np.uint16),
        RNG.integers(0, 255, (20, 30, 3), dtype=np.uint8),
        RNG.integers(0, 255, (20, 30, 4), dtype=np.uint8),
    ],
    ids=["gray8", "gray16", "rgb", "rgba"],
)
def test_lossless_formats_round_trip(tmp_path, suffix, array):
    path = tmp_path / f"img{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(path, array)
    else:
        iio.imwrite(path, array)
    out = read_image(path)
    assert out.dtype == array.dtype
    np.testing.assert_array_equal(out, array)


def test_jpeg_and_channel_layouts(tmp_path):
    rgb = RNG.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    iio.imwrite(tmp_path / "a.jpg", rgb)
    assert read_image(tmp_path / "a.jpg").shape == (16, 16, 3)
    # colour stored plane by plane (planar RGB): the TIFF says so, it stays colour
    tifffile.imwrite(tmp_path / "chw.tif", np.moveaxis(rgb, -1, 0), photometric="rgb",
                     planarconfig="separate")
    np.testing.assert_array_equal(read_image(tmp_path / "chw.tif"), rgb)
    tifffile.imwrite(tmp_path / "one.tif", rgb[..., :1])
    assert read_image(tmp_path / "one.tif").shape == (16, 16)


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read image"):
        read_image(tmp_path / "bad.png")
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((5, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="stack of 5 planes"):
        read_image(tmp_path / "stack.tif")
    assert read_image(tmp_path / "stack.tif", allow_stack=True).shape == (5, 8, 8)
