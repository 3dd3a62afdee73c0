"""``napari-iaunet evaluate``: predictions file or checkpoint (hook) → table and JSON."""

from __future__ import annotations

import json

import imageio.v3 as iio
import numpy as np

from napari_iaunet.cli import main
from napari_iaunet.instances import Instances
from napari_iaunet.io.coco import instances_to_coco, to_coco_results, write_coco


def _gt(tmp_path):
    masks = np.zeros((3, 40, 50), bool)
    masks[0, 2:12, 3:15] = True
    masks[1, 8:20, 10:30] = True  # overlaps the first
    masks[2, 25:38, 30:45] = True
    inst = Instances.from_masks(masks)
    coco = instances_to_coco([inst], [{"id": 4, "file_name": "img.png"}], include_scores=False)
    write_coco(tmp_path / "gt.json", coco)
    return inst, coco


def test_results_list_table_and_json(tmp_path, capsys):
    _, coco = _gt(tmp_path)
    results = to_coco_results(coco)
    results[0]["score"] = 0.4
    (tmp_path / "pred.json").write_text(json.dumps(results))
    out = tmp_path / "metrics.json"
    rc = main(["evaluate", "--gt", str(tmp_path / "gt.json"), "--pred",
               str(tmp_path / "pred.json"), "--json", str(out), "--per-image"])
    assert rc == 0
    table = capsys.readouterr().out
    assert "| AP (IoU .50:.95) (maxDets 1000) | 1.0000 |" in table
    saved = json.loads(out.read_text())
    assert saved["f1"] == 1.0 and saved["n_gt"] == 3 and len(saved["per_image"]) == 1
    # never silently overwrites
    rc = main(["evaluate", "--gt", str(tmp_path / "gt.json"), "--pred",
               str(tmp_path / "pred.json"), "--json", str(out)])
    assert rc == 1 and "already exists" in capsys.readouterr().err
    assert main(["evaluate", "--gt", str(tmp_path / "gt.json"), "--pred",
                 str(tmp_path / "pred.json"), "--json", str(out), "--overwrite",
                 "--score-threshold", "0.5"]) == 0
    assert json.loads(out.read_text())["recall"] == 2 / 3


def test_bad_prediction_file_is_a_clear_error(tmp_path, capsys):
    _gt(tmp_path)
    (tmp_path / "pred.json").write_text("[{\"image_id\": 99, \"category_id\": 1}]")
    rc = main(["evaluate", "--gt", str(tmp_path / "gt.json"), "--pred",
               str(tmp_path / "pred.json")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "pred.json" in err and "unknown image_id 99" in err


def test_weights_hook_segments_then_evaluates(tmp_path, capsys, monkeypatch):
    inst, _ = _gt(tmp_path)
    (tmp_path / "images").mkdir()
    iio.imwrite(tmp_path / "images" / "img.png", np.zeros((40, 50), np.uint8))
    calls = {}

    class FakeSegmenter:
        """Stands in for the model; everything after segment() is the real code path."""

        @classmethod
        def from_checkpoint(cls, path, device="auto", settings=None, match_brightness=None,
                            **views):
            calls["path"], calls["device"] = str(path), device
            calls.update(views)  # flips=N only when --flips was given
            calls["score_threshold"] = settings.score_threshold
            calls["match_brightness"] = match_brightness
            calls["duplicates"] = (settings.duplicate_iou, settings.cluster_queries)
            if settings.mask_threshold != 0.5:
                calls["mask_threshold"] = settings.mask_threshold
            segmenter = cls()
            segmenter.views = views.get("flips", 4)  # as Segmenter.views: the default 4
            return segmenter

        def segment(self, image):
            calls["shape"] = image.shape
            return inst[[0, 1]]  # misses the third cell

    from napari_iaunet import inference

    monkeypatch.setattr(inference, "Segmenter", FakeSegmenter)
    rc = main(["evaluate", "--gt", str(tmp_path / "gt.json"), "--weights",
               str(tmp_path / "w.pt"), "--device", "cpu", "--json", str(tmp_path / "m.json")])
    assert rc == 0
    assert calls == {"path": str(tmp_path / "w.pt"), "device": "cpu", "shape": (40, 50),
                     "score_threshold": 0.01,  # AP needs every detection
                     "match_brightness": None,  # the model's own setting
                     "duplicates": (0.5, None)}  # the segment command's defaults
    assert json.loads((tmp_path / "m.json").read_text())["views"] == 4  # the figures' views
    assert main(["evaluate", "--gt", str(tmp_path / "gt.json"), "--weights",
                 str(tmp_path / "w.pt"), "--no-match-brightness", "--duplicate-iou", "0.7",
                 "--cluster-queries", "0"]) == 0
    assert calls["match_brightness"] is False
    assert calls["duplicates"] == (0.7, False)
    assert main(["evaluate", "--gt", str(tmp_path / "gt.json"), "--weights",
                 str(tmp_path / "w.pt"), "--duplicate-iou", "0"]) == 0
    assert calls["duplicates"] == (None, None)  # 0 turns the filter off
    assert main(["evaluate", "--gt", str(tmp_path / "gt.json"), "--weights",
                 str(tmp_path / "w.pt"), "--mask-threshold", "0.4"]) == 0
    assert calls["mask_threshold"] == 0.4
    assert main(["evaluate", "--gt", str(tmp_path / "gt.json"), "--weights",
                 str(tmp_path / "w.pt"), "--flips", "1"]) == 0
    assert calls["flips"] == 1
    for bad in ("0", "1", "1.5"):  # a usage error, before any segmenting
        calls.clear()
        assert main(["evaluate", "--gt", str(tmp_path / "gt.json"), "--weights",
                     str(tmp_path / "w.pt"), "--mask-threshold", bad]) == 2
        assert calls == {}
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["tp"] == 2 and saved["fn"] == 1 and saved["precision"] == 1.0
