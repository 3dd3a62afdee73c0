"""Build hook: the wheel carries the default model as package data (the rest is pyproject.toml).

The repository keeps the default model in the top-level ``weights/`` folder; a wheel, and so an
install from the sdist, copies the files below into ``napari_iaunet/_weights/``, where
``napari_iaunet.weights`` looks first. Editable installs read ``weights/`` in the checkout.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

WEIGHTS = Path(__file__).resolve().parent / "weights"
# the default model, its SHA-256 record, what it is and its licence (keep in step with MANIFEST.in)
BUNDLED = ("iaunet_default.pt", "iaunet_default.pt.sha256", "MODEL_CARD.md", "LICENSE")
PACKAGE_DIR = ("napari_iaunet", "_weights")


class BuildPyWithWeights(build_py):
    """``build_py`` that also copies ``weights/`` files into ``napari_iaunet/_weights/``."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        target = Path(self.build_lib, *PACKAGE_DIR)
        self.mkpath(str(target))
        for name in BUNDLED:
            source = WEIGHTS / name
            if not source.is_file():
                raise FileNotFoundError(f"cannot build napari-iaunet without {source}: "
                                        "the wheel must carry the default model")
            self.copy_file(str(source), str(target / name))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        if not self.editable_mode:
            outputs += [str(Path(self.build_lib, *PACKAGE_DIR, name)) for name in BUNDLED]
        return outputs


setup(cmdclass={"build_py": BuildPyWithWeights})
