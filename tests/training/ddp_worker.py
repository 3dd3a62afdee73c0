"""Run by ``torchrun --nproc_per_node=2`` from test_training_distributed.py (not a test itself).

Trains a tiny model of one family (``iaunet``, ``pctrans`` or ``maskrcnn``) for a few steps
with DDP on the CPU (gloo) and writes, per rank, a checksum of the trained parameters.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from conftest import TINY_SIZE, tiny_config
from napari_iaunet.training.synthetic import SynthParams, generate
from napari_iaunet.training.trainer import TrainConfig, train


def family_config(family: str):
    """A tiny model config of ``family``."""
    from napari_iaunet.model import MaskRCNNConfig, PCTransConfig

    if family == "maskrcnn":
        return MaskRCNNConfig(variant="r18_cbam", input_size=TINY_SIZE,
                              box_batch_size_per_image=64)
    if family == "pctrans":
        base = tiny_config().to_dict()
        return PCTransConfig.from_dict({**base, "family": "pctrans", "enc_layers": 1,
                                        "enc_points": 2, "enc_dim_feedforward": 64})
    return tiny_config()


def main(out: Path, family: str) -> None:
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    pairs = generate(4, TINY_SIZE, seed=7, params=SynthParams(scale=0.15, max_cells=8))
    cfg = TrainConfig(out_dir=out / "run", steps=2, batch_size=1, lr=1e-3, num_points=256,
                      val_every=0, seed=5, plot=False)
    from napari_iaunet.model import build_model

    torch.manual_seed(cfg.seed)  # the trainer initialises the same way
    model_config = family_config(family)
    init = {k: float(v.detach().double().sum())
            for k, v in build_model(model_config).named_parameters()}
    result = train(pairs, None, cfg, model_config=model_config)
    # parameters only: BatchNorm running statistics are per-process (DDP re-broadcasts rank 0's
    # at the start of every forward; rank 0's are the ones saved)
    params = {k: float(v.detach().double().sum()) for k, v in result.model.named_parameters()}
    (out / f"rank{rank}.json").write_text(json.dumps({
        "rank": rank, "world": int(os.environ["WORLD_SIZE"]), "steps": result.steps,
        "params": params, "init": init}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "iaunet")
