"""Synthetic brightfield-like cell images with exact, overlapping instance masks.

The generator imitates the look of Revvity-25 brightfield crops: a flat, low-contrast grey field
with uneven illumination and fine grain; large irregular cells (deformed, elongated star shapes with
a few thin protrusions) that touch and overlap; stacked cytoplasm is denser where cells overlap;
thin dark rims with a bright halo at every cell edge; a granular zone around a faint nucleus; small
dark vesicles/debris with bright halos; a slight colour fringe (dark structures bluish, bright
ones yellowish) like the real microscope's chromatic defocus.

Every quantity is given at the 1080×1080 Revvity scale and multiplied by ``size / 1080``, so a
256-pixel synthetic image looks like a downscaled 1080 field of view.

Public API: :func:`generate`, :func:`generate_one`, :func:`sample_image`, :func:`sample_data`,
:func:`write_synthetic_coco`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from ..instances import Instances

__all__ = [
    "SynthParams",
    "generate",
    "generate_one",
    "sample_data",
    "sample_image",
    "write_synthetic_coco",
]

REFERENCE_SIZE = 1080  # Revvity-25 image side; lengths below are in pixels at this size


@dataclass(frozen=True)
class SynthParams:
    """Appearance and layout knobs (lengths in pixels at the 1080-pixel reference scale)."""

    radius_range: tuple[float, float] = (40.0, 150.0)  # equivalent radius of a cell
    elongation_range: tuple[float, float] = (1.0, 4.5)  # long / short axis of the base ellipse
    coverage_range: tuple[float, float] = (0.6, 0.9)  # fraction of the image covered by cells
    max_overlap: float = 0.35  # largest fraction of a new cell lying on earlier cells
    max_cells: int = 80
    background_range: tuple[float, float] = (70.0, 140.0)  # mean grey level
    contrast: float = 1.0  # multiplies every cell/edge/texture amplitude
    noise_sigma: float = 1.3  # grey levels of per-pixel noise
    debris_per_megapixel: float = 250.0
    min_area: float = 150.0  # smallest visible part of a cell kept as an instance
    scale: float | None = None  # image pixels per reference pixel; None: image size / 1080

    def pixel_scale(self, shape: tuple[int, int]) -> float:
        """Image pixels per 1080-scale pixel for an image of ``shape``."""
        return self.scale if self.scale is not None else max(shape) / REFERENCE_SIZE

    @classmethod
    def preset(cls, name: str, scale: float | None = None) -> SynthParams:
        """Named settings: ``"revvity"`` (the defaults: as faint and crowded as Revvity-25) or
        ``"clear"`` (2.5× the contrast, a third to a half of the field covered, at most 12
        cells, less overlap and debris: a quick learning check and teaching data)."""
        if name not in PRESETS:
            raise ValueError(f"unknown synthetic preset {name!r}; choose from "
                             f"{', '.join(PRESETS)}")
        return cls(**PRESETS[name], scale=scale)


PRESETS: dict[str, dict] = {
    "revvity": {},
    "clear": {"contrast": 2.5, "coverage_range": (0.3, 0.5), "max_overlap": 0.15,
              "max_cells": 12, "debris_per_megapixel": 80.0},
}


def _scaled_gaussian_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float
                           ) -> np.ndarray:
    """Unit-variance Gaussian noise smoothed with ``sigma`` pixels."""
    field = rng.standard_normal(shape).astype(np.float32)
    if sigma > 0.3:
        field = ndi.gaussian_filter(field, sigma)
    sd = float(field.std())
    return field / sd if sd > 0 else field


def _illumination(rng: np.random.Generator, shape: tuple[int, int], s: float) -> np.ndarray:
    """Smooth multiplicative illumination field around 1 (gradient + low-frequency blotches)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ang = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(ang) * (xx / w - 0.5) + np.sin(ang) * (yy / h - 0.5)) * rng.uniform(0.0, 0.08)
    # blotches: noise at a coarse grid, upsampled (cheap and size-independent)
    coarse = rng.standard_normal((6, 6)).astype(np.float32)
    blot = ndi.zoom(coarse, (h / 6, w / 6), order=3, mode="nearest", grid_mode=True)[:h, :w]
    blot = blot[:h, :w] * rng.uniform(0.005, 0.025)
    # vignetting
    r2 = ((xx / w - 0.5) ** 2 + (yy / h - 0.5) ** 2)
    vig = -r2 * rng.uniform(0.0, 0.08)
    return (1.0 + ramp + blot + vig).astype(np.float32)


