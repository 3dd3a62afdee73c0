"""The networks: IAUNet (config, encoder, decoder, complexity counts), PCTrans and Mask R-CNN.

Importing this package is cheap; torch, timm and torchvision load on first use of a model name.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import (
    MODEL_FAMILIES,
    REVVITY_MEAN,
    REVVITY_STD,
    IAUNetConfig,
    MaskRCNNConfig,
    ModelConfig,
    PCTransConfig,
    config_from_dict,
)

__all__ = [
    "BACKBONES",
    "MODEL_FAMILIES",
    "REVVITY_MEAN",
    "REVVITY_STD",
    "IAUNet",
    "IAUNetConfig",
    "IAUNetDecoder",
    "MaskRCNNConfig",
    "MaskRCNNModel",
    "ModelConfig",
    "PCTrans",
    "PCTransConfig",
    "build_encoder",
    "build_maskrcnn",
    "build_model",
    "config_from_dict",
    "count_macs",
    "count_parameters",
    "fidelity_table",
]

_LAZY = {
    "BACKBONES": "encoder",
    "build_encoder": "encoder",
    "IAUNetDecoder": "decoder",
    "IAUNet": "iaunet",
    "build_model": "iaunet",
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
