"""A synthetic fine hyperspectral scene: plausible surface spectra on a layout of parcels.

Used for the bundled demo sample (which must be reproducible from a fresh clone without any
downloaded data) and by tests. Everything is deterministic under a seed.

- ``enmap_like_bands``: band centres/FWHM spaced like a subset of EnMAP's (VNIR every 20 nm,
  SWIR every 30 nm, 400-2500 nm), with the water-vapour bands kept (flagged in ``bad_bands``).
- ``library_spectrum``: analytic reflectance spectra (0-1) of green vegetation (red edge, leaf
  water absorptions), dry vegetation, two soils, water, asphalt, concrete and red roof tiles.
- ``parcel_layout``: sharp-edged, elongated Voronoi parcels of varied size (fields).
- ``smooth_field``: a zero-mean, unit-std random field smoothed at a given scale.
- ``synthetic_scene``: fields, forest, grassland, a river, a village of roofs and gardens, and
  roads, as abundances of the library spectra, plus smooth within-field variation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

ENDMEMBERS = ("green_vegetation", "dry_vegetation", "soil", "bright_soil", "water", "asphalt", "concrete", "roof_tile")
# Strong atmospheric water-vapour absorptions: sensors see little signal there (noisy bands).
WATER_VAPOUR_BANDS_NM = ((1340.0, 1460.0), (1790.0, 1960.0))
LAND_COVER = ("crop", "grassland", "forest", "fallow", "water", "village", "road")


def enmap_like_bands(vnir_step: float = 20.0, swir_step: float = 30.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centres_nm, fwhm_nm, bad_bands): VNIR 400-1000 nm, SWIR 1030-2470 nm, EnMAP-like FWHM
    (about 7-9 nm in the VNIR, 11 falling to 8 nm in the SWIR). ``bad_bands`` is a bool array,
    True in the water-vapour absorption bands (kept, but a sensor sees them noisily)."""
    vnir = np.arange(400.0, 1000.0 + 1e-6, vnir_step)
    swir = np.arange(1030.0, 2470.0 + 1e-6, swir_step)
    centres = np.concatenate([vnir, swir])
    fwhm = np.concatenate([6.5 + 2.5 * (vnir - 400.0) / 600.0, 11.5 - 3.5 * (swir - 1030.0) / 1440.0])
    bad = np.zeros(centres.size, dtype=bool)
    for lo, hi in WATER_VAPOUR_BANDS_NM:
        bad |= (centres >= lo) & (centres <= hi)
    return centres, fwhm, bad


def _g(wl, centre, width):
    return np.exp(-0.5 * ((wl - centre) / width) ** 2)


def _sig(wl, centre, width):
    return 1.0 / (1.0 + np.exp(-(wl - centre) / width))


def library_spectrum(name: str, wavelengths: Sequence[float] | np.ndarray) -> np.ndarray:
    """Reflectance (0-1) of a library endmember at the given wavelengths (nm)."""
    wl = np.asarray(wavelengths, dtype=np.float64)
    if name == "green_vegetation":
        vis = 0.03 + 0.055 * _g(wl, 555, 32) - 0.01 * _g(wl, 670, 20)
        plateau = 0.47 - 0.00024 * np.clip(wl - 1100, 0, None)
        leaf_water = (
            1
            - 0.07 * _g(wl, 975, 30)
            - 0.14 * _g(wl, 1200, 45)
            - 0.55 * _g(wl, 1450, 75)
            - 0.7 * _g(wl, 1940, 95)
            - 0.4 * _g(wl, 2550, 250)
        )
        return vis + (plateau * leaf_water - vis) * _sig(wl, 718, 11)
    if name == "dry_vegetation":
        r = 0.05 + 0.22 * _sig(wl, 560, 70) + 0.12 * _sig(wl, 1000, 200)
        return r * (
            1
            - 0.12 * _g(wl, 1450, 60)
            - 0.18 * _g(wl, 1940, 80)
            - 0.2 * _g(wl, 2100, 40)
            - 0.06 * _g(wl, 1730, 25)
            - 0.15 * _g(wl, 2500, 120)
        )
    if name in ("soil", "bright_soil"):
        r = 0.05 + 0.26 * (1 - np.exp(-np.clip(wl - 380, 0, None) / 650.0))
        r = r * (
            1
            - 0.04 * _g(wl, 900, 60)
            - 0.12 * _g(wl, 1420, 45)
            - 0.2 * _g(wl, 1920, 60)
            - 0.09 * _g(wl, 2205, 30)
            - 0.08 * _g(wl, 2500, 100)
        )
        return r * (1.45 if name == "bright_soil" else 1.0)
    if name == "water":
        return (
            0.004
            + 0.035 * _g(wl, 510, 75)
            + 0.012 * np.exp(-np.clip(wl - 400, 0, None) / 350.0) * (1 - _sig(wl, 720, 15))
        )
    if name == "asphalt":
        return (0.055 + 0.05 * (wl - 400) / 2100.0) * (1 - 0.08 * _g(wl, 1730, 30) - 0.1 * _g(wl, 2310, 40))
    if name == "concrete":
        return (0.17 + 0.13 * (1 - np.exp(-np.clip(wl - 380, 0, None) / 350.0))) * (
            1 - 0.06 * _g(wl, 1940, 60) - 0.1 * _g(wl, 2340, 35)
        )
    if name == "roof_tile":
        r = 0.06 + 0.24 * _sig(wl, 590, 18) + 0.08 * _sig(wl, 1100, 150)
        return r * (1 - 0.05 * _g(wl, 900, 70) - 0.05 * _g(wl, 1940, 70) - 0.06 * _g(wl, 2200, 60))
    raise ValueError(f"Unknown library endmember '{name}': choose one of {', '.join(ENDMEMBERS)}.")