def _cell_shape(rng: np.random.Generator, radius: float, elong: float
                ) -> tuple[np.ndarray, np.ndarray, float]:
    """A random star-shaped outline: returns (angles, radii) on a fine angular grid and max radius.

    Base ellipse (equivalent radius ``radius``, axis ratio ``elong``, random orientation), smooth
    low-order harmonic deformation, plus 0-4 thin protrusions (Gaussian bumps in log radius).
    """
    theta = np.linspace(0, 2 * np.pi, 360, endpoint=False)
    a, b = radius * np.sqrt(elong), radius / np.sqrt(elong)
    t = theta - rng.uniform(0, np.pi)
    r = a * b / np.sqrt((b * np.cos(t)) ** 2 + (a * np.sin(t)) ** 2)
    k = np.arange(2, 8)[:, None]
    log_r = (rng.normal(0, 0.22, (6, 1)) / k * np.cos(k * theta + rng.uniform(0, 2 * np.pi, (6, 1)))
             ).sum(0)
    n_spikes = rng.integers(0, 5)
    if n_spikes:
        centre = rng.uniform(0, 2 * np.pi, (n_spikes, 1))
        width = rng.uniform(0.03, 0.15, (n_spikes, 1))
        d = np.angle(np.exp(1j * (theta - centre)))
        log_r += (rng.uniform(0.25, 1.1, (n_spikes, 1)) * np.exp(-0.5 * (d / width) ** 2)).sum(0)
    r = r * np.exp(log_r)
    return theta, r, float(r.max())


def _rasterise(theta: np.ndarray, r: np.ndarray, cy: float, cx: float,
               box: tuple[int, int, int, int], step: int = 1) -> np.ndarray:
    """Boolean mask of the star shape on the pixel centres of ``box`` = (y0, x0, y1, x1).

    ``step`` > 1 evaluates every ``step``-th pixel only (a cheap preview for placement tests).
    """
    y0, x0, y1, x1 = box
    dy = (np.arange(y0, y1, step, dtype=np.float32) + 0.5 - cy)[:, None]
    dx = (np.arange(x0, x1, step, dtype=np.float32) + 0.5 - cx)[None, :]
    ang = np.mod(np.arctan2(dy, dx), 2 * np.pi)
    rad = np.interp(ang, theta, r, period=2 * np.pi)
    return (dy * dy + dx * dx) < rad * rad


@dataclass
class _Cell:
    box: tuple[int, int, int, int]  # in canvas coordinates, clipped to the canvas
    mask: np.ndarray
    radius: float


_STEP = 4  # placement tests run on every 4th pixel


