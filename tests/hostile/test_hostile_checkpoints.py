"""Hostile checkpoints: code in the pickle, NaN weights, damaged or mismatched files. ``info``
refuses exactly what ``segment`` refuses, with the same sentence."""

from __future__ import annotations

import os

import imageio.v3 as iio
import pytest
import torch
from hostile_helpers import gray

from napari_iaunet.checkpoint import CheckpointError, load_checkpoint, read_checkpoint_info
from napari_iaunet.cli import main


class _RunsCode:
    """Unpickling this would run ``touch MARKER`` (what a malicious checkpoint does)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_is_refused_for_safety_and_runs_nothing(tiny_weights, tmp_path,
                                                                     capsys):
    payload = torch.load(tiny_weights, weights_only=True)
    payload["metadata"]["evil"] = _RunsCode(tmp_path / "PWNED")
    torch.save(payload, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "evil.pt")
    text = str(info.value)
    assert "evil.pt was refused for safety" in text and "system" in text
    assert "not just plain tensors" in text or "besides plain tensors" in text
    assert "weights_only" not in text and "truncated" not in text
    img = tmp_path / "im.png"
    iio.imwrite(img, gray())
    for args in (["info", str(tmp_path / "evil.pt")],
                 ["segment", str(img), "-w", str(tmp_path / "evil.pt"), "-o", str(tmp_path)]):
        assert main(args) == 1
        assert "refused for safety" in capsys.readouterr().err
    assert not (tmp_path / "PWNED").exists()


def _variant(tiny_weights, tmp_path, change) -> str:
    payload = torch.load(tiny_weights, weights_only=True)
    change(payload)
    path = tmp_path / "variant.pt"
    torch.save(payload, path)
    return str(path)


def _nan(p):
    for v in p["state_dict"].values():
        if v.is_floating_point():
            v.fill_(float("nan"))


def _drop_key(p):
    p["state_dict"].pop(next(iter(p["state_dict"])))


def _extra_key(p):
    p["state_dict"]["decoder.surprise.weight"] = torch.zeros(3)


def _wrong_shape(p):
    k = "decoder.query_feat.weight"
    p["state_dict"][k] = torch.zeros(p["state_dict"][k].shape[0] + 1, p["state_dict"][k].shape[1])


def _unknown_backbone(p):
    p["config"]["backbone"] = "resnet999"


def _negative_queries(p):
    p["config"]["num_queries"] = -3


def _zero_queries(p):
    p["config"]["num_queries"] = 0


@pytest.mark.parametrize("change, needle", [
    (_nan, "holds NaN or infinite weights"),
    (_drop_key, "1 weights missing"),
    (_extra_key, "1 unknown weights (e.g. 'decoder.surprise.weight')"),
    (_wrong_shape, "of the wrong shape (e.g. 'decoder.query_feat.weight'"),
    (_unknown_backbone, "unknown backbone 'resnet999'"),
    (_negative_queries, "num_queries must be a positive whole number, got -3"),
    (_zero_queries, "num_queries must be a positive whole number, got 0"),
])
def test_info_refuses_what_segment_refuses(tiny_weights, tmp_path, capsys, change, needle):
    path = _variant(tiny_weights, tmp_path, change)
    with pytest.raises(CheckpointError, match=r"variant\.pt") as from_info:
        read_checkpoint_info(path)
    with pytest.raises(CheckpointError) as from_load:
        load_checkpoint(path)
    assert needle in str(from_info.value)
    assert str(from_info.value) == str(from_load.value)
    img = tmp_path / "im.png"
    iio.imwrite(img, gray())
    assert main(["segment", str(img), "-w", path, "-o", str(tmp_path / "o")]) == 1
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "o" / "im.json").exists()  # never "0 cells, exit 0"


def test_truncated_checkpoint_is_called_damaged(tiny_weights, tmp_path):
    data = tiny_weights.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        read_checkpoint_info(tmp_path / "cut.pt")


def test_good_checkpoint_passes_info_and_load(tiny_weights):
    assert read_checkpoint_info(tiny_weights).config.num_queries == 6
    assert load_checkpoint(tiny_weights).config.num_queries == 6
