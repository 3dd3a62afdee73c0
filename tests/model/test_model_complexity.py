"""Parameter and multiply-accumulate counts against the paper (counted on the meta device)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from napari_iaunet.model import IAUNetConfig, build_model
from napari_iaunet.model.complexity import (
    count_macs,
    count_macs_for_config,
    count_parameters,
    fidelity_table,
    format_fidelity_table,
)


@pytest.mark.parametrize(
    ("backbone", "paper_millions"),
    [("resnet50", 39.37), ("resnet101", 58.36), ("swin_small", 64.1), ("swin_base", 102.1)],
)
def test_parameter_counts_match_paper(backbone: str, paper_millions: float) -> None:
    with torch.device("meta"):
        model = build_model(IAUNetConfig(backbone=backbone))
    assert count_parameters(model) / 1e6 == pytest.approx(paper_millions, rel=0.01)


def test_resnet50_exact_parameter_count() -> None:
    """39,371,523 = ResNet-50 without fc (23,508,032) + the documented decoder."""
    with torch.device("meta"):
        model = build_model(IAUNetConfig())
    assert count_parameters(model.encoder) == 23_508_032
    assert count_parameters(model) == 39_371_523
    assert count_parameters(model, trainable_only=True) == 39_371_523 - 67_077  # fc/obj/bbox


def test_resnet50_macs_at_512_match_paper() -> None:
    _, macs = count_macs_for_config(IAUNetConfig(), (1, 3, 512, 512))
    assert macs / 1e9 == pytest.approx(49.0, rel=0.05)


def test_macs_grow_with_queries_like_paper_table5() -> None:
    paper = {100: 49.0, 300: 61.0, 1000: 104.0}
    ours = {q: count_macs_for_config(IAUNetConfig(num_queries=q))[1] / 1e9 for q in paper}
    for q in paper:
        assert ours[q] == pytest.approx(paper[q], rel=0.05)
    # the increments themselves (the query-dependent part) within 10%
    assert ours[300] - ours[100] == pytest.approx(paper[300] - paper[100], rel=0.10)
    assert ours[1000] - ours[100] == pytest.approx(paper[1000] - paper[100], rel=0.10)


def test_cpu_count_equals_meta_count_including_attention() -> None:
    """On CPU attention runs a fused SDPA kernel the stock counter misses; we add its formula."""
    config = IAUNetConfig(backbone="resnet18", num_queries=8)
    params_meta, macs_meta = count_macs_for_config(config, (1, 3, 64, 96))
    model = build_model(config)
    assert count_parameters(model) == params_meta
    assert count_macs(model, (1, 3, 64, 96)) == macs_meta
    assert model.training  # mode restored


def test_attention_products_are_counted() -> None:
    """Doubling the memory tokens of one cross-attention adds exactly 2*Q*dHW MACs of Q K^T, A V."""
    from napari_iaunet.model.transformer import CrossAttentionLayer

    class Wrapper(torch.nn.Module):
        def __init__(self, tokens: int) -> None:
            super().__init__()
            self.layer = CrossAttentionLayer(32, 4, dropout=0.0)
            self.tokens = tokens

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q = x.new_zeros(1, 10, 32)
            m = x.new_zeros(1, self.tokens, 32)
            return self.layer(q, m, m, q)

    small, large = count_macs(Wrapper(50), (1,)), count_macs(Wrapper(100), (1,))
    kv_projection = 50 * 32 * 32 * 2  # keys and values of the 50 extra tokens
    attention = 2 * 10 * 50 * 32  # Q K^T and A V over the 50 extra tokens
    assert large - small == kv_projection + attention


@pytest.mark.slow
def test_fidelity_table_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = fidelity_table(["resnet50", "swin_base"], [100, 300])
    assert [(r["backbone"], r["queries"]) for r in rows] == [
        ("resnet50", 100), ("resnet50", 300), ("swin_base", 100), ("swin_base", 300),
    ]  # fmt: skip
    by_key = {(r["backbone"], r["queries"]): r for r in rows}
    assert by_key[("resnet50", 100)]["paper_gmacs"] == 49.0
    for row in rows:
        assert row["gmacs"] == pytest.approx(row["paper_gmacs"], rel=0.05)
    text = format_fidelity_table(rows)
    assert text.count("\n") == 5 and "| resnet50 | 100 | 39.37 | 39.37 |" in text

    from napari_iaunet.cli import main

    out_json = tmp_path / "fidelity.json"
    code = main(["fidelity", "--backbones", "resnet18", "--queries", "8", "--size", "64",
                 "--json", str(out_json)])  # fmt: skip
    assert code == 0
    assert "| resnet18 | 8 |" in capsys.readouterr().out
    payload = json.loads(out_json.read_text())
    assert payload["input_shape"] == [1, 3, 64, 64] and payload["rows"][0]["queries"] == 8


def test_cli_rejects_unknown_backbone(capsys: pytest.CaptureFixture[str]) -> None:
    from napari_iaunet.cli import main

    assert main(["fidelity", "--backbones", "vgg"]) == 1
    assert "unknown backbone" in capsys.readouterr().err
