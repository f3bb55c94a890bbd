"""A simulated multi-date, multi-sensor series from one fine hyperspectral image.

No public multi-date hyperspectral series exists, so the demo sample and the development benchmark
are simulated from one fine HS image (real EnMAP, or ``synthetic_scene``), made hard the way real
data is hard (../shared/data/README.md):

1. Truth. The image is unmixed (``unmix``: ATGP pure pixels plus the darkest pixels when they
   are water, then non-negative least-squares abundances); what the endmembers do not explain
   stays as a residual, so the real spectral detail survives on every date. Endmembers get
   roles by spectral indices (green vegetation: high NDVI; soil: low NDVI and a steep
   blue-to-SWIR rise; water: darkest NIR if dark enough); missing roles and dry vegetation
   come from the spectral library. Each sharp-edged parcel (``parcel_layout``; finer than a
   dense MS pixel in places) gets a schedule: static, winter crop (green-up, senescence,
   harvest), summer crop, grassland (mowing), fallow, flooding. Within a parcel the schedule's
   timing and amplitude vary smoothly. On each date the vegetation/soil share of every pixel is
   moved towards the schedule's state; built-up endmembers and water bodies do not change.
2. Sensors (``simulate_inputs``), on their dates only, never on the truth: sub-pixel
   misregistration of the coarser sensors; spectral responses (fine MS: ZY1-02D VNIC-like,
   dense MS: GF-6 WFV) and Gaussian-PSF degradation (model.srf, model.degrade); a per-date,
   per-band gain and offset between sensors (smooth across wavelength for HS); noise (HS noisier
   at the band edges, in the SWIR and much noisier in the water-vapour bands); clouds as nodata.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .degrade import degrade
from .geotiff import spectral_band_metadata, write_geotiff, write_text_atomic
from .mdd import Grid
from .srf import SRFError, SpectralResponse, resample_weights, sensor_preset, spectral_resample
from .synthetic_scene import library_spectrum, parcel_layout, smooth_field

ROLES = ("fine_ms", "dense_ms", "hs")
SCHEDULES = ("static", "winter_crop", "summer_crop", "grassland", "fallow", "flooding")
SCHEDULE_PROBABILITIES = (0.2, 0.24, 0.24, 0.16, 0.08, 0.08)
SCALE = 1e-4  # reflectance stored as int16 x 1e4
INT_NODATA = -32768
WATER_NIR_MAX = 0.06  # an endmember darker than this at 860 nm is taken as water


class SimulationError(ValueError):
    """Inputs the simulator cannot use; the message says what to change."""


def _rng(seed, *tags) -> np.random.Generator:
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

    def reconstruct(self, abundances=None) -> np.ndarray:
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
    return {"green": [int(i) for i in green] if green and ndvi[green[0]] > 0.5 else None,
            "soil": [int(i) for i in soil] or None,
            "water": [dark] if not lit[dark] else None}


def unmix(hs: np.ndarray, wavelengths, n_endmembers: int = 6, max_pixels: int = 20000,
          seed: int = 0) -> Unmixing:
    """Unmixes hs (band, row, col) reflectance (NaN = nodata) as described in the module
    docstring. Endmembers are found on at most ``max_pixels`` valid pixels (seeded sample)."""
    wl = np.asarray(wavelengths, dtype=np.float64)
    B, H, W = hs.shape
    flat = hs.reshape(B, -1).T
    valid = np.all(np.isfinite(flat), axis=1)
    if valid.sum() < n_endmembers:
        raise SimulationError("The base image has fewer valid pixels than endmembers.")
    idx = np.flatnonzero(valid)
    sample = idx if idx.size <= max_pixels else np.sort(_rng(seed, 7).choice(idx, max_pixels, False))
    picked = atgp(flat[sample], n_endmembers)
    E = flat[sample][picked].astype(np.float64)
    # ATGP never picks dark targets (they lie near the origin): add water as the median of the
    # darkest NIR pixels when those are dark enough to be water.
    nir_all = flat[sample][:, _band(wl, 860)]
    darkest = flat[sample][np.argsort(nir_all)[:10]]
    if np.median(darkest[:, _band(wl, 860)]) < WATER_NIR_MAX and E[:, _band(wl, 860)].min() >= WATER_NIR_MAX:
        E = np.concatenate([E, np.median(darkest, axis=0)[None]])
    roles, library = _endmember_roles(E, wl), []
    for role, name in (("green", "green_vegetation"), ("soil", "soil"), ("water", "water"),
                       ("dry", "dry_vegetation")):
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


def unmixing_from_scene(scene) -> Unmixing:
    """The exact unmixing of a ``SyntheticScene`` (its own endmembers and abundances)."""
    n = {name: i for i, name in enumerate(scene.endmember_names)}
    roles = {"green": [n["green_vegetation"]], "dry": [n["dry_vegetation"]],
             "soil": [n["soil"], n["bright_soil"]], "water": [n["water"]]}
    residual = (scene.hs - np.tensordot(scene.endmembers, scene.abundances, axes=(0, 0))).astype(np.float32)
    return Unmixing(scene.endmembers.copy(), scene.abundances.copy(), residual, roles)


# ----------------------------------------------------------------------------------- schedules
def _sig(x):
    return 1.0 / (1.0 + np.exp(-np.clip(x, -50, 50)))


def draw_schedules(n_parcels: int, rng: np.random.Generator) -> dict:
    """Per-parcel schedule kind (index into SCHEDULES) and its parameters (days of year)."""
    u = lambda lo, hi: rng.uniform(lo, hi, n_parcels)  # noqa: E731
    kind = rng.choice(len(SCHEDULES), size=n_parcels, p=SCHEDULE_PROBABILITIES)
    up_winter = u(85, 120)
    sen_winter = up_winter + u(60, 80)
    up_summer = u(140, 175)
    flood_start = u(110, 230)
    return {"kind": kind, "strength": u(0.75, 1.0),
            "w_up": up_winter, "w_sen": sen_winter, "w_harvest": sen_winter + u(12, 30),
            "w_catch": rng.uniform(size=n_parcels) < 0.3,
            "s_up": up_summer, "s_sen": up_summer + u(70, 95), "s_peak": u(0.75, 0.95),
            "mow1": u(140, 175), "mow2": u(200, 245), "g_level": u(0.6, 0.85),
            "f_level": u(0.1, 0.35), "f_up": u(100, 200),
            "fl_start": flood_start, "fl_end": flood_start + u(20, 50), "fl_depth": u(0.6, 0.95)}


def schedule_state(kind, p: dict, doy):
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
    w_green = np.where(cut, 0.02 + np.where(p["w_catch"], 0.5 * _sig((d - p["w_harvest"] - 30) / 7), 0),
                       w_green)
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
    k = lambda name: kind == SCHEDULES.index(name)  # noqa: E731
    green = np.select([k("winter_crop"), k("summer_crop"), k("grassland"), k("fallow"), k("flooding")],
                      [w_green, s_green, g_green, f_green, 0.6 * (1 - flood)], green)
    dry = np.select([k("winter_crop"), k("summer_crop"), k("grassland"), k("fallow"), k("flooding")],
                    [w_dry, s_dry, g_dry, 0.25 + 0 * d, 0.1 * (1 - flood)], dry)
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


def simulate_truth(base_hs: np.ndarray, wavelengths, dates, seed: int = 0, parcels=None,
                   unmixing: Unmixing | None = None, mean_parcel_area_px: float = 60.0,
                   timing_jitter_days: float = 6.0) -> TruthSeries:
    """The fine HS truth on every date (see the module docstring)."""
    base_hs = np.asarray(base_hs, dtype=np.float32)
    B, H, W = base_hs.shape
    if unmixing is None:
        unmixing = unmix(base_hs, wavelengths, seed=seed)
    if parcels is None:
        parcels = parcel_layout(H, W, mean_parcel_area_px, _rng(seed, 1))
    n_parcels = int(parcels.max()) + 1
    params = draw_schedules(n_parcels, _rng(seed, 2))
    p = {k: v[parcels] for k, v in params.items()}
    # Smooth within-field variation: timing offsets and amplitude, at about a parcel's scale.
    scale = max(2.0, np.sqrt(mean_parcel_area_px) / 1.5)
    frng = _rng(seed, 3)
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


# ----------------------------------------------------------------------------------- sensors
def atmospheric_transmission(wavelengths) -> np.ndarray:
    """A rough two-way transmission shape (water vapour, O2, CO2): where it is low, a sensor
    collects little light and its surface-reflectance product is noisy."""
    wl = np.asarray(wavelengths, dtype=np.float64)
    g = lambda c, w: np.exp(-0.5 * ((wl - c) / w) ** 2)  # noqa: E731
    tau = (0.3 * g(762, 4) + 0.35 * g(940, 22) + 0.5 * g(1135, 25) + 2.6 * g(1390, 38)
           + 3.0 * g(1880, 55) + 0.3 * g(2010, 12) + 1.2 / (1 + np.exp(-(wl - 2470) / 20)))
    return np.exp(-tau)


def hs_noise_sigma(wavelengths, base: float = 0.003) -> np.ndarray:
    """Per-band noise std (reflectance) of a pushbroom HS sensor: VNIR lowest in the middle,
    higher at the blue end and the VNIR detector's long end, SWIR higher and rising with
    wavelength, and far higher where the atmosphere absorbs."""
    wl = np.asarray(wavelengths, dtype=np.float64)
    detector = np.where(wl < 1000, 1 + 1.5 * np.exp(-(wl - wl.min()) / 25) + 1.2 * np.exp(-(1000 - wl) / 35),
                        1.8 + 1.5 * ((wl - 1000) / 1500) ** 2)
    return base * detector / atmospheric_transmission(wl) ** 0.75


@dataclass
class SensorSpec:
    """How one role's sensor sees the truth. ``response`` None keeps the HS bands."""

    role: str
    sensor: str
    response: SpectralResponse | None
    factor: int
    noise: np.ndarray | float  # std per band, reflectance
    gain_std: float
    offset_std: float
    max_shift: float  # misregistration, in the sensor's own pixels, uniform in ±max_shift
    cloud_probability: float
    cloud_cover: tuple = (0.05, 0.3)


