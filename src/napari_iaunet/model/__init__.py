"""The networks: IAUNet (config, encoder, decoder, complexity counts), PCTrans and Mask R-CNN.

Importing this package is cheap; torch, timm and torchvision load on first use of a model name.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import (
    REVVITY_MEAN,
    REVVITY_STD,
    IAUNetConfig,
    MaskRCNNConfig,
    ModelConfig,
    PCTransConfig,
)
from .registry import FAMILIES, ModelFamily, build_model, config_from_dict, family_of

__all__ = [
    "BACKBONES",
    "FAMILIES",
    "REVVITY_MEAN",
    "REVVITY_STD",
    "IAUNet",
    "IAUNetConfig",
    "IAUNetDecoder",
    "MaskRCNNConfig",
    "MaskRCNNModel",
    "ModelConfig",
    "ModelFamily",
    "PCTrans",
    "PCTransConfig",
    "build_encoder",
    "build_maskrcnn",
    "build_model",
    "config_from_dict",
    "count_macs",
    "count_parameters",
    "family_of",
    "fidelity_table",
]

_LAZY = {
    "BACKBONES": "encoder",
    "build_encoder": "encoder",
    "IAUNetDecoder": "decoder",
    "IAUNet": "iaunet",
    "MaskRCNNModel": "maskrcnn",
    "build_maskrcnn": "maskrcnn",
    "PCTrans": "pctrans",
    "count_macs": "complexity",
    "count_parameters": "complexity",
    "fidelity_table": "complexity",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
