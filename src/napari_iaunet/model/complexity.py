"""Parameter and multiply-accumulate (MAC) counts, and the table comparing them with the paper.

MACs are counted with :class:`torch.utils.flop_counter.FlopCounterMode`, which reports
FLOPs = 2 x MACs for convolutions, matrix products and attention; we halve it. That matches the
paper's "GFLOPs", which are fvcore's raw counts, i.e. multiply-adds (reference memo, section 7).
Conventions:

* one eval-mode forward pass with all 9 prediction heads (as the authors measured);
* convolutions, linear layers, matrix products, ``einsum`` and both attention products
  (``Q K^T`` and ``A V``) are counted. PyTorch's counter has no formula for the CPU kernel of
  ``scaled_dot_product_attention`` (``_scaled_dot_product_flash_attention_for_cpu``); we add one,
  and we switch off ``nn.MultiheadAttention``'s fused fast path while counting so attention
  always goes through a counted op;
* element-wise work (normalisation, activations, interpolation, pooling, softmax) is not
  counted; fvcore counts some of it, which is well below 1% of the total here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .config import IAUNetConfig

__all__ = [
    "PAPER_FIGURES",
    "count_macs",
    "count_macs_for_config",
    "count_parameters",
    "fidelity_table",
    "format_fidelity_table",
]

# (backbone, num_queries) -> (params in millions or None, GMACs) from the paper's tables 1, 2, 5
# at 1x3x512x512; parameter totals to two decimals from the reference memo's recount.
PAPER_FIGURES: dict[tuple[str, int], tuple[float | None, float]] = {
    ("resnet50", 100): (39.37, 49.0),
    ("resnet50", 300): (None, 61.0),
    ("resnet50", 500): (None, 73.0),
    ("resnet50", 1000): (None, 104.0),
    ("resnet101", 100): (58.36, 69.0),
    ("swin_small", 100): (64.1, 76.0),
    ("swin_small", 300): (None, 87.0),
    ("swin_base", 100): (102.1, 120.0),
    ("swin_base", 300): (None, 132.0),
}


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _cpu_sdpa_flops(
    query_shape: Sequence[int],
    key_shape: Sequence[int],
    value_shape: Sequence[int],
    *args: Any,
    out_shape: Any = None,
    **kwargs: Any,
) -> int:
    """FLOPs of ``softmax(Q K^T) V`` for (B, heads, L, E) shapes: two batched matrix products."""
    batch, heads, len_q, dim_qk = query_shape
    len_k = key_shape[-2]
    dim_v = value_shape[-1]
    return 2 * batch * heads * len_q * len_k * (dim_qk + dim_v)


def _extra_formulas() -> dict[Any, Any]:
    aten = torch.ops.aten
    formulas: dict[Any, Any] = {}
    op = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        formulas[op] = _cpu_sdpa_flops
    return formulas


@contextlib.contextmanager
def _mha_fastpath_disabled() -> Iterator[None]:
    """Route ``nn.MultiheadAttention`` through its composite (countable) implementation."""
    mha = torch.backends.mha
    previous = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(previous)


def count_macs(model: nn.Module, input_shape: Sequence[int] = (1, 3, 512, 512)) -> int:
    """Multiply-accumulates of one eval-mode forward pass on an ``input_shape`` tensor.

    Runs on the model's device; a model built on the ``meta`` device counts in milliseconds
    without computing anything (see :func:`count_macs_for_config`).
    """
    first = next(model.parameters())
    images = torch.zeros(tuple(input_shape), device=first.device, dtype=first.dtype)
    counter = FlopCounterMode(display=False, custom_mapping=_extra_formulas())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _mha_fastpath_disabled(), counter:
            model(images)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def count_macs_for_config(
    config: IAUNetConfig, input_shape: Sequence[int] = (1, 3, 512, 512)
) -> tuple[int, int]:
    """``(parameters, MACs)`` of the model ``config`` describes, built on the meta device."""
    from .registry import build_model

    with torch.device("meta"):
        model = build_model(config)
    return count_parameters(model), count_macs(model, input_shape)


def fidelity_table(
    backbones: Iterable[str] = ("resnet50", "resnet101", "swin_small", "swin_base"),
    queries: Iterable[int] = (100, 300, 1000),
    input_shape: Sequence[int] = (1, 3, 512, 512),
    num_classes: int = 1,
) -> list[dict[str, Any]]:
    """Our parameter and MAC counts next to the paper's, one row per (backbone, queries).

    Each row: ``backbone, queries, params_m, paper_params_m, gmacs, paper_gmacs`` (paper values
    are None where the paper gives none).
    """
    rows = []
    for backbone in backbones:
        for num_queries in queries:
            config = IAUNetConfig(
                backbone=backbone, num_queries=num_queries, num_classes=num_classes
            )
            params, macs = count_macs_for_config(config, input_shape)
            paper_params, paper_gmacs = PAPER_FIGURES.get((backbone, num_queries), (None, None))
            rows.append(
                {
                    "backbone": backbone,
                    "queries": num_queries,
                    "params_m": round(params / 1e6, 2),
                    "paper_params_m": paper_params,
                    "gmacs": round(macs / 1e9, 1),
                    "paper_gmacs": paper_gmacs,
                }
            )
    return rows


def format_fidelity_table(
    rows: Sequence[dict[str, Any]], input_shape: Sequence[int] = (1, 3, 512, 512)
) -> str:
    """Markdown table of :func:`fidelity_table` rows."""

    def show(value: Any) -> str:
        return "–" if value is None else str(value)

    size = "x".join(str(s) for s in input_shape)
    lines = [
        f"| backbone | queries | params (M) | paper params (M) | GMACs @{size} | paper GMACs |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['backbone']} | {row['queries']} | {row['params_m']} | "
            f"{show(row['paper_params_m'])} | {row['gmacs']} | {show(row['paper_gmacs'])} |"
        )
    return "\n".join(lines)
