"""The truth of a simulated multi-date series: one fine hyperspectral image made to change in time.

No public multi-date hyperspectral series exists, so the demo sample and the development benchmark
are simulated from one fine HS image (real EnMAP, or ``synthetic_scene``), made hard the way real
data is hard (../shared/data/README.md). This module makes the truth; ``sensors`` observes it and
``writing`` writes both.

The image is unmixed (``unmix``: ATGP pure pixels plus the darkest pixels when they are water, then
non-negative least-squares abundances); what the endmembers do not explain stays as a residual, so
the real spectral detail survives on every date. Endmembers get roles by spectral indices (green
vegetation: high NDVI; soil: low NDVI and a steep blue-to-SWIR rise; water: darkest NIR if dark
enough); missing roles and dry vegetation come from the spectral library. Each sharp-edged parcel
(``parcel_layout``; finer than a dense MS pixel in places) gets a schedule: static, winter crop
(green-up, senescence, harvest), summer crop, grassland (mowing), fallow, flooding. Within a parcel
the schedule's timing and amplitude vary smoothly. On each date the vegetation/soil share of every
pixel is moved towards the schedule's state; built-up endmembers and water bodies do not change.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .synthetic_scene import SyntheticScene, library_spectrum, parcel_layout, smooth_field

SCHEDULES = ("static", "winter_crop", "summer_crop", "grassland", "fallow", "flooding")
SCHEDULE_PROBABILITIES = (0.2, 0.24, 0.24, 0.16, 0.08, 0.08)
WATER_NIR_MAX = 0.06  # an endmember darker than this at 860 nm is taken as water


class SimulationError(ValueError):
    """Inputs the simulator cannot use; the message says what to change."""


def rng_stream(seed: int, *tags: int) -> np.random.Generator:
    """An independent stream per purpose, so e.g. the truth does not depend on sensor draws."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), *[int(t) for t in tags]]))


def season_dates(start: str = "2022-04-10", n: int = 7, step_days: int = 25) -> list:
    d0 = _dt.date.fromisoformat(start)
    return [(d0 + _dt.timedelta(days=step_days * i)).isoformat() for i in range(n)]


# ----------------------------------------------------------------------------------- unmixing
@dataclass
class Unmixing:
    """``endmembers`` (E, band); ``abundances`` (E, row, col) >= 0; ``residual`` (band, row, col)
    = image - endmembers·abundances (NaN where the image is); ``roles``: name -> endmember indices
    for "green", "dry", "soil", "water"."""

    endmembers: np.ndarray
    abundances: np.ndarray
    residual: np.ndarray
    roles: dict

    def reconstruct(self, abundances: np.ndarray | None = None) -> np.ndarray:
        a = self.abundances if abundances is None else abundances
        return (np.tensordot(self.endmembers, a, axes=(0, 0)) + self.residual).astype(np.float32)


def atgp(pixels: np.ndarray, n: int) -> list:
    """Automatic target generation: the brightest pixel, then each next the pixel farthest from
    the span of those chosen (pure-pixel endmember candidates). pixels (N, band)."""
    chosen = [int(np.argmax(np.einsum("nb,nb->n", pixels, pixels)))]
    for _ in range(n - 1):
        U = pixels[chosen].T  # (band, k)
        proj = pixels - (pixels @ U) @ np.linalg.pinv(U)
        chosen.append(int(np.argmax(np.einsum("nb,nb->n", proj, proj))))
    return chosen


def nonnegative_abundances(pixels: np.ndarray, endmembers: np.ndarray) -> np.ndarray:
    """Least-squares abundances >= 0: the unconstrained solution where it is non-negative,
    scipy's NNLS (active set, exact) for the other pixels. pixels (N, band), endmembers
    (E, band) -> (N, E)."""
    from scipy.optimize import nnls

    X = pixels.astype(np.float64)
    E = endmembers.astype(np.float64)
    A = np.linalg.lstsq(E.T, X.T, rcond=None)[0].T
    for i in np.flatnonzero((A < 0).any(axis=1)):
        A[i] = nnls(E.T, X[i])[0]
    return A


def _band(wl, nm):
    return int(np.argmin(np.abs(np.asarray(wl) - nm)))


