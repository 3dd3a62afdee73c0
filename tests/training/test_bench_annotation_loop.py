"""benchmarks/bench_annotation_loop.py runs end to end (a tiny model, two synthetic images)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from napari_iaunet.training.synthetic import SynthParams, write_synthetic_coco

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_annotation_loop_benchmark_counts_edits_and_plots(tmp_path, tiny_pairs, tiny_config):
    from napari_iaunet.training import TrainConfig, train

    write_synthetic_coco(tmp_path / "data", 3, 64, seed=5, params=SynthParams(scale=0.15))
    start = train(tiny_pairs, None, TrainConfig(out_dir=tmp_path / "start", steps=2, lr=1e-3,
                                                num_points=256, plot=False),
                  model_config=tiny_config())
    script = REPO / "benchmarks" / "bench_annotation_loop.py"
    run = subprocess.run(
        [sys.executable, str(script), "--data", str(tmp_path / "data"), "--weights",
         str(start.last_path), "--rounds", "2", "--steps", "2", "--points", "256",
         "--threads", "1", "--out", str(tmp_path / "out"), "--name", "tiny"],
        capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    payload = json.loads((tmp_path / "out" / "annotation_loop_tiny.json").read_text())
    rounds = payload["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert set(rounds[0]["unused_before"]["per_image"]) == set(payload["images"])
    for r in rounds[1:]:
        edits = r["image_edits"]["edits"]
        assert edits["total"] == (edits["deletes"] + edits["clicks"] + edits["drawings"]
                                  + edits["redraws"])
        assert r["finetune_s"] > 0 and r["steps"] == 2 and r["device"] == "cpu"
        assert r["unused_before"]["images"] == r["unused_after"]["images"] == 3 - r["round"]
    assert payload["settings"]["steps"] == 2 and payload["settings"]["freeze_encoder"]
    assert "| 1 |" in (tmp_path / "out" / "annotation_loop_tiny.md").read_text()
    png = tmp_path / "loop.png"
    plot = subprocess.run([sys.executable, str(script), "--plot", str(png), "--plot-from",
                           str(tmp_path / "out" / "annotation_loop_tiny.json"), "--out",
                           str(tmp_path / "summary")],
                          capture_output=True, text=True, timeout=300)
    assert plot.returncode == 0, plot.stderr[-2000:]
    assert png.stat().st_size > 10_000
    summary = (tmp_path / "summary" / "annotation_loop.md").read_text()
    assert "[tiny](annotation_loop_tiny.md) | 2 |" in summary
