"""Device choice (CUDA, then Apple MPS, then CPU) and mixed precision."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["autocast", "available_devices", "select_device"]


def available_devices() -> list[str]:
    """Device names usable here, best first, always ending with ``"cpu"``."""
    devices = []
    if torch.cuda.is_available():
        devices.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    devices.append("cpu")
    return devices


def select_device(device: str | torch.device | None = "auto") -> torch.device:
    """Resolve ``"auto"`` (or None) to the best device; check an explicit choice exists."""
    if device is None or str(device) == "auto":
        return torch.device(available_devices()[0])
    dev = torch.device(device)
    if dev.type not in available_devices():
        raise ValueError(
            f"device '{device}' is not available on this machine; "
            f"choose one of: auto, {', '.join(available_devices())}"
        )
    return dev


@contextlib.contextmanager
def autocast(device: torch.device, enabled: bool = True) -> Iterator[None]:
    """Mixed precision on GPUs (bf16 where supported, else fp16); a no-op on the CPU."""
    if not enabled or device.type not in ("cuda", "mps"):
        yield
        return
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = torch.float16
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
