"""Out-of-range options are refused by name (exit 2); errors are one line unless --debug."""

from __future__ import annotations

import pytest
from hostile_helpers import one_error_line, run_cli

from napari_iaunet.cli import main

SEGMENT = ["segment", "x.png", "-o", "out"]
EVALUATE = ["evaluate", "--gt", "gt.json", "--pred", "p.json"]
TRAIN = ["train", "--train", "a.json", "--out", "run"]


@pytest.mark.parametrize("base, option, value", [
    (SEGMENT, "--batch-size", "0"),
    (SEGMENT, "--tolerance", "-1"),
    (SEGMENT, "--duplicate-iou", "-3"),
    (SEGMENT, "--cluster-queries", "7"),
    (SEGMENT, "--score-threshold", "1.5"),
    (SEGMENT, "--threads", "0"),
    (EVALUATE, "--iou-threshold", "2"),
    (EVALUATE, "--iou-threshold", "-0.5"),
    (EVALUATE, "--iou-threshold", "nan"),
    (EVALUATE, "--max-dets", "0"),
    (TRAIN, "--input-size", "0"),
    (TRAIN, "--threads", "0"),
    (TRAIN, "--warmup", "-5"),
    (TRAIN, "--lr", "0"),
    (TRAIN, "--lr", "inf"),
    (TRAIN, "--points", "0"),
    (TRAIN, "--queries", "0"),
    (TRAIN, "--batch-size", "0"),
    (TRAIN, "--steps", "0"),
])
def test_out_of_range_option_is_refused_by_name(base, option, value, capsys):
    assert main([*base, option, value]) == 2
    err = capsys.readouterr().err
    assert f"argument {option}: " in err
    assert "Traceback" not in err


def test_good_boundary_values_are_accepted():
    from napari_iaunet.cli import build_parser

    args = build_parser().parse_args([*EVALUATE, "--iou-threshold", "1", "--max-dets", "1"])
    assert args.iou_threshold == 1.0 and args.max_dets == [1]
    args = build_parser().parse_args([*SEGMENT, "--duplicate-iou", "0", "--tolerance", "0"])
    assert args.duplicate_iou == 0.0 and args.tolerance == 0.0


def test_error_is_one_line_without_traceback_in_a_real_process(tmp_path):
    result = run_cli("segment", str(tmp_path / "missing.png"), "-o", str(tmp_path / "o"))
    assert result.returncode == 1
    one_error_line(result.stderr, "image not found", "missing.png")


def test_debug_shows_the_traceback(tmp_path):
    result = run_cli("segment", str(tmp_path / "missing.png"), "-o", str(tmp_path / "o"),
                     "--debug")
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "FileNotFoundError" in result.stderr
    result = run_cli("segment", str(tmp_path / "missing.png"), "-o", str(tmp_path / "o"),
                     env={"NAPARI_IAUNET_DEBUG": "1"})
    assert "Traceback" in result.stderr


def test_unexpected_error_says_so_and_points_to_debug(monkeypatch, capsys):
    def boom(path, overrides=None):
        raise KeyError("surprise")

    monkeypatch.setattr("napari_iaunet.checkpoint.read_checkpoint_info", boom)
    assert main(["info", "x.pt"]) == 1
    err = capsys.readouterr().err
    assert "unexpected KeyError" in err and "--debug" in err and "Traceback" not in err