def _ndvi(spectra, wl):
    nir, red = spectra[..., _band(wl, 840)], spectra[..., _band(wl, 665)]
    return (nir - red) / (nir + red + 1e-9)


def _endmember_roles(E: np.ndarray, wl) -> dict:
    """Role -> endmember indices (the most typical first), or None where no endmember fits:
    green (NDVI > 0.3, the highest first), soil (low NDVI, rising steeply from the blue to the
    SWIR, unlike flatter built-up surfaces), water (the darkest, if dark in the NIR)."""
    ndvi = _ndvi(E, wl)
    nir = E[:, _band(wl, 860)]
    slope = E[:, _band(wl, 1650)] / np.maximum(E[:, _band(wl, 480)], 1e-3)
    lit = nir >= WATER_NIR_MAX
    green = [i for i in np.argsort(-ndvi) if ndvi[i] > 0.3 and lit[i]]
    soil = [i for i in np.argsort(-slope) if ndvi[i] <= 0.3 and lit[i] and slope[i] > 1.8]
    dark = int(np.argmin(nir))
    return {
        "green": [int(i) for i in green] if green and ndvi[green[0]] > 0.5 else None,
        "soil": [int(i) for i in soil] or None,
        "water": [dark] if not lit[dark] else None,
    }


def unmix(
    hs: np.ndarray,
    wavelengths: Sequence[float] | np.ndarray,
    n_endmembers: int = 6,
    max_pixels: int = 20000,
    seed: int = 0,
) -> Unmixing:
    """Unmixes hs (band, row, col) reflectance (NaN = nodata) as described in the module
    docstring. Endmembers are found on at most ``max_pixels`` valid pixels (seeded sample)."""
    wl = np.asarray(wavelengths, dtype=np.float64)
    B, H, W = hs.shape
    flat = hs.reshape(B, -1).T
    valid = np.all(np.isfinite(flat), axis=1)
    if valid.sum() < n_endmembers:
        raise SimulationError("The base image has fewer valid pixels than endmembers.")
    idx = np.flatnonzero(valid)
    sample = idx if idx.size <= max_pixels else np.sort(rng_stream(seed, 7).choice(idx, max_pixels, False))
    picked = atgp(flat[sample], n_endmembers)
    E = flat[sample][picked].astype(np.float64)
    # ATGP never picks dark targets (they lie near the origin): add water as the median of the
    # darkest NIR pixels when those are dark enough to be water.
    nir_all = flat[sample][:, _band(wl, 860)]
    darkest = flat[sample][np.argsort(nir_all)[:10]]
    if np.median(darkest[:, _band(wl, 860)]) < WATER_NIR_MAX and E[:, _band(wl, 860)].min() >= WATER_NIR_MAX:
        E = np.concatenate([E, np.median(darkest, axis=0)[None]])
    roles, library = _endmember_roles(E, wl), []
    for role, name in (("green", "green_vegetation"), ("soil", "soil"), ("water", "water"), ("dry", "dry_vegetation")):
        if roles.get(role) is None:
            roles[role] = [len(E) + len(library)]
            library.append(library_spectrum(name, wl))
    if library:
        E = np.concatenate([E, np.stack(library)])
    A = np.zeros((E.shape[0], H * W), dtype=np.float32)
    A[:, idx] = nonnegative_abundances(flat[idx], E).T
    A = A.reshape(-1, H, W)
    residual = (hs - np.tensordot(E, A, axes=(0, 0))).astype(np.float32)
    return Unmixing(E.astype(np.float32), A, residual, roles)


def unmixing_from_scene(scene: SyntheticScene) -> Unmixing:
    """The exact unmixing of a ``SyntheticScene`` (its own endmembers and abundances)."""
    n = {name: i for i, name in enumerate(scene.endmember_names)}
    roles = {
        "green": [n["green_vegetation"]],
        "dry": [n["dry_vegetation"]],
        "soil": [n["soil"], n["bright_soil"]],
        "water": [n["water"]],
    }
    residual = (scene.hs - np.tensordot(scene.endmembers, scene.abundances, axes=(0, 0))).astype(np.float32)
    return Unmixing(scene.endmembers.copy(), scene.abundances.copy(), residual, roles)


