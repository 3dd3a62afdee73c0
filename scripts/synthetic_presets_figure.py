"""Picture of the synthetic generator's two looks, with the ground-truth outlines of one.

    python scripts/synthetic_presets_figure.py docs/images/synthetic_presets.png

Columns: preset ``revvity`` and preset ``clear``, 256-px fields at scale 0.45 (the goal
benchmark's data, seeds 1 and 2); bottom row: the same images with every instance outlined.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from skimage.segmentation import find_boundaries


def main(out: str) -> None:
    import imageio.v3 as iio

    from napari_iaunet.training.synthetic import SynthParams, generate_one

    palette = np.random.default_rng(7).integers(60, 255, (256, 3))
    top, bottom = [], []
    for preset in ("revvity", "clear"):
        for seed in (1, 2):
            image, inst = generate_one(seed, 256, SynthParams.preset(preset, 0.45))
            outlined = image.copy()
            for k, mask in enumerate(inst.to_dense()):
                outlined[find_boundaries(mask, mode="inner")] = palette[k % len(palette)]
            top.append(image)
            bottom.append(outlined)
    gap = np.full((256, 4, 3), 255, np.uint8)
    rows = [np.concatenate([part for im in row for part in (im, gap)][:-1], axis=1)
            for row in (top, bottom)]
    figure = np.concatenate([rows[0], np.full((4, rows[0].shape[1], 3), 255, np.uint8), rows[1]])
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(out, figure)
    print(f"wrote {out}: revvity (left two) | clear (right two)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/images/synthetic_presets.png")
