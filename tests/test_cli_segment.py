"""The ``napari-iaunet segment`` and ``info`` commands, end to end with a real (tiny) checkpoint."""

import json
import os
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from napari_iaunet.checkpoint import save_checkpoint
from napari_iaunet.cli import main
from napari_iaunet.model import IAUNetConfig, build_model


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(IAUNetConfig(backbone="resnet18", num_queries=6, input_size=64))
    with torch.no_grad():  # confident queries, so the files carry instances
        model.decoder.class_embed.bias.copy_(torch.tensor([4.0, -4.0]))
    path = tmp_path_factory.mktemp("w") / "tiny.pt"
    return save_checkpoint(path, model, {"description": "tiny test model"})


@pytest.fixture()
def images(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        iio.imwrite(folder / f"im{i}.png", rng.integers(0, 255, (48 + 8 * i, 64), dtype=np.uint8))
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_segment_folder_writes_one_coco_per_image(tiny_weights, images, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["segment", str(images), "--weights", str(tiny_weights), "--out", str(out),
               "--score-threshold", "0.0", "--overlay", "--device", "cpu"])
    assert rc == 0
    for i in range(3):
        coco = json.loads((out / f"im{i}.json").read_text())
        assert coco["images"][0]["file_name"] == f"im{i}.png"
        assert coco["images"][0]["height"] == 48 + 8 * i
        assert coco["annotations"] and all("score" in a for a in coco["annotations"])
        assert (out / f"im{i}_overlay.png").is_file()
        made_by = coco["info"]  # COCO's info: what made the file
        assert made_by["model"] == str(tiny_weights) and made_by["views"] == 4
        assert made_by["score_threshold"] == 0.0 and made_by["description"].startswith("napari")
    assert "3 images" in capsys.readouterr().err


def test_segment_refuses_to_overwrite(tiny_weights, images, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["segment", str(images / "im0.png"), "-w", str(tiny_weights), "-o", str(out)]
    assert main(args) == 0
    before = (out / "im0.json").read_bytes()
    assert main(args) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "im0.json").read_bytes() == before
    assert main([*args, "--overwrite"]) == 0


def test_segment_errors_are_one_line(tiny_weights, tmp_path, capsys):
    assert main(["segment", str(tmp_path / "missing.png"), "-w", str(tiny_weights),
                 "-o", str(tmp_path)]) == 1
    assert "image not found" in capsys.readouterr().err
    (tmp_path / "broken.pt").write_bytes(b"\x00" * 100)
    (tmp_path / "a.png").write_bytes(b"")
    assert main(["segment", str(tmp_path / "a.png"), "-w", str(tmp_path / "broken.pt"),
                 "-o", str(tmp_path / "o")]) == 1
    assert "not a readable PyTorch checkpoint" in capsys.readouterr().err
    assert main(["segment", str(tmp_path / "a.png"), "-w", str(tiny_weights),
                 "-o", str(tmp_path / "o"), "--threads", "0"]) == 2
    assert "argument --threads: must be at least 1" in capsys.readouterr().err


def test_segment_threads_and_cpu_batch_default(tiny_weights, images, tmp_path, monkeypatch):
    import torch

    from napari_iaunet.inference import Segmenter

    seen = {}
    real = Segmenter.from_checkpoint.__func__

    def spy(cls, *a, **kw):
        seg = real(cls, *a, **kw)
        seen["batch_size"] = seg.batch_size
        seen.setdefault("match", []).append(seg.effective_match_brightness())
        return seg

    monkeypatch.setattr(Segmenter, "from_checkpoint", classmethod(spy))
    before = torch.get_num_threads()
    try:
        assert main(["segment", str(images / "im0.png"), "-w", str(tiny_weights),
                     "-o", str(tmp_path / "o"), "--device", "cpu", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
        assert main(["segment", str(images / "im0.png"), "-w", str(tiny_weights), "--overwrite",
                     "-o", str(tmp_path / "o"), "--device", "cpu", "--match-brightness"]) == 0
    finally:
        torch.set_num_threads(before)
    assert seen["batch_size"] == 1  # the CPU default, not a fixed 4 from the command line
    assert seen["match"] == [False, True]  # the model's (off), then the flag


def test_info_prints_what_a_checkpoint_is(tiny_weights, capsys):
    assert main(["info", str(tiny_weights)]) == 0
    text = capsys.readouterr().out
    assert "resnet18" in text and "tiny test model" in text
    assert main(["info", str(tiny_weights), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["num_queries"] == 6


@pytest.mark.slow
def test_torchrun_shards_images_and_gathers_one_file(tiny_weights, images, tmp_path):
    out = tmp_path / "dist"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "napari_iaunet.cli", "segment", str(images),
           "-w", str(tiny_weights), "-o", str(out), "--one-file", "all.json",
           "--score-threshold", "0.0", "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    coco = json.loads((out / "all.json").read_text())
    assert [im["file_name"] for im in coco["images"]] == ["im0.png", "im1.png", "im2.png"]
    assert "rank 1/2" in proc.stderr and "rank 0/2" in proc.stderr
    # the same instances as a single process
    single = tmp_path / "single"
    assert main(["segment", str(images), "-w", str(tiny_weights), "-o", str(single),
                 "--one-file", "all.json", "--score-threshold", "0.0", "--device", "cpu"]) == 0
    ref = json.loads((single / "all.json").read_text())
    assert len(ref["annotations"]) == len(coco["annotations"])


def test_progress_bar_fills_on_a_terminal(capsys, monkeypatch):
    from napari_iaunet._cli.segment import _ProgressBar

    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    bar = _ProgressBar("[1/1] big.tif")
    for i in range(1, 5):
        bar(i, 4)
    bar.finish("12 instances in 1.00 s")
    err = capsys.readouterr().err
    assert "[1/1] big.tif [######------------------] 1/4 tiles" in err
    assert "4/4 tiles" in err and err.endswith("[1/1] big.tif: 12 instances in 1.00 s\n")


def test_segment_uses_the_threshold_the_checkpoint_recommends(tiny_weights, images, tmp_path,
                                                              capsys):
    from napari_iaunet.checkpoint import load_checkpoint, recommended_score_threshold
    from napari_iaunet.inference import PostprocessSettings, Segmenter

    loaded = load_checkpoint(tiny_weights)
    tuned = save_checkpoint(tmp_path / "tuned.pt", loaded.model, {
        **loaded.metadata, "score_threshold": {"value": 0.99, "chosen_on": "held-back strips"}})
    assert recommended_score_threshold(load_checkpoint(tuned).metadata) == 0.99
    assert recommended_score_threshold({"score_threshold": {"value": 1.5}}) is None
    assert recommended_score_threshold(loaded.metadata) is None
    assert Segmenter.from_checkpoint(tuned, device="cpu").settings.score_threshold == 0.99
    explicit = Segmenter.from_checkpoint(tuned, device="cpu",
                                         settings=PostprocessSettings(score_threshold=0.2))
    assert explicit.settings.score_threshold == 0.2
    counts = {}
    for name, weights, extra in (("plain", tiny_weights, []), ("tuned", tuned, []),
                                 ("override", tuned, ["--score-threshold", "0.0"])):
        out = tmp_path / name
        assert main(["segment", str(images / "im0.png"), "--weights", str(weights), "--out",
                     str(out), "--device", "cpu", *extra]) == 0
        err = capsys.readouterr().err
        assert ("score threshold 0.99: the checkpoint's" in err) == (name == "tuned")
        counts[name] = len(json.loads((out / "im0.json").read_text())["annotations"])
    # the tiny model's queries score about 0.98: 0.99 keeps none, 0.5 and 0.0 keep them
    assert counts["tuned"] == 0 and counts["plain"] > 0 and counts["override"] > 0


def test_segment_warns_when_the_mirror_views_disagree(tmp_path, capsys):
    """The bundled model never trained on synthetic images: on the sample its mirror views
    confirm almost none of what the image alone gives, and the command says so in one line; with
    one view there is nothing to compare and no warning."""
    rc = main(["segment", "--sample", "--out", str(tmp_path / "four"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 0
    (line,) = [x for x in err.splitlines() if "warning" in x]
    assert "mirror images confirm" in line and "--flips 1" in line
    rc = main(["segment", "--sample", "--out", str(tmp_path / "one"), "--device", "cpu",
               "--flips", "1"])
    err = capsys.readouterr().err
    assert rc == 0 and "warning" not in err
    one = json.loads((tmp_path / "one" / "sample.json").read_text())
    four = json.loads((tmp_path / "four" / "sample.json").read_text())
    assert len(one["annotations"]) > 10 * len(four["annotations"]) > 0
