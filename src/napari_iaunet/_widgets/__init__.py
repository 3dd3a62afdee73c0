"""napari widgets (one module per widget); nothing here is needed by the library or the CLI.

Every widget calls :func:`make_torch_import_safe` before its first torch import (see
:mod:`._torch_guard`: a crash of napari next to Mesa's OpenGL on Linux).
"""

from ._torch_guard import make_torch_import_safe

make_torch_import_safe()

__all__ = ["make_torch_import_safe"]