def _place_cells(rng: np.random.Generator, shape: tuple[int, int], s: float, p: SynthParams
                 ) -> list[_Cell]:
    """Sequentially drop random cells until the coverage target is met (touching/overlapping)."""
    h, w = shape
    coarse = np.zeros((-(-h // _STEP), -(-w // _STEP)), dtype=np.uint8)
    target = rng.uniform(*p.coverage_range) * coarse.size
    lo, hi = np.log(p.radius_range[0] * s), np.log(p.radius_range[1] * s)
    cells: list[_Cell] = []
    owners: list[np.ndarray] = []  # coarse masks of accepted cells (for the "hides most" test)
    for _attempt in range(p.max_cells * 8):
        if len(cells) >= p.max_cells or np.count_nonzero(coarse) >= target:
            break
        radius = float(np.exp(rng.uniform(lo, hi)))
        theta, r, rmax = _cell_shape(rng, radius, rng.uniform(*p.elongation_range))
        cy, cx = rng.uniform(-0.1 * h, 1.1 * h), rng.uniform(-0.1 * w, 1.1 * w)
        m = int(np.ceil(rmax)) + 2
        # coarse box aligned to the step grid
        cy0, cx0 = max(0, (int(cy) - m) // _STEP), max(0, (int(cx) - m) // _STEP)
        cy1 = min(coarse.shape[0], (int(cy) + m) // _STEP + 1)
        cx1 = min(coarse.shape[1], (int(cx) + m) // _STEP + 1)
        if cy1 - cy0 < 2 or cx1 - cx0 < 2:
            continue
        cm = _rasterise(theta, r, cy, cx, (cy0 * _STEP, cx0 * _STEP, cy1 * _STEP, cx1 * _STEP),
                        _STEP)
        area = np.count_nonzero(cm)
        if area < 3:
            continue
        under = coarse[cy0:cy1, cx0:cx1]
        if np.count_nonzero(cm & (under > 0)) > p.max_overlap * area or np.any(cm & (under >= 2)):
            continue  # at most two cells stacked, and mostly on free ground
        full = np.zeros(coarse.shape, bool)
        full[cy0:cy1, cx0:cx1] = cm
        if any(np.count_nonzero(o & full) > 0.5 * np.count_nonzero(o) for o in owners):
            continue  # never hide most of an earlier cell
        coarse[cy0:cy1, cx0:cx1] += cm.astype(np.uint8)
        owners.append(full)
        y0, x0 = max(0, int(cy) - m), max(0, int(cx) - m)
        y1, x1 = min(h, int(cy) + m), min(w, int(cx) + m)
        mask = _rasterise(theta, r, cy, cx, (y0, x0, y1, x1))
        if mask.any():
            cells.append(_Cell((y0, x0, y1, x1), mask, radius))
    return cells


def _bubble_kernel(radius: float) -> np.ndarray:
    """A vesicle seen in brightfield: dark core (-1) inside a thin bright ring."""
    m = max(2, int(np.ceil(3.5 * radius)))
    yy, xx = np.mgrid[-m:m + 1, -m:m + 1].astype(np.float32)
    d = np.hypot(yy, xx)
    return (-np.exp(-0.5 * (d / radius) ** 2)
            + 0.6 * np.exp(-0.5 * ((d - 2.0 * radius) / (0.55 * radius)) ** 2))


def _dots(rng: np.random.Generator, shape: tuple[int, int], weight: np.ndarray, n: int,
          radius: float, signed: bool = False) -> np.ndarray:
    """Small round vesicles (see :func:`_bubble_kernel`) at up to ``n`` random places.

    Candidate centres are accepted with probability ``weight`` (H×W in [0, 1]); ``signed`` gives
    half of them the opposite polarity (bright core, dark ring), like granules seen off focus.
    """
    from scipy.signal import oaconvolve

    h, w = shape
    out = np.zeros(shape, np.float32)
    if n <= 0:
        return out
    ys, xs = rng.integers(0, h, 4 * n), rng.integers(0, w, 4 * n)
    keep = rng.random(4 * n) < weight[ys, xs]
    ys, xs = ys[keep][:n], xs[keep][:n]
    amp = rng.uniform(0.4, 1.0, len(ys)).astype(np.float32)
    if signed:
        amp *= np.where(rng.random(len(ys)) < 0.5, -1.0, 1.0).astype(np.float32)
    np.add.at(out, (ys, xs), amp)
    return oaconvolve(out, _bubble_kernel(radius), mode="same").astype(np.float32)


def _render(rng: np.random.Generator, shape: tuple[int, int], p: SynthParams
            ) -> tuple[np.ndarray, Instances]:
    """Render one image; returns (uint8 H×W×3 image, its cells as instances)."""
    h, w = shape
    s = p.pixel_scale(shape)
    c = p.contrast
    cells = _place_cells(rng, shape, s, p)

    edge_w = max(0.7, 2.0 * s)  # rim width
    struct = np.zeros(shape, np.float32)  # fine structure (edges, granules, dots)
    body = np.zeros(shape, np.float32)  # smooth cytoplasm density
    cover = np.zeros(shape, np.float32)
    gran_map = np.zeros(shape, np.float32)
    grain = _scaled_gaussian_noise(rng, shape, max(0.6, 2.2 * s))
    grain_b = _scaled_gaussian_noise(rng, shape, max(0.8, 5.0 * s))
    g = max(2, int(np.ceil(4 * edge_w)))
    for cell in cells:
        y0, x0, y1, x1 = cell.box
        Y0, X0, Y1, X1 = max(0, y0 - g), max(0, x0 - g), min(h, y1 + g), min(w, x1 + g)
        sl = (slice(Y0, Y1), slice(X0, X1))
        m = np.zeros((Y1 - Y0, X1 - X0), bool)
        m[y0 - Y0:y1 - Y0, x0 - X0:x1 - X0] = cell.mask
        d_in, d_out = _distances(m)
        # edge strength varies along the outline (thin lamellipodia are faint)
        along = 0.5 + 0.5 * np.tanh(_scaled_gaussian_noise(rng, m.shape, 5 * edge_w))
        rim = np.exp(-0.5 * ((d_in - 0.7 * edge_w) / edge_w) ** 2) * m
        halo = np.exp(-0.5 * ((d_out - 0.5 * edge_w) / (1.2 * edge_w)) ** 2) * ~m
        struct[sl] += c * along * (rng.uniform(10, 18) * halo - rng.uniform(3, 7) * rim)
        # cytoplasm: thin at the edge, thicker towards the middle, granular around the nucleus
        thick = np.clip(d_in / max(1.0, 0.3 * cell.radius), 0, 1)
        cy, cx = ndi.center_of_mass(m)
        nr = min(0.45 * cell.radius, max(2.0, rng.uniform(25, 45) * s))
        yy, xx = np.ogrid[0:m.shape[0], 0:m.shape[1]]
        ang, e = rng.uniform(0, np.pi), rng.uniform(1.0, 1.6)
        u = (yy - cy) * np.cos(ang) + (xx - cx) * np.sin(ang)
        v = -(yy - cy) * np.sin(ang) + (xx - cx) * np.cos(ang)
        rn = np.hypot(u / (nr * np.sqrt(e)), v * np.sqrt(e) / nr).astype(np.float32)
        nucleus = np.clip(2.0 - 2.0 * rn, 0, 1) * m
        ring = np.exp(-0.5 * ((rn - 1.5) / 0.6) ** 2) * thick * m
        gran_map[sl] = np.maximum(gran_map[sl], rng.uniform(0.1, 0.3) * thick * m
                                  + rng.uniform(0.4, 1.0) * ring)
        struct[sl] += c * rng.uniform(0.5, 1.5) * (grain[sl] - 0.3) * (1 - 0.7 * nucleus) * m
        body[sl] += c * thick * (rng.uniform(-3.0, 1.5) + rng.uniform(0.5, 1.5) * grain_b[sl])
        body[sl] += c * rng.uniform(0.5, 3.0) * nucleus
        nrim = np.exp(-0.5 * ((rn - 1.0) / 0.06) ** 2) * m
        struct[sl] -= c * rng.uniform(1.0, 3.0) * nrim
        cover[sl] += m

    # granules (both polarities) in the perinuclear zone, vesicles/debris everywhere
    area_mp = h * w / 1e6
    struct += c * rng.uniform(5, 11) * _dots(rng, shape, gran_map, rng.poisson(5000 * area_mp),
                                             max(0.45, 2.5 * s), signed=True)
    weight = np.where(cover > 0, 0.6, 0.25)
    struct += c * rng.uniform(25, 45) * _dots(rng, shape, weight,
                                              rng.poisson(p.debris_per_megapixel * area_mp),
                                              max(0.45, 2.4 * s))

    body = ndi.gaussian_filter(body, max(0.5, 1.5 * s))
    struct = ndi.gaussian_filter(struct, max(0.4, 0.6 * s))
    base = rng.uniform(*p.background_range)
    illum = _illumination(rng, shape, s)
    bg_tex = _scaled_gaussian_noise(rng, shape, max(0.5, 1.5 * s))
    green = (base + body + struct + 0.8 * c * bg_tex) * illum
    # chromatic defocus: the blue channel sees fine structure inverted and more blurred
    # chromatic defocus: the blue channel sees fine structure inverted (dark things look blue,
    # bright rims yellow)
    fine = struct - ndi.gaussian_filter(struct, max(0.7, 2.5 * s))
    blue_tex = _scaled_gaussian_noise(rng, shape, max(0.5, 1.5 * s))
    blue = green - rng.uniform(0.8, 1.3) * fine + (rng.uniform(4.0, 6.5) * blue_tex - 1.0) * illum
    noise = rng.normal(0, p.noise_sigma, (2, h, w)).astype(np.float32)
    g8 = np.clip(np.rint(green + noise[0]), 0, 255).astype(np.uint8)
    b8 = np.clip(np.rint(blue + noise[1]), 0, 255).astype(np.uint8)
    rgb = np.stack([g8, g8, b8], axis=-1)

    min_area = max(12.0, p.min_area * s * s)
    kept = [c for c in cells if np.count_nonzero(c.mask) >= min_area]
    inst = Instances(shape, np.asarray([c.box for c in kept], np.int64).reshape(-1, 4),
                     [c.mask for c in kept]).tightened()
    return rgb, inst


def _distances(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance to the outline inside and outside a boolean mask (float32)."""
    return (ndi.distance_transform_edt(m).astype(np.float32),
            ndi.distance_transform_edt(~m).astype(np.float32))


def _as_shape(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, (tuple, list)):
        h, w = int(size[0]), int(size[1])
    else:
        h = w = int(size)
    if h < 16 or w < 16:
        raise ValueError(f"synthetic images need at least 16×16 pixels, got {h}×{w}")
    return h, w


def generate_one(rng: np.random.Generator | int, size: int | tuple[int, int] = 256,
                 params: SynthParams | None = None) -> tuple[np.ndarray, Instances]:
    """One synthetic ``(H, W, 3)`` uint8 image and its (overlapping) instances."""
    rng = np.random.default_rng(rng)
    shape = _as_shape(size)
    return _render(rng, shape, params or SynthParams())


def generate(n_images: int, size: int | tuple[int, int] = 256, seed: int = 0,
             params: SynthParams | None = None) -> list[tuple[np.ndarray, Instances]]:
    """``n_images`` synthetic images with instances; image ``i`` depends only on (seed, i)."""
    return [generate_one(np.random.default_rng([seed, i]), size, params) for i in range(n_images)]


def sample_data(size: int = 512) -> tuple[np.ndarray, Instances]:
    """The fixed demo image (seed 2024) with its instances, for napari sample data and docs."""
    return generate_one(np.random.default_rng(2024), size)


def sample_image(size: int = 512) -> np.ndarray:
    """The fixed demo image (``size``×``size``×3 uint8), identical on every call."""
    return sample_data(size)[0]


def _write_one(img_dir: Path, seed: int, i: int, size: int | tuple[int, int],
               params: SynthParams | None) -> tuple[dict, Instances]:
    """Render image ``i`` of ``seed``, write its PNG, return its COCO entry and instances."""
    import imageio.v3 as iio

    image, inst = generate_one(np.random.default_rng([seed, i]), size, params)
    name = f"synth_{seed}_{i:05d}.png"
    iio.imwrite(img_dir / name, image)
    return ({"id": i + 1, "file_name": name, "height": image.shape[0],
             "width": image.shape[1]}, inst)


def write_synthetic_coco(out_dir: str | Path, n: int, size: int | tuple[int, int] = 256,
                         seed: int = 0, *, overwrite: bool = False,
                         params: SynthParams | None = None, workers: int = 1) -> Path:
    """Write ``n`` images to ``out_dir/images/`` and their masks to ``out_dir/annotations.json``.

    Masks are stored as RLE (exact). Returns the annotation path. An existing annotation file is
    only replaced with ``overwrite=True``. ``workers > 1`` renders in that many processes; the
    data set is the same for any number of workers (image ``i`` depends only on ``(seed, i)``).
    """
    out_dir = Path(out_dir)
    ann_path = out_dir / "annotations.json"
    if ann_path.exists() and not overwrite:
        raise FileExistsError(f"{ann_path} exists; pass overwrite=True (CLI: --overwrite)")
    img_dir = out_dir / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(img_dir, seed, i, size, params) for i in range(n)]
    if workers > 1 and n > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(workers, n)) as pool:
            entries = list(pool.map(_write_one, *zip(*jobs, strict=True)))
    else:
        entries = [_write_one(*job) for job in jobs]
    from ..io.coco import instances_to_coco, write_coco

    coco = instances_to_coco([inst for _, inst in entries], [e for e, _ in entries],
                             category_names=("cell",), mode="rle", include_scores=False)
    coco["info"] = {"description": "napari-iaunet synthetic brightfield cells",
                    "seed": seed, "size": list(_as_shape(size))}
    write_coco(ann_path, coco, overwrite=True)
    return ann_path


def comparison_figure(real_image: str | Path, out_path: str | Path, seed: int = 1,
                      crop: int = 384) -> Path:
    """Write a PNG comparing a real brightfield image with a synthetic one of the same size.

    Top row: full fields of view (real, synthetic, synthetic with its ground-truth outlines);
    bottom row: ``crop``-pixel crops at full resolution. The synthetic background level is set to
    the real image's mean so that only structure is compared.
    """
    import imageio.v3 as iio
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # not pyplot: no global backend, safe in any thread

    real = np.asarray(iio.imread(real_image))
    if real.ndim == 2:
        real = np.repeat(real[..., None], 3, -1)
    real = real[..., :3]
    level = float(real[..., 1].mean())  # same background level as the real image
    params = SynthParams(background_range=(level, level))
    synth, inst = generate_one(np.random.default_rng(seed), real.shape[:2], params)
    h, w = real.shape[:2]
    y0, x0 = (h - crop) // 2, (w - crop) // 2
    fig = Figure(figsize=(15, 10.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3)
    axes[0, 0].imshow(real)
    axes[0, 0].set_title(f"real: {Path(real_image).name} ({h}×{w})")
    axes[0, 1].imshow(synth)
    axes[0, 1].set_title(f"synthetic (seed {seed}, {len(inst)} cells)")
    axes[0, 2].imshow(synth)
    colours = colormaps["tab20"](np.linspace(0, 1, 20))
    for i in range(len(inst)):
        axes[0, 2].contour(inst.mask(i), [0.5], colors=[colours[i % 20]], linewidths=0.8)
    axes[0, 2].set_title("synthetic ground truth (overlaps kept)")
    axes[1, 0].imshow(real[y0:y0 + crop, x0:x0 + crop])
    axes[1, 0].set_title(f"real, {crop}-px crop")
    axes[1, 1].imshow(synth[y0:y0 + crop, x0:x0 + crop])
    axes[1, 1].set_title(f"synthetic, {crop}-px crop")
    small, _ = generate_one(np.random.default_rng(seed + 1), 256, params)
    axes[1, 2].imshow(small)
    axes[1, 2].set_title("synthetic at 256 px (training size)")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=72)
    return out_path


if __name__ == "__main__":  # python -m napari_iaunet.training.synthetic REAL.png OUT.png
    import sys

    print(comparison_figure(sys.argv[1], sys.argv[2]))
