import numpy as np
import pytest

from napari_iaunet.instances import Instances
from napari_iaunet.training.synthetic import (
    SynthParams,
    generate,
    generate_one,
    sample_data,
    sample_image,
    write_synthetic_coco,
)


def test_generate_is_deterministic_and_well_formed():
    a = generate(2, 96, seed=3)
    b = generate(2, 96, seed=3)
    for (ia, sa), (ib, sb) in zip(a, b):
        assert ia.shape == (96, 96, 3) and ia.dtype == np.uint8
        np.testing.assert_array_equal(ia, ib)
        assert isinstance(sa, Instances) and sa.image_shape == (96, 96)
        assert len(sa) == len(sb) > 0
        np.testing.assert_array_equal(sa.to_dense(), sb.to_dense())
    assert not np.array_equal(a[0][0], a[1][0])


def test_cells_touch_and_overlap_and_image_is_low_contrast():
    image, inst = generate_one(5, 256)
    dense = inst.to_dense()
    assert (dense.sum(0) >= 2).any(), "some cells must overlap"
    assert (inst.pairwise_iou() > 0).sum() > len(inst), "overlapping pairs expected"
    assert 0.3 < dense.any(0).mean() < 0.97
    g = image[..., 1].astype(float)
    assert 2.0 < g.std() < 20.0  # brightfield: low contrast, not flat
    assert image[..., 0].tolist() == image[..., 1].tolist()  # R = G, blue carries the fringe


def test_non_square_and_scale():
    image, inst = generate_one(0, (80, 120), SynthParams(scale=0.2))
    assert image.shape == (80, 120, 3) and inst.image_shape == (80, 120)
    with pytest.raises(ValueError):
        generate_one(0, 8)


def test_clear_preset_has_fewer_more_visible_cells():
    faint = [generate_one(seed, 256, SynthParams.preset("revvity", 0.45)) for seed in (1, 2, 3)]
    clear = [generate_one(seed, 256, SynthParams.preset("clear", 0.45)) for seed in (1, 2, 3)]
    assert SynthParams.preset("revvity") == SynthParams()
    assert max(len(i) for _, i in clear) <= 12 < max(len(i) for _, i in faint)
    # cells stand out more: the spread of grey levels grows with the contrast
    assert np.mean([im[..., 1].std() for im, _ in clear]) > 1.5 * np.mean(
        [im[..., 1].std() for im, _ in faint])
    with pytest.raises(ValueError, match="unknown synthetic preset"):
        SynthParams.preset("easy")


def test_sample_image_is_fixed():
    np.testing.assert_array_equal(sample_image(128), sample_image(128))
    image, inst = sample_data(128)
    assert image.shape == (128, 128, 3) and len(inst) > 0


def test_write_synthetic_coco_roundtrip(tmp_path):
    from napari_iaunet.io.coco import coco_to_instances, read_coco
    from napari_iaunet.io.images import read_image

    path = write_synthetic_coco(tmp_path / "ds", 2, 64, seed=1)
    coco = read_coco(path)
    assert len(coco["images"]) == 2
    expected = generate(2, 64, seed=1)
    for pair, (image, inst) in zip(coco_to_instances(coco), expected):
        entry, got = pair[0], pair[1]
        np.testing.assert_array_equal(read_image(tmp_path / "ds" / "images" / entry["file_name"]),
                                      image)
        np.testing.assert_array_equal(got.to_dense(), inst.to_dense())  # RLE is lossless
    with pytest.raises(FileExistsError):
        write_synthetic_coco(tmp_path / "ds", 1, 64)
    write_synthetic_coco(tmp_path / "ds", 1, 64, overwrite=True)


def test_write_synthetic_coco_in_processes_writes_the_same_data_set(tmp_path):
    from napari_iaunet.io.coco import read_coco

    one = write_synthetic_coco(tmp_path / "one", 3, 64, seed=5)
    three = write_synthetic_coco(tmp_path / "three", 3, 64, seed=5, workers=3)
    assert read_coco(one)["annotations"] == read_coco(three)["annotations"]
    names = sorted(p.name for p in (tmp_path / "one" / "images").glob("*.png"))
    assert len(names) == 3
    for name in names:
        assert (tmp_path / "one" / "images" / name).read_bytes() == \
            (tmp_path / "three" / "images" / name).read_bytes()


def test_synth_cli(tmp_path):
    from napari_iaunet.cli import main

    assert main(["synth", "--out", str(tmp_path / "s"), "-n", "2", "--size", "64",
                 "--workers", "2"]) == 0
    assert (tmp_path / "s" / "annotations.json").is_file()
    assert len(list((tmp_path / "s" / "images").glob("*.png"))) == 2
    assert main(["synth", "--out", str(tmp_path / "s"), "-n", "1", "--size", "64"]) == 1
    assert main(["synth", "--out", str(tmp_path / "c"), "-n", "1", "--size", "64", "--preset",
                 "clear", "--scale", "0.2"]) == 0


def test_comparison_figure_draws_without_pyplot(tmp_path, monkeypatch):
    import sys

    import imageio.v3 as iio

    from napari_iaunet.training.synthetic import comparison_figure

    real = tmp_path / "real.png"
    iio.imwrite(real, sample_image(96))
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # importing it now fails
    out = comparison_figure(real, tmp_path / "cmp.png", crop=48)
    assert out.stat().st_size > 1000
