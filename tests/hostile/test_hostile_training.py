"""``train`` under hostile input and faults: --overwrite deletes nothing before the new run
starts, bad --resume states and diverging runs are refused in one sentence, data without cells
writes no checkpoint, a full disk says so, a killed run's temp files are cleaned up."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from hostile_helpers import TINY_TRAIN, one_error_line, run_cli

from napari_iaunet.cli import main


def _train(coco, out, *extra: str) -> int:
    return main(["train", "--train", str(coco), "--out", str(out), "--steps", "1", *TINY_TRAIN,
                 *extra])


@pytest.fixture(scope="module")
def finished_run(tiny_coco, tmp_path_factory):
    """A finished one-step run: best.pt, last.pt, state.pt, log.jsonl, loss.png."""
    run = tmp_path_factory.mktemp("runs") / "run"
    assert _train(tiny_coco, run) == 0
    return run


@pytest.fixture()
def run_copy(finished_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_fine_tune_from_the_run_it_overwrites(tiny_coco, run_copy, capsys):
    old_log = (run_copy / "log.jsonl").read_text()
    assert _train(tiny_coco, run_copy, "--weights", str(run_copy / "best.pt"),
                  "--overwrite") == 0
    assert "checkpoint not found" not in capsys.readouterr().err
    assert (run_copy / "best.pt").is_file() and (run_copy / "last.pt").is_file()
    new_log = (run_copy / "log.jsonl").read_text()
    assert new_log != old_log
    start = json.loads(new_log.splitlines()[0])
    assert start["started_from"].startswith("checkpoint:")


def test_overwrite_with_a_corrupt_start_keeps_the_old_run(tiny_coco, run_copy, tmp_path,
                                                          capsys):
    before = _snapshot(run_copy)
    (tmp_path / "corrupt.pt").write_bytes(b"PK\x03\x04 not really a checkpoint")
    assert _train(tiny_coco, run_copy, "--weights", str(tmp_path / "corrupt.pt"),
                  "--overwrite") == 1
    assert "corrupt.pt is not a readable PyTorch checkpoint" in capsys.readouterr().err
    assert _snapshot(run_copy) == before


def test_overwrite_with_a_missing_start_keeps_the_old_run(tiny_coco, run_copy, capsys):
    before = _snapshot(run_copy)
    assert _train(tiny_coco, run_copy, "--weights", str(run_copy / "nope.pt"),
                  "--overwrite") == 1
    assert "checkpoint not found" in capsys.readouterr().err
    assert _snapshot(run_copy) == before


class _RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_resume_from_a_corrupt_or_malicious_state(tiny_coco, run_copy, tmp_path, capsys):
    (run_copy / "state.pt").write_bytes(b"\x00" * 64)
    assert _train(tiny_coco, run_copy, "--resume", "--steps", "2") == 1
    err = capsys.readouterr().err
    assert "state.pt is not a readable PyTorch training state" in err and "Traceback" not in err
    torch.save({"version": 1, "step": _RunsCode(tmp_path / "PWNED")}, run_copy / "state.pt")
    assert _train(tiny_coco, run_copy, "--resume", "--steps", "2") == 1
    assert "state.pt was refused for safety" in capsys.readouterr().err
    assert not (tmp_path / "PWNED").exists()
    torch.save({"version": 1, "step": 3}, run_copy / "state.pt")
    assert _train(tiny_coco, run_copy, "--resume", "--steps", "2") == 1
    assert "incomplete training state" in capsys.readouterr().err


def test_data_without_usable_cells_writes_no_checkpoint(tiny_coco, tmp_path, capsys):
    coco = json.loads(tiny_coco.read_text())
    coco["annotations"] = []
    empty = tiny_coco.parent / "no_cells.json"
    empty.write_text(json.dumps(coco))
    assert _train(f"{empty}:{tiny_coco.parent / 'images'}", tmp_path / "run") == 1
    assert "holds no usable cell annotations" in capsys.readouterr().err
    assert not list((tmp_path / "run").glob("*.pt"))


def test_diverging_learning_rate_is_one_sentence(tiny_coco, tmp_path):
    result = run_cli("train", "--train", str(tiny_coco), "--out", str(tmp_path / "run"),
                     "--steps", "4", *TINY_TRAIN, "--lr", "1e12", timeout=240)
    assert result.returncode == 1
    one_error_line(result.stderr, "training diverged at step", "--lr")


def test_full_disk_while_writing_a_checkpoint(tiny_coco, tmp_path):
    """A real write limit (RLIMIT_FSIZE: the kernel refuses bytes past 1 MB, as a full disk
    does) in a real process: torch's "unexpected pos" becomes "not enough disk space"."""
    limit = ("import resource, signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
             "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))")
    run = tmp_path / "run"
    result = run_cli("train", "--train", str(tiny_coco), "--out", str(run), "--steps", "1",
                     *TINY_TRAIN, preexec=limit, timeout=240)
    assert result.returncode == 1, result.stderr
    line = one_error_line(result.stderr, "not enough disk space to write", "nothing was changed")
    assert "unexpected pos" not in line
    assert not list(run.glob(".*.tmp")) and not list(run.glob("*.pt"))


def test_stale_temp_files_are_removed_on_resume(tiny_coco, run_copy):
    stale = [run_copy / ".last.pt.a1b2c3d4.tmp", run_copy / ".state.pt.zz99yy88.tmp"]
    for p in stale:
        p.write_bytes(b"\x00" * 1000)
    keep = run_copy / ".notes.txt.a1b2c3d4.tmp"
    keep.write_bytes(b"not ours")
    assert _train(tiny_coco, run_copy, "--resume", "--steps", "2") == 0
    assert not any(p.exists() for p in stale) and keep.exists()


@pytest.mark.parametrize("field, value, needle", [
    ("lr", 0.0, "lr must be a number greater than 0"),
    ("lr", float("nan"), "lr must be a number greater than 0"),
    ("num_points", 0, "num_points must be a whole number ≥ 1"),
    ("warmup_steps", -5, "warmup_steps must be a whole number ≥ 0"),
    ("input_size", 0, "input_size must be a whole number ≥ 32"),
    ("num_threads", 0, "num_threads must be a whole number ≥ 1"),
    ("min_lr", -1.0, "min_lr must be 0 or more"),
])
def test_train_config_from_python_refuses_the_same_values(field, value, needle):
    from napari_iaunet.training import TrainConfig

    with pytest.raises(ValueError, match=needle):
        TrainConfig(**{field: value})


def test_resume_from_a_state_whose_model_does_not_build(tiny_coco, run_copy, capsys):
    state = torch.load(run_copy / "state.pt", weights_only=True)
    state["model_config"] = {**state["model_config"], "backbone": "resnet999"}
    torch.save(state, run_copy / "state.pt")
    assert _train(tiny_coco, run_copy, "--resume", "--steps", "2") == 1
    err = capsys.readouterr().err
    assert "state.pt does not hold a usable model" in err and "--overwrite" in err