def covered_response(response: SpectralResponse, wavelengths, fwhm=None) -> SpectralResponse:
    """The bands of ``response`` that HS bands at ``wavelengths`` cover (e.g. GF-6 WFV's violet
    band lies partly below EnMAP's first band and cannot be simulated from it)."""
    keep = []
    for b in range(response.n_bands):
        sub = SpectralResponse([response.names[b]], response.wavelengths, response.responses[b:b + 1])
        try:
            resample_weights(wavelengths, sub, fwhm)
            keep.append(b)
        except SRFError:
            pass
    if not keep:
        raise SimulationError("The HS wavelengths cover none of the sensor's bands.")
    return SpectralResponse([response.names[b] for b in keep], response.wavelengths,
                            response.responses[keep])


def default_sensors(wavelengths, fwhm=None, dense_factor: int = 2, hs_factor: int = 3,
                    fine_response=None, dense_response=None) -> dict:
    """The paper's Dataset I protocol: fine MS ZY1-02D VNIC-like (preset), dense MS GF-6 WFV
    ×dense_factor, HS ×hs_factor. Responses may be given (e.g. measured GF-6 WFV responses)."""
    fine = covered_response(fine_response or sensor_preset("zy1_02d_vnic"), wavelengths, fwhm)
    dense = covered_response(dense_response or sensor_preset("gf6_wfv"), wavelengths, fwhm)
    return {
        "fine_ms": SensorSpec("fine_ms", "ZY1-02D VNIC-like (simulated)", fine, 1, 0.002, 0.015, 0.002,
                              0.0, 0.45),
        "dense_ms": SensorSpec("dense_ms", "GF-6 WFV (simulated)", dense, dense_factor, 0.003, 0.03,
                               0.004, 0.4, 0.35),
        "hs": SensorSpec("hs", "ZY1-02D AHSI/EnMAP-like HS (simulated)", None, hs_factor,
                         hs_noise_sigma(wavelengths), 0.02, 0.002, 0.35, 0.3),
    }


