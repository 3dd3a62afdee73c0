"""Keep napari alive when torch first loads after OpenGL (Linux, Mesa drivers).

torchvision (imported by timm) imports ``torch._dynamo``, which imports ``triton`` when it is
installed (it ships with CUDA builds of torch). ``triton``'s extension bundles its own LLVM; when
Mesa's ``libLLVM`` is already loaded — software rendering (llvmpipe: VMs, remote desktops, Xvfb)
and some AMD drivers — the two LLVMs collide and the whole napari process dies with a
segmentation fault. napari creates its OpenGL context before any plugin widget opens, so the
plugin cannot simply import torch first.

:func:`make_torch_import_safe` loads ``triton`` with ``RTLD_DEEPBIND`` (its own LLVM symbols win)
exactly in that situation: Linux, triton installed and not yet imported, and a ``libLLVM`` already
mapped into the process. Everywhere else it does nothing. Call it right before code that may
import torch / timm for the first time (the widgets do; so should any new widget).
"""

from __future__ import annotations

import importlib.util
import os
import sys

__all__ = ["make_torch_import_safe"]


def _llvm_loaded() -> bool:
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as fh:
            return any("libLLVM" in line for line in fh)
    except OSError:  # pragma: no cover - no procfs
        return False


def make_torch_import_safe() -> bool:
    """Preload triton so that a later ``import timm`` cannot crash the process; True if it did."""
    deepbind = getattr(os, "RTLD_DEEPBIND", None)
    if (not sys.platform.startswith("linux") or deepbind is None or "triton" in sys.modules
            or importlib.util.find_spec("triton") is None or not _llvm_loaded()):
        return False
    flags = sys.getdlopenflags()
    sys.setdlopenflags(flags | deepbind)
    try:
        import triton  # noqa: F401
    except Exception:  # a broken triton must not stop the plugin; torch copes without it
        return False
    finally:
        sys.setdlopenflags(flags)
    return True
