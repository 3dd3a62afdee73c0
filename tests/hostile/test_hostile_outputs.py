"""``segment`` outputs: nothing replaced without --overwrite, distinct names for x.png/x.tif,
its own overlays never taken as inputs, bad files skipped and named, stale temp files removed."""

from __future__ import annotations

import json

import imageio.v3 as iio
import tifffile
from hostile_helpers import gray

from napari_iaunet.cli import main


def _segment(weights, *args: str) -> int:
    return main(["segment", *args, "-w", str(weights), "--device", "cpu",
                 "--score-threshold", "0"])


def test_existing_overlay_is_kept_without_overwrite(tiny_weights, tmp_path, capsys):
    iio.imwrite(tmp_path / "im.png", gray())
    out = tmp_path / "out"
    out.mkdir()
    (out / "im_overlay.png").write_bytes(b"my own picture")
    assert _segment(tiny_weights, str(tmp_path / "im.png"), "-o", str(out), "--overlay") == 1
    err = capsys.readouterr().err
    assert "im_overlay.png" in err and "--overwrite" in err
    assert (out / "im_overlay.png").read_bytes() == b"my own picture"
    assert not (out / "im.json").exists()  # refused before anything was written
    assert _segment(tiny_weights, str(tmp_path / "im.png"), "-o", str(out), "--overlay",
                    "--overwrite") == 0
    assert (out / "im_overlay.png").read_bytes() != b"my own picture"


def test_same_stem_images_get_distinct_outputs(tiny_weights, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    iio.imwrite(folder / "x.png", gray(40, 56))
    tifffile.imwrite(folder / "x.tif", gray(48, 64, seed=1))
    out = tmp_path / "out"
    assert _segment(tiny_weights, str(folder), "-o", str(out), "--overlay") == 0
    err = capsys.readouterr().err
    assert "keep the suffix" in err
    png, tif = (json.loads((out / n).read_text()) for n in ("x.png.json", "x.tif.json"))
    assert png["images"][0]["file_name"] == "x.png" and png["images"][0]["height"] == 40
    assert tif["images"][0]["file_name"] == "x.tif" and tif["images"][0]["height"] == 48
    assert (out / "x.png_overlay.png").is_file() and (out / "x.tif_overlay.png").is_file()
    assert not (out / "x.json").exists()
    # a second run is refused up front (not halfway, on a file it wrote itself)
    before = (out / "x.png.json").read_bytes()
    assert _segment(tiny_weights, str(folder), "-o", str(out)) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "x.png.json").read_bytes() == before


def test_own_overlays_are_not_segmented_again(tiny_weights, tmp_path, capsys):
    folder = tmp_path / "d"
    folder.mkdir()
    for i in range(2):
        iio.imwrite(folder / f"im{i}.png", gray(seed=i))
    assert _segment(tiny_weights, str(folder), "-o", str(folder), "--overlay") == 0
    capsys.readouterr()
    assert _segment(tiny_weights, str(folder), "-o", str(folder), "--overlay",
                    "--overwrite") == 0
    err = capsys.readouterr().err
    assert "skipped 2 overlay picture(s)" in err and "done: 2 images" in err
    assert sorted(p.name for p in folder.iterdir()) == [
        "im0.json", "im0.png", "im0_overlay.png", "im1.json", "im1.png", "im1_overlay.png"]
    # a file named explicitly is always segmented
    assert _segment(tiny_weights, str(folder / "im0_overlay.png"), "-o",
                    str(tmp_path / "o2")) == 0


def _batch_with_bad_files(folder):
    folder.mkdir()
    iio.imwrite(folder / "a_good.png", gray(seed=1))
    (folder / "b_empty.png").write_bytes(b"")
    (folder / "c_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    tifffile.imwrite(folder / "d_stack.tif", gray(32, 32)[None].repeat(3, 0), imagej=True,
                     metadata={"axes": "ZYX"})
    iio.imwrite(folder / "e_good.png", gray(seed=2))


def test_bad_files_do_not_stop_the_batch(tiny_weights, tmp_path, capsys):
    folder = tmp_path / "batch"
    _batch_with_bad_files(folder)
    out = tmp_path / "out"
    assert _segment(tiny_weights, str(folder), "-o", str(out)) == 1
    err = capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["a_good.json", "e_good.json"]
    summary = err[err.index("error: 3 of 5 images could not be segmented"):]
    assert "Traceback" not in err
    assert "b_empty.png: " in summary and "empty (0 bytes)" in summary
    assert "c_corrupt.png: " in summary and "damaged" in summary
    assert "d_stack.tif: " in summary and "stack of 3 planes" in summary


def test_bad_files_with_one_file_still_write_the_rest(tiny_weights, tmp_path, capsys):
    folder = tmp_path / "batch"
    _batch_with_bad_files(folder)
    out = tmp_path / "out"
    assert _segment(tiny_weights, str(folder), "-o", str(out), "--one-file", "all.json") == 1
    coco = json.loads((out / "all.json").read_text())
    assert [im["file_name"] for im in coco["images"]] == ["a_good.png", "e_good.png"]
    assert "3 of 5 images could not be segmented" in capsys.readouterr().err


def test_stale_temp_files_of_a_killed_run_are_removed(tiny_weights, tmp_path):
    iio.imwrite(tmp_path / "im.png", gray())
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".im.json.k1ll3d00.tmp"  # what atomic_path leaves when killed mid-write
    stale.write_bytes(b"half a file")
    other = out / ".notes.txt.k1ll3d00.tmp"  # not ours to touch
    other.write_bytes(b"x")
    assert _segment(tiny_weights, str(tmp_path / "im.png"), "-o", str(out)) == 0
    assert not stale.exists() and other.exists()
    assert (out / "im.json").is_file()