@dataclass
class SensorImage:
    """One simulated input: ``values`` (band, row, col) float32 on the sensor's grid (the fine
    grid coarsened by ``factor``), NaN = nodata (clouds, holes)."""

    role: str
    date: str
    sensor: str
    values: np.ndarray
    wavelengths: np.ndarray
    fwhm: np.ndarray
    band_names: list
    factor: int
    shift_px: tuple  # (dy, dx) misregistration in the sensor's pixels
    gain: np.ndarray
    cloud_fraction: float
    extra: dict = field(default_factory=dict)


def subpixel_shift(image: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """(band, row, col) moved by (dy, dx) pixels, bilinear, NaN-aware (normalised)."""
    if dy == 0 and dx == 0:
        return image.copy()
    valid = np.isfinite(image[0]) if image.ndim == 3 else np.isfinite(image)
    w = ndimage.shift(valid.astype(np.float32), (dy, dx), order=1, mode="nearest")
    out = np.empty_like(image)
    for b in range(image.shape[0]):
        num = ndimage.shift(np.where(valid, image[b], 0).astype(np.float32), (dy, dx), order=1,
                            mode="nearest")
        with np.errstate(invalid="ignore", divide="ignore"):
            out[b] = np.where(w > 0.5, num / w, np.nan)  # mostly from valid pixels
    return out


def cloud_mask(shape, cover: float, rng: np.random.Generator) -> np.ndarray:
    """Bool (row, col), True under a cloud: blobs of a smoothed random field covering ``cover``."""
    f = smooth_field(shape, max(shape) / 12.0, rng)
    return f > np.quantile(f, 1 - cover)


def observe(truth: np.ndarray, wavelengths, fwhm, spec: SensorSpec, rng: np.random.Generator,
            role: str = "", date: str = "") -> SensorImage:
    """What ``spec``'s sensor records of one date's fine HS truth (band, row, col)."""
    wl = np.asarray(wavelengths, dtype=np.float64)
    f = int(spec.factor)
    dy, dx = (rng.uniform(-spec.max_shift, spec.max_shift, 2) if spec.max_shift else (0.0, 0.0))
    img = subpixel_shift(truth, dy * f, dx * f)
    if spec.response is not None:
        img = spectral_resample(img, wl, spec.response, fwhm)
        out_wl, out_fwhm = spec.response.centres(), spec.response.fwhm()
        names = list(spec.response.names)
    else:
        out_wl, out_fwhm = wl, np.asarray(fwhm, dtype=np.float64)
        names = [f"band {b + 1} ({w:g} nm)" for b, w in enumerate(wl)]
    if f > 1:
        img = degrade(img, f)
    nb = img.shape[0]
    if spec.response is None:  # HS: gain smooth across wavelength (residual atmosphere)
        u = (out_wl - 1450.0) / 1050.0
        c = rng.normal(0, [spec.gain_std, 0.75 * spec.gain_std, 0.5 * spec.gain_std])
        gain = 1 + c[0] + c[1] * u + c[2] * u ** 2
        offset = rng.normal(0, spec.offset_std) * (1 + 0.5 * u)
    else:
        gain = 1 + rng.normal(0, spec.gain_std, nb)
        offset = rng.normal(0, spec.offset_std, nb)
    img = img * gain[:, None, None].astype(np.float32) + offset[:, None, None].astype(np.float32)
    sigma = np.broadcast_to(np.asarray(spec.noise, dtype=np.float64), (nb,))
    shot = 0.01 * np.abs(np.nan_to_num(img))  # a small signal-dependent part
    noise = rng.standard_normal(img.shape).astype(np.float32)
    img = img + noise * np.sqrt(sigma[:, None, None] ** 2 + shot ** 2).astype(np.float32)
    cloud_fraction = 0.0
    if rng.uniform() < spec.cloud_probability:
        cover = rng.uniform(*spec.cloud_cover)
        clouds = cloud_mask(truth.shape[-2:], cover, rng).astype(np.float32)
        # A coarse pixel is masked once a fifth of its footprint is cloudy (conservative masks).
        cloudy = (degrade(clouds, f) > 0.2) if f > 1 else clouds > 0.5
        img[:, cloudy] = np.nan
        cloud_fraction = float(cloudy.mean())
    return SensorImage(role, date, spec.sensor, img.astype(np.float32), np.asarray(out_wl),
                       np.asarray(out_fwhm), names, f, (float(dy), float(dx)), np.asarray(gain),
                       cloud_fraction)


@dataclass
class SeriesDesign:
    """Which role observes which date."""

    dates: list
    role_dates: dict  # role -> list of dates

    @classmethod
    def paper(cls, dates, hs_indices=(0, 2, 3, 6)):
        """Dataset I layout: dense MS on every date, fine MS and HS on the same 4 dates."""
        hs = [dates[i] for i in hs_indices]
        return cls(list(dates), {"fine_ms": list(hs), "dense_ms": list(dates), "hs": list(hs)})


def simulate_inputs(truth: TruthSeries, wavelengths, fwhm, design: SeriesDesign, sensors: dict,
                    seed: int = 0) -> list:
    """Every role's images on its dates (a list of SensorImage, by role then date)."""
    images = []
    for r, role in enumerate(ROLES):
        for date in design.role_dates.get(role, []):
            t = truth.dates.index(date)
            images.append(observe(truth.values[t], wavelengths, fwhm, sensors[role],
                                  _rng(seed, 100 + r, t), role, date))
    return images


# ----------------------------------------------------------------------------------- writing
def coarse_grid(grid: Grid, factor: int) -> Grid:
    x0, dx, rx, y0, ry, dy = grid.geotransform
    return Grid(grid.crs_wkt, (x0, dx * factor, rx, y0, ry, dy * factor), grid.width // factor,
                grid.height // factor)


def write_reflectance(path: str, values: np.ndarray, grid: Grid, date: str, wavelengths, fwhm,
                      descriptions, metadata: dict, extra_band_md=None):
    """int16 reflectance x 1e4 (band scale 0.0001, nodata -32768), the date in GDAL metadata
    (ACQUISITION_DATE) and wavelengths/FWHM in band metadata; written atomically."""
    q = np.where(np.isfinite(values), np.clip(np.round(values / SCALE), -32767, 32767), INT_NODATA)
    band_md = spectral_band_metadata(wavelengths, fwhm)
    for b, md in enumerate(band_md):
        md["date"] = date
        if extra_band_md:
            md.update(extra_band_md[b])
    write_geotiff(path, q.astype(np.int16), grid, nodata=INT_NODATA, descriptions=descriptions,
                  band_metadata=band_md, metadata={"ACQUISITION_DATE": date, **metadata},
                  scale=SCALE, offset=0.0)


def write_inputs(folder: str, images: list, grid: Grid, metadata: dict | None = None) -> dict:
    """Writes ``<role>_<date>.tif`` per image; returns role -> list of file names."""
    os.makedirs(folder, exist_ok=True)
    files = {role: [] for role in ROLES}
    for im in images:
        name = f"{im.role}_{im.date}.tif"
        md = {"STSFUSION_ROLE": im.role, "SENSOR": im.sensor, "SIMULATED": "yes",
              "MISREGISTRATION_PX": f"{im.shift_px[0]:.3f} {im.shift_px[1]:.3f}",
              "CLOUD_FRACTION": f"{im.cloud_fraction:.3f}", **(metadata or {})}
        desc = [f"{n} ({w:.0f} nm)" if im.role != "hs" else n for n, w in zip(im.band_names, im.wavelengths)]
        write_reflectance(os.path.join(folder, name), im.values, coarse_grid(grid, im.factor), im.date,
                          im.wavelengths, im.fwhm, desc, md, im.extra.get("band_md"))
        files[im.role].append(name)
    return files


def write_truth(folder: str, truth: TruthSeries, grid: Grid, wavelengths, fwhm,
                metadata: dict | None = None, extra_band_md=None) -> list:
    """Writes ``truth_hs_<date>.tif`` per date (the withheld fine HS reference)."""
    os.makedirs(folder, exist_ok=True)
    names = []
    for t, date in enumerate(truth.dates):
        name = f"truth_hs_{date}.tif"
        desc = [f"band {b + 1} ({w:g} nm)" for b, w in enumerate(wavelengths)]
        write_reflectance(os.path.join(folder, name), truth.values[t], grid, date, wavelengths, fwhm,
                          desc, {"STSFUSION_ROLE": "truth", "SIMULATED": "yes", **(metadata or {})},
                          extra_band_md)
        names.append(name)
    return names


def series_summary(design: SeriesDesign, images: list, files: dict, grid: Grid, wavelengths) -> dict:
    """A JSON-able description of a written series: dates per role, files, sizes, sensors."""
    by_role = {}
    for role in ROLES:
        ims = [im for im in images if im.role == role]
        if not ims:
            continue
        by_role[role] = {"dates": [im.date for im in ims], "files": files[role], "sensor": ims[0].sensor,
                         "bands": len(ims[0].wavelengths), "band_names": ims[0].band_names,
                         "wavelengths_nm": [round(float(w), 2) for w in ims[0].wavelengths],
                         "pixel_size_m": grid.pixel_size * ims[0].factor,
                         "size_px": [grid.width // ims[0].factor, grid.height // ims[0].factor],
                         "cloud_fraction": {im.date: round(im.cloud_fraction, 3) for im in ims}}
    return {"dates": design.dates, "roles": by_role, "truth_bands": len(wavelengths),
            "fine_grid": {"pixel_size_m": grid.pixel_size, "width": grid.width, "height": grid.height}}


def write_json(path: str, obj: dict):
    write_text_atomic(path, json.dumps(obj, indent=1))
