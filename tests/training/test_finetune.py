"""The fine-tuning library without Qt: the widget's recipe, its data checks and run folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from napari_iaunet.training.finetune import (
    DataError,
    FineTuneSettings,
    make_train_config,
    pairing_problem,
    points_for,
    scan_coco_folder,
)
from napari_iaunet.training.run_folder import default_run_dir, free_run_dir, holds_run


def test_train_config_and_run_folders(tmp_path, monkeypatch):
    import napari_iaunet

    cfg = make_train_config(FineTuneSettings(augment=False, every=7), tmp_path / "r",
                            input_size=512)
    assert (cfg.steps, cfg.batch_size, cfg.lr, cfg.min_lr) == (80, 2, 1e-5, 1e-6)  # quick
    assert cfg.val_every == cfg.checkpoint_every == 7
    assert cfg.scale_range == (1.0, 1.0) and cfg.normalisation == "keep"
    assert cfg.freeze_encoder and cfg.num_points == 3136
    thorough = make_train_config(FineTuneSettings.thorough(), tmp_path / "t", input_size=512)
    assert (thorough.steps, thorough.lr, thorough.freeze_encoder) == (200, 5e-5, False)
    assert thorough.num_points == 12544 and points_for(256) == 3136 and points_for(64) == 256
    on = make_train_config(FineTuneSettings(), tmp_path, input_size=512)
    assert on.scale_range == (0.8, 1.5) and on.augment
    new = make_train_config(FineTuneSettings(), tmp_path, input_size=512, new_model=True)
    assert new.normalisation == "data"
    assert on.freeze_batchnorm and not new.freeze_batchnorm  # a start model keeps its statistics
    assert not new.freeze_encoder  # a new model's encoder learns too
    # augment off is off for real: no flips and no rotations either, only the resize
    from napari_iaunet.training.augment import AugmentConfig
    from napari_iaunet.training.trainer import augment_config_for

    assert cfg.augment is False
    assert augment_config_for(cfg, 512) == AugmentConfig.resize_only(512)
    assert augment_config_for(on, 512) == AugmentConfig(input_size=512, scale_range=(0.8, 1.5))

    source = tmp_path / "plates" / "plate 1.tif"
    (tmp_path / "plates").mkdir()
    beside = default_run_dir(source, "plate 1")
    assert beside == tmp_path / "plates" / "plate_1_iaunet_finetune"
    beside.mkdir()
    (beside / "log.jsonl").write_text("")
    assert holds_run(beside)
    assert default_run_dir(source, "plate 1") == tmp_path / "plates" / "plate_1_iaunet_finetune_2"
    assert free_run_dir(beside) == beside.with_name("plate_1_iaunet_finetune_2")
    assert default_run_dir(None, "plate 1", home=tmp_path) == (
        tmp_path / "napari-iaunet" / "runs" / "plate_1_finetune")
    # an image inside the package never puts a run there
    inside = Path(napari_iaunet.__file__).parent / "img.png"
    assert default_run_dir(inside, "img", home=tmp_path).parent == (
        tmp_path / "napari-iaunet" / "runs")

def test_pairing_problem_says_why_cells_and_image_do_not_fit():
    assert pairing_problem("plate", (100, 120), False, None, (100, 120)) is None
    assert pairing_problem("plate", (100, 120, 3), True, None, (100, 120)) is None
    assert pairing_problem("movie", (5, 100, 120), False, (2,), (100, 120)) is None
    assert "not a 2-D image" in pairing_problem("movie", (5, 100, 120), False, None, (100, 120))
    assert "frame (7,) is not in 'movie'" in pairing_problem("movie", (5, 100, 120), False, (7,),
                                                             (100, 120))
    assert "the cells are 90×120 but 'plate' is 100×120" in pairing_problem(
        "plate", (100, 120), False, None, (90, 120))


def test_scan_coco_folder_finds_files_and_names_what_is_missing(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"")
    coco = {"images": [{"id": 1, "file_name": "a.png"}],
            "annotations": [{"id": 1, "image_id": 1}, {"id": 2, "image_id": 1, "iscrowd": 1}],
            "categories": [{"id": 1, "name": "cell"}]}
    (tmp_path / "cells.json").write_text(json.dumps(coco))
    (tmp_path / "other.json").write_text(json.dumps({"not": "coco"}))
    [entry] = scan_coco_folder(tmp_path)
    assert (entry.n_images, entry.n_cells, entry.n_categories) == (1, 1, 1)
    assert entry.spec == f"{tmp_path / 'cells.json'}:{tmp_path / 'images'}"
    coco["images"].append({"id": 2, "file_name": "b.png"})
    (tmp_path / "cells.json").write_text(json.dumps(coco))
    with pytest.raises(DataError, match="1 of 2 images are not in"):
        scan_coco_folder(tmp_path)
    with pytest.raises(DataError, match="no COCO instance file"):
        scan_coco_folder(tmp_path / "images")
    assert not holds_run(tmp_path)
