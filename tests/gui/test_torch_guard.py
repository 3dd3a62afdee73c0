"""torch/timm imported after napari's OpenGL context must not kill the process (see _torch_guard).

Runs in a subprocess: without the guard the failure mode is a segmentation fault.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import numpy as np, napari
    viewer = napari.Viewer(show=False)
    viewer.add_image(np.zeros((8, 8)))
    from napari_iaunet._widgets import make_torch_import_safe
    print("guard applied:", make_torch_import_safe())
    import timm  # imports torchvision -> torch._dynamo -> triton (when installed)
    print("imported timm")
    viewer.close()
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux/Mesa only")
def test_torch_import_after_opengl_does_not_crash():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "imported timm" in proc.stdout