# ----------------------------------------------------------------------------------- schedules
def _sig(x):
    return 1.0 / (1.0 + np.exp(-np.clip(x, -50, 50)))


def draw_schedules(n_parcels: int, rng: np.random.Generator) -> dict:
    """Per-parcel schedule kind (index into SCHEDULES) and its parameters (days of year)."""

    def u(lo, hi):
        return rng.uniform(lo, hi, n_parcels)

    kind = rng.choice(len(SCHEDULES), size=n_parcels, p=SCHEDULE_PROBABILITIES)
    up_winter = u(85, 120)
    sen_winter = up_winter + u(60, 80)
    up_summer = u(140, 175)
    flood_start = u(110, 230)
    return {
        "kind": kind,
        "strength": u(0.75, 1.0),
        "w_up": up_winter,
        "w_sen": sen_winter,
        "w_harvest": sen_winter + u(12, 30),
        "w_catch": rng.uniform(size=n_parcels) < 0.3,
        "s_up": up_summer,
        "s_sen": up_summer + u(70, 95),
        "s_peak": u(0.75, 0.95),
        "mow1": u(140, 175),
        "mow2": u(200, 245),
        "g_level": u(0.6, 0.85),
        "f_level": u(0.1, 0.35),
        "f_up": u(100, 200),
        "fl_start": flood_start,
        "fl_end": flood_start + u(20, 50),
        "fl_depth": u(0.6, 0.95),
    }