def smooth_field(shape: tuple[int, ...], scale_px: float, rng: np.random.Generator) -> np.ndarray:
    """A random field smoothed by a Gaussian of ``scale_px`` pixels, rescaled to mean 0, std 1."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape), scale_px, mode="wrap")
    return ((f - f.mean()) / (f.std() + 1e-12)).astype(np.float32)


def parcel_layout(
    height: int, width: int, mean_area_px: float, rng: np.random.Generator, anisotropy: float = 2.0
) -> np.ndarray:
    """Parcel labels (height, width), int32 from 0: Voronoi cells of jittered seeds in a frame
    rotated by a random angle and stretched by ``anisotropy`` (elongated fields with straight,
    sharp edges). Seed density varies smoothly, so parcel sizes range from a few pixels to
    several times ``mean_area_px``."""
    n = max(2, int(round(height * width / float(mean_area_px))))
    theta = rng.uniform(0, np.pi)
    # Candidate seeds accepted with a probability that varies smoothly: dense and sparse areas.
    density = np.exp(0.8 * smooth_field((height, width), max(height, width) / 6.0, rng))
    ys, xs = [], []
    while len(ys) < n:
        y, x = rng.uniform(0, height), rng.uniform(0, width)
        if rng.uniform() < density[int(y), int(x)] / density.max():
            ys.append(y)
            xs.append(x)
    ys, xs = np.asarray(ys), np.asarray(xs)
    c, s = np.cos(theta), np.sin(theta)

    def frame(y, x):
        return (c * x + s * y) / anisotropy, (-s * x + c * y) * anisotropy

    su, sv = frame(ys, xs)
    gy, gx = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    labels = np.empty((height, width), dtype=np.int32)
    for r0 in range(0, height, 32):  # rows in chunks: memory stays small for large grids
        u, v = frame(gy[r0 : r0 + 32], gx[r0 : r0 + 32])
        d = (u[..., None] - su) ** 2 + (v[..., None] - sv) ** 2
        labels[r0 : r0 + 32] = np.argmin(d, axis=-1)
    # Thin slivers of a cell can fall apart when rasterised: every connected piece is a parcel.
    out = np.empty_like(labels)
    n_out = 0
    for p in np.unique(labels):
        pieces, k = ndimage.label(labels == p)
        inside = pieces > 0
        out[inside] = pieces[inside] - 1 + n_out
        n_out += k
    return out


@dataclass
class SyntheticScene:
    """``hs`` (band, row, col) float32 reflectance; ``abundances`` (endmember, row, col);
    ``endmembers`` (endmember, band) with names ``ENDMEMBERS``; ``parcels`` (row, col) labels;
    ``cover`` (row, col) index into ``LAND_COVER``; band ``wavelengths``/``fwhm`` (nm)."""

    hs: np.ndarray
    abundances: np.ndarray
    endmembers: np.ndarray
    endmember_names: tuple
    parcels: np.ndarray
    cover: np.ndarray
    wavelengths: np.ndarray
    fwhm: np.ndarray
    bad_bands: np.ndarray


def _river(h, w, rng):
    """Bool mask of a meandering river crossing the scene."""
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float64)
    if rng.uniform() < 0.5:
        gy, gx, h, w = gx, gy, w, h
    centre = h * rng.uniform(0.25, 0.75) + 0.12 * h * np.sin(
        2 * np.pi * gx / (w * rng.uniform(0.7, 1.3)) + rng.uniform(0, 2 * np.pi)
    )
    return np.abs(gy - centre) < max(1.5, 0.035 * h)


def _roads(h, w, rng, n_roads=3):
    """Bool mask of ``n_roads`` straight roads, one pixel wide, at random angles."""
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    mask = np.zeros((h, w), dtype=bool)
    for _ in range(n_roads):
        a = rng.uniform(0, np.pi)
        y0, x0 = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
        mask |= np.abs(-np.sin(a) * (gx - x0) + np.cos(a) * (gy - y0)) < 0.55
    return mask


def synthetic_scene(
    height: int = 96,
    width: int = 96,
    seed: int = 0,
    wavelengths: Sequence[float] | np.ndarray | None = None,
    fwhm: Sequence[float] | np.ndarray | None = None,
    mean_parcel_area_px: float = 120.0,
) -> SyntheticScene:
    """A fine HS scene (see the module docstring); bands from ``enmap_like_bands`` by default."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5CE4E]))
    if wavelengths is None:
        wavelengths, fwhm, bad = enmap_like_bands()
    else:
        wavelengths = np.asarray(wavelengths, dtype=np.float64)
        fwhm = np.asarray(fwhm if fwhm is not None else np.full(wavelengths.size, 10.0))
        bad = np.zeros(wavelengths.size, dtype=bool)
        for lo, hi in WATER_VAPOUR_BANDS_NM:
            bad |= (wavelengths >= lo) & (wavelengths <= hi)
    E = np.stack([library_spectrum(n, wavelengths) for n in ENDMEMBERS]).astype(np.float32)
    k = {n: i for i, n in enumerate(ENDMEMBERS)}
    parcels = parcel_layout(height, width, mean_parcel_area_px, rng)
    n_parcels = int(parcels.max()) + 1
    # Land cover per parcel; the village is a smooth blob, so its parcels are contiguous.
    parcel_cover = rng.choice(4, size=n_parcels, p=[0.55, 0.2, 0.12, 0.13])  # crop/grass/forest/fallow
    village = smooth_field((height, width), max(height, width) / 5.0, rng) > 1.3
    cover = parcel_cover[parcels]
    village_share = ndimage.mean(village, parcels, index=np.arange(n_parcels))
    cover[np.asarray(village_share)[parcels] > 0.5] = LAND_COVER.index("village")
    cover[_river(height, width, rng)] = LAND_COVER.index("water")
    cover[_roads(height, width, rng)] = LAND_COVER.index("road")

    A = np.zeros((len(ENDMEMBERS), height, width), dtype=np.float32)
    # Smooth within-field variation (vigour, soil moisture) plus a little pixel texture.
    vigour = smooth_field((height, width), 6.0, rng)
    moisture = smooth_field((height, width), 9.0, rng)
    texture = rng.normal(0, 0.02, (height, width)).astype(np.float32)
    green_level = rng.uniform(0.35, 0.95, n_parcels)[parcels]
    bright = rng.uniform(size=n_parcels)[parcels] < 0.4

    def put(mask, **fractions):
        for name, value in fractions.items():
            A[k[name]][mask] = np.broadcast_to(value, mask.shape)[mask]

    g = np.clip(green_level + 0.12 * vigour + texture, 0.02, 0.98)
    soil_name = np.where(bright, "bright_soil", "soil")
    for cover_name, mask in ((c, cover == LAND_COVER.index(c)) for c in LAND_COVER):
        soil_frac = np.clip(1 - g, 0, 1) * (1 - 0.15 * np.clip(moisture, -2, 2) / 2)
        if cover_name == "crop":
            put(mask, green_vegetation=g)
            for sn in ("soil", "bright_soil"):
                put(mask & (soil_name == sn), **{sn: soil_frac})
        elif cover_name == "grassland":
            gg = np.clip(0.8 + 0.08 * vigour + texture, 0, 1)
            put(mask, green_vegetation=gg, dry_vegetation=0.12 * (1 - gg) + 0.05, soil=np.clip(0.9 - gg, 0, 1))
        elif cover_name == "forest":
            # Canopy shade: abundances sum to < 1 (a dark, zero-reflectance endmember).
            put(
                mask,
                green_vegetation=np.clip(0.62 + 0.06 * vigour + 2 * texture, 0.3, 0.9),
                dry_vegetation=0.04,
                soil=0.03,
            )
        elif cover_name == "fallow":
            put(mask, dry_vegetation=np.clip(0.25 + 0.1 * vigour, 0, 0.6), green_vegetation=0.08)
            for sn in ("soil", "bright_soil"):
                put(mask & (soil_name == sn), **{sn: np.clip(0.67 - 0.1 * vigour, 0.2, 0.9)})
        elif cover_name == "water":
            put(mask, water=np.clip(0.97 + texture, 0.85, 1.0), green_vegetation=0.02)
        elif cover_name == "village":
            # Houses (roof tile or concrete) on small blocks, gardens in between.
            houses = rng.uniform(size=(height // 3 + 1, width // 3 + 1))
            block = (houses * 97).astype(int).repeat(3, 0).repeat(3, 1)[:height, :width]
            roofs = block < 45
            A[:, mask] = 0
            put(mask & roofs & (block % 2 == 0), roof_tile=0.9, concrete=0.1)
            put(mask & roofs & (block % 2 == 1), concrete=0.85, asphalt=0.1)
            put(mask & ~roofs, green_vegetation=np.clip(0.65 + 0.1 * vigour, 0.3, 0.9), concrete=0.15, soil=0.1)
        elif cover_name == "road":
            A[:, mask] = 0
            put(mask, asphalt=0.9, soil=0.08)
    hs = np.tensordot(E, A, axes=(0, 0)).astype(np.float32)
    return SyntheticScene(
        hs=hs,
        abundances=A,
        endmembers=E,
        endmember_names=ENDMEMBERS,
        parcels=parcels,
        cover=cover.astype(np.int8),
        wavelengths=wavelengths,
        fwhm=np.asarray(fwhm, dtype=np.float64),
        bad_bands=bad,
    )
