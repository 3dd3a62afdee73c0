"""Mask2Former's masked attention as an IAUNet option (``IAUNetConfig.masked_attention``)."""

from __future__ import annotations

import torch

from napari_iaunet.model import IAUNetConfig, build_model
from napari_iaunet.model.transformer import CrossAttentionLayer


def test_blocked_memory_does_not_reach_the_query():
    torch.manual_seed(0)
    layer = CrossAttentionLayer(16, 2, dropout=0.0).eval()
    queries, query_pos = torch.randn(1, 3, 16), torch.randn(1, 3, 16)
    memory, memory_pos = torch.randn(1, 10, 16), torch.randn(1, 10, 16)
    blocked = torch.zeros(2, 3, 10, dtype=torch.bool)  # (B·heads, Q, HW)
    blocked[:, 0, 5:] = True  # query 0 sees pixels 0-4 only
    changed = memory.clone()
    changed[:, 5:] += 3.0
    with torch.no_grad():
        a = layer(queries, memory, memory_pos, query_pos, blocked)
        b = layer(queries, changed, memory_pos, query_pos, blocked)
    torch.testing.assert_close(a[:, 0], b[:, 0])
    assert not torch.allclose(a[:, 1], b[:, 1])  # unmasked queries see the change


def test_attention_mask_follows_the_previous_masks(tiny_config):
    model = build_model(tiny_config(masked_attention=True))
    decoder = model.decoder
    logits = torch.full((1, 8, 16, 16), -5.0)
    logits[0, 0, :8, :8] = 5.0  # query 0 covers the top-left quarter
    logits[0, 1] = 5.0  # query 1 covers everything; the others cover nothing
    blocked = decoder._attention_mask(logits, (4, 4))
    assert blocked.shape == (decoder.num_heads, 8, 16)  # (B·heads, Q, HW), B = 1
    quarter = torch.ones(4, 4, dtype=torch.bool)
    quarter[:2, :2] = False
    assert torch.equal(blocked[0, 0], quarter.flatten())
    assert not blocked[0, 1:].any()  # a full mask and empty masks (attend everywhere)
    assert torch.equal(blocked[decoder.num_heads - 1], blocked[0])  # same for every head


def test_masked_attention_changes_the_decoder_not_the_weights(tiny_config):
    torch.manual_seed(0)
    masked = build_model(tiny_config(masked_attention=True, dropout=0.0)).eval()
    plain = build_model(tiny_config(dropout=0.0)).eval()
    plain.load_state_dict(masked.state_dict())  # no new parameters: same keys and shapes
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = masked(images)
        final_only = masked(images, with_aux=False)
        reference = plain(images)
    assert len(out["aux_outputs"]) == 2  # 3 blocks of the tiny model
    # inference without the earlier heads' outputs still builds the masks it attends through
    torch.testing.assert_close(final_only["pred_masks"], out["pred_masks"])
    # the first block attends everywhere in both; later blocks differ
    torch.testing.assert_close(out["aux_outputs"][0]["pred_masks"],
                               reference["aux_outputs"][0]["pred_masks"])
    assert not torch.allclose(out["pred_masks"], reference["pred_masks"])


def test_config_round_trip():
    assert "masked_attention" not in IAUNetConfig().to_dict()  # older versions read it
    cfg = IAUNetConfig(masked_attention=True)
    assert IAUNetConfig.from_dict(cfg.to_dict()).masked_attention is True


def test_masked_attention_trains(tmp_path, tiny_pairs, tiny_config):
    from napari_iaunet.checkpoint import load_checkpoint
    from napari_iaunet.training.trainer import TrainConfig, train

    cfg = TrainConfig(out_dir=tmp_path / "run", steps=3, batch_size=2, lr=1e-3, num_points=256,
                      val_every=3, seed=1, plot=False)
    result = train(tiny_pairs, tiny_pairs[:1], cfg,
                   model_config=tiny_config(masked_attention=True))
    assert result.steps == 3
    assert load_checkpoint(result.last_path).config.masked_attention is True


def test_masked_attention_with_query_groups(tiny_config):
    model = build_model(tiny_config(masked_attention=True, query_groups=2)).train()
    assert model(torch.randn(1, 3, 64, 64))["pred_masks"].shape[1] == 16