def schedule_state(kind: np.ndarray, p: dict, doy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(green, dry, soil, water) fractions (sum 1) of each pixel on day of year ``doy`` (array,
    per pixel: the parcel's day shifted by the pixel's smooth timing offset). ``kind`` and the
    entries of ``p`` are per-pixel arrays (parcel parameters indexed by the parcel map)."""
    d = doy
    green = np.zeros_like(d)
    dry = np.zeros_like(d)
    water = np.zeros_like(d)
    # Winter crop: green from autumn sowing, up in spring, senescence to dry, harvest to stubble.
    w_green = (0.25 + 0.7 * _sig((d - p["w_up"]) / 8)) * (1 - _sig((d - p["w_sen"]) / 6))
    w_dry = 0.85 * _sig((d - p["w_sen"]) / 6)
    cut = d >= p["w_harvest"]
    w_green = np.where(cut, 0.02 + np.where(p["w_catch"], 0.5 * _sig((d - p["w_harvest"] - 30) / 7), 0), w_green)
    w_dry = np.where(cut, 0.12, w_dry)
    # Summer crop (maize-like): bare until late spring, fast green-up, senescence.
    s_green = p["s_peak"] * _sig((d - p["s_up"]) / 7) * (1 - _sig((d - p["s_sen"]) / 8)) + 0.03
    s_dry = 0.7 * _sig((d - p["s_sen"]) / 8)
    # Grassland: a green level, knocked down by two mowings and regrowing.
    drop = np.zeros_like(d)
    for m in ("mow1", "mow2"):
        after = d >= p[m]
        drop = np.maximum(drop, np.where(after, 0.55 * np.exp(-(d - p[m]) / 14.0), 0))
    g_green = p["g_level"] * (1 - drop)
    g_dry = 0.1 + 0.5 * drop * p["g_level"]
    # Fallow: sparse weeds coming up slowly.
    f_green = p["f_level"] * (0.5 + 0.5 * _sig((d - p["f_up"]) / 15))
    # Flooding: a wet meadow under water for a few weeks.
    flood = p["fl_depth"] * _sig((d - p["fl_start"]) / 3) * (1 - _sig((d - p["fl_end"]) / 4))

    def k(name):
        return kind == SCHEDULES.index(name)

    green = np.select(
        [k("winter_crop"), k("summer_crop"), k("grassland"), k("fallow"), k("flooding")],
        [w_green, s_green, g_green, f_green, 0.6 * (1 - flood)],
        green,
    )
    dry = np.select(
        [k("winter_crop"), k("summer_crop"), k("grassland"), k("fallow"), k("flooding")],
        [w_dry, s_dry, g_dry, 0.25 + 0 * d, 0.1 * (1 - flood)],
        dry,
    )
    water = np.where(k("flooding"), flood, water)
    green, dry = np.clip(green, 0, 1), np.clip(dry, 0, 1)
    total = green + dry + water
    over = total > 1
    green, dry, water = (np.where(over, x / np.maximum(total, 1e-9), x) for x in (green, dry, water))
    soil = np.clip(1 - green - dry - water, 0, 1)
    return green, dry, soil, water


# ----------------------------------------------------------------------------------- truth
@dataclass
class TruthSeries:
    """``values`` (time, band, row, col) float32 reflectance, NaN where the base image is;
    ``parcels`` (row, col); ``schedule_kind`` per parcel (index into SCHEDULES); ``changing``
    (row, col) bool: the pixel's parcel has a non-static schedule."""

    dates: list
    values: np.ndarray
    parcels: np.ndarray
    schedule_kind: np.ndarray
    unmixing: Unmixing

    @property
    def changing(self) -> np.ndarray:
        return self.schedule_kind[self.parcels] != SCHEDULES.index("static")


def simulate_truth(
    base_hs: np.ndarray,
    wavelengths: Sequence[float] | np.ndarray,
    dates: Sequence[str],
    seed: int = 0,
    parcels: np.ndarray | None = None,
    unmixing: Unmixing | None = None,
    mean_parcel_area_px: float = 60.0,
    timing_jitter_days: float = 6.0,
) -> TruthSeries:
    """The fine HS truth on every date (see the module docstring)."""
    base_hs = np.asarray(base_hs, dtype=np.float32)
    B, H, W = base_hs.shape
    if unmixing is None:
        unmixing = unmix(base_hs, wavelengths, seed=seed)
    if parcels is None:
        parcels = parcel_layout(H, W, mean_parcel_area_px, rng_stream(seed, 1))
    n_parcels = int(parcels.max()) + 1
    params = draw_schedules(n_parcels, rng_stream(seed, 2))
    p = {k: v[parcels] for k, v in params.items()}
    # Smooth within-field variation: timing offsets and amplitude, at about a parcel's scale.
    scale = max(2.0, np.sqrt(mean_parcel_area_px) / 1.5)
    frng = rng_stream(seed, 3)
    offset = timing_jitter_days * smooth_field((H, W), scale, frng)
    vigour = 1 + 0.1 * smooth_field((H, W), scale, frng)
    A0 = unmixing.abundances
    r = unmixing.roles
    dry_i, water_i = r["dry"][0], r["water"][0]
    # Only the vegetation/soil share of a pixel changes (water may flood onto it); built-up
    # endmembers and existing water bodies stay as they are.
    mass_idx = sorted(set(r["green"] + r["dry"] + r["soil"]))
    role_idx = sorted(set(mass_idx + r["water"]))
    mass = A0[mass_idx].sum(axis=0)
    # Green (soil) mass goes to the pixel's own green (soil) endmembers in its own proportions.
    split = {}
    for group in ("green", "soil"):
        g_mass = A0[r[group]].sum(axis=0)
        sp = np.where(g_mass > 1e-6, A0[r[group]] / np.maximum(g_mass, 1e-6), 0)
        sp[0] = np.where(g_mass > 1e-6, sp[0], 1.0)
        split[group] = sp
    s = np.where(p["kind"] == SCHEDULES.index("static"), 0.0, p["strength"] * np.clip(vigour, 0.8, 1.2))
    s = np.clip(s, 0, 1).astype(np.float32)
    out = np.empty((len(dates), B, H, W), dtype=np.float32)
    for t, date in enumerate(dates):
        doy = float(_dt.date.fromisoformat(date).timetuple().tm_yday)
        green, dry, soil, water = schedule_state(p["kind"], p, doy - offset)
        green = np.clip(green * vigour, 0, 1)
        target = np.zeros_like(A0)
        target[water_i] = A0[water_i]
        target[dry_i] += dry * mass
        target[water_i] += water * mass
        for group, fraction in (("green", green), ("soil", np.clip(1 - green - dry - water, 0, 1))):
            for j, i in enumerate(r[group]):
                target[i] += fraction * split[group][j] * mass
        A = A0.copy()
        A[role_idx] = (1 - s) * A0[role_idx] + s * target[role_idx]
        out[t] = unmixing.reconstruct(A)
    return TruthSeries(list(dates), out, parcels, params["kind"], unmixing)
