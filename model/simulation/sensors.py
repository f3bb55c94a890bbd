"""Sensors observing a simulated truth series (``truth``), on their own dates only.

Sub-pixel misregistration of the coarser sensors; spectral responses (fine MS: ZY1-02D VNIC-like,
dense MS: GF-6 WFV) and Gaussian-PSF degradation (``srf``, ``core.degrade``); a per-date, per-band
gain and offset between sensors (smooth across wavelength for HS); noise (HS noisier at the band
edges, in the SWIR and much noisier in the water-vapour bands); clouds as nodata.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..core.degrade import MIN_VALID_WEIGHT, default_sigma, degrade
from ..core.grid import coarse_size
from ..core.vocabulary import ROLES
from .srf import SpectralResponse, SRFError, resample_weights, sensor_preset, spectral_resample
from .synthetic_scene import smooth_field
from .truth import SimulationError, TruthSeries, rng_stream


def atmospheric_transmission(wavelengths: Sequence[float] | np.ndarray) -> np.ndarray:
    """A rough two-way transmission shape (water vapour, O2, CO2): where it is low, a sensor
    collects little light and its surface-reflectance product is noisy."""
    wl = np.asarray(wavelengths, dtype=np.float64)

    def g(c, w):
        return np.exp(-0.5 * ((wl - c) / w) ** 2)

    tau = (
        0.3 * g(762, 4)
        + 0.35 * g(940, 22)
        + 0.5 * g(1135, 25)
        + 2.6 * g(1390, 38)
        + 3.0 * g(1880, 55)
        + 0.3 * g(2010, 12)
        + 1.2 / (1 + np.exp(-(wl - 2470) / 20))
    )
    return np.exp(-tau)


def hs_noise_sigma(wavelengths: Sequence[float] | np.ndarray, base: float = 0.003) -> np.ndarray:
    """Per-band noise std (reflectance) of a pushbroom HS sensor: VNIR lowest in the middle,
    higher at the blue end and the VNIR detector's long end, SWIR higher and rising with
    wavelength, and far higher where the atmosphere absorbs."""
    wl = np.asarray(wavelengths, dtype=np.float64)
    detector = np.where(
        wl < 1000,
        1 + 1.5 * np.exp(-(wl - wl.min()) / 25) + 1.2 * np.exp(-(1000 - wl) / 35),
        1.8 + 1.5 * ((wl - 1000) / 1500) ** 2,
    )
    return base * detector / atmospheric_transmission(wl) ** 0.75


@dataclass
class SensorSpec:
    """How one role's sensor sees the truth. ``response`` None keeps the HS bands."""

    role: str
    sensor: str
    response: SpectralResponse | None
    factor: float  # the sensor's pixel over the fine grid's: an integer (x3) or not (GF-6 WFV's 16 m on 10 m: 1.6)
    noise: np.ndarray | float  # std per band, reflectance
    gain_std: float
    offset_std: float
    max_shift: float  # misregistration, in the sensor's own pixels, uniform in ±max_shift
    cloud_probability: float
    cloud_cover: tuple = (0.05, 0.3)


def covered_response(
    response: SpectralResponse,
    wavelengths: Sequence[float] | np.ndarray,
    fwhm: Sequence[float] | np.ndarray | None = None,
) -> SpectralResponse:
    """The bands of ``response`` that HS bands at ``wavelengths`` cover (e.g. GF-6 WFV's violet
    band lies partly below EnMAP's first band and cannot be simulated from it)."""
    keep = []
    for b in range(response.n_bands):
        sub = SpectralResponse([response.names[b]], response.wavelengths, response.responses[b : b + 1])
        try:
            resample_weights(wavelengths, sub, fwhm)
            keep.append(b)
        except SRFError:
            pass
    if not keep:
        raise SimulationError("The HS wavelengths cover none of the sensor's bands.")
    return SpectralResponse([response.names[b] for b in keep], response.wavelengths, response.responses[keep])


def default_sensors(
    wavelengths: Sequence[float] | np.ndarray,
    fwhm: Sequence[float] | np.ndarray | None = None,
    dense_factor: int = 2,
    hs_factor: int = 3,
    fine_response: SpectralResponse | None = None,
    dense_response: SpectralResponse | None = None,
) -> dict:
    """The paper's Dataset I protocol: fine MS ZY1-02D VNIC-like (preset), dense MS GF-6 WFV
    ×dense_factor, HS ×hs_factor. Responses may be given (e.g. measured GF-6 WFV responses)."""
    fine = covered_response(fine_response or sensor_preset("zy1_02d_vnic"), wavelengths, fwhm)
    dense = covered_response(dense_response or sensor_preset("gf6_wfv"), wavelengths, fwhm)
    return {
        "fine_ms": SensorSpec("fine_ms", "ZY1-02D VNIC-like (simulated)", fine, 1, 0.002, 0.015, 0.002, 0.0, 0.45),
        "dense_ms": SensorSpec("dense_ms", "GF-6 WFV (simulated)", dense, dense_factor, 0.003, 0.03, 0.004, 0.4, 0.35),
        "hs": SensorSpec(
            "hs",
            "ZY1-02D AHSI/EnMAP-like HS (simulated)",
            None,
            hs_factor,
            hs_noise_sigma(wavelengths),
            0.02,
            0.002,
            0.35,
            0.3,
        ),
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
    factor: float
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
        num = ndimage.shift(np.where(valid, image[b], 0).astype(np.float32), (dy, dx), order=1, mode="nearest")
        with np.errstate(invalid="ignore", divide="ignore"):
            out[b] = np.where(w > 0.5, num / w, np.nan)  # mostly from valid pixels
    return out


def _sample_axis(a: np.ndarray, centres: np.ndarray, axis: int) -> np.ndarray:
    """``a`` linearly interpolated at fractional indices ``centres`` along ``axis`` (edges clamped)."""
    lo = np.clip(np.floor(centres).astype(np.int64), 0, a.shape[axis] - 1)
    hi = np.clip(lo + 1, 0, a.shape[axis] - 1)
    w = (centres - lo).reshape([-1 if d == axis % a.ndim else 1 for d in range(a.ndim)])
    return np.take(a, lo, axis=axis) * (1 - w) + np.take(a, hi, axis=axis) * w


def degrade_to(image: np.ndarray, factor: float) -> np.ndarray:
    """(..., rows, cols) -> what a sensor of pixels ``factor`` times the grid's records: an integer
    factor is ``core.degrade`` (PSF, then decimation); any other (1.6: 16 m on a 10 m grid) the same
    Gaussian PSF (FWHM one sensor pixel), sampled at each sensor pixel's centre, fine coordinate
    (i + 0.5) * factor - 0.5, as for an integer factor, on floor(n / factor) pixels. NaN-aware by
    normalised convolution; NaN where the valid pixels carry less than MIN_VALID_WEIGHT of the PSF."""
    f = float(factor)
    if f.is_integer():
        return degrade(image, int(f))
    sigma = [0.0] * (image.ndim - 2) + [default_sigma(f)] * 2
    valid = np.isfinite(image)
    num = ndimage.gaussian_filter(np.where(valid, image, 0.0).astype(np.float64), sigma, mode="constant")
    den = ndimage.gaussian_filter(valid.astype(np.float64), sigma, mode="constant")
    for axis in (-2, -1):
        centres = (np.arange(coarse_size(image.shape[axis], f)) + 0.5) * f - 0.5
        num, den = _sample_axis(num, centres, axis), _sample_axis(den, centres, axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den >= MIN_VALID_WEIGHT, num / den, np.nan).astype(np.float32)


def cloud_mask(shape: tuple[int, int], cover: float, rng: np.random.Generator) -> np.ndarray:
    """Bool (row, col), True under a cloud: blobs of a smoothed random field covering ``cover``."""
    f = smooth_field(shape, max(shape) / 12.0, rng)
    return f > np.quantile(f, 1 - cover)


def observe(
    truth: np.ndarray,
    wavelengths: Sequence[float] | np.ndarray,
    fwhm: Sequence[float] | np.ndarray,
    spec: SensorSpec,
    rng: np.random.Generator,
    role: str = "",
    date: str = "",
) -> SensorImage:
    """What ``spec``'s sensor records of one date's fine HS truth (band, row, col)."""
    wl = np.asarray(wavelengths, dtype=np.float64)
    f = int(spec.factor) if float(spec.factor).is_integer() else float(spec.factor)
    dy, dx = rng.uniform(-spec.max_shift, spec.max_shift, 2) if spec.max_shift else (0.0, 0.0)
    img = subpixel_shift(truth, dy * f, dx * f)
    if spec.response is not None:
        img = spectral_resample(img, wl, spec.response, fwhm)
        out_wl, out_fwhm = spec.response.centres(), spec.response.fwhm()
        names = list(spec.response.names)
    else:
        out_wl, out_fwhm = wl, np.asarray(fwhm, dtype=np.float64)
        names = [f"band {b + 1} ({w:g} nm)" for b, w in enumerate(wl)]
    if f > 1:
        img = degrade_to(img, f)
    nb = img.shape[0]
    if spec.response is None or role == "hs":  # HS: gain smooth across wavelength (residual atmosphere)
        u = (out_wl - 1450.0) / 1050.0
        c = rng.normal(0, [spec.gain_std, 0.75 * spec.gain_std, 0.5 * spec.gain_std])
        gain = 1 + c[0] + c[1] * u + c[2] * u**2
        offset = rng.normal(0, spec.offset_std) * (1 + 0.5 * u)
    else:
        gain = 1 + rng.normal(0, spec.gain_std, nb)
        offset = rng.normal(0, spec.offset_std, nb)
    img = img * gain[:, None, None].astype(np.float32) + offset[:, None, None].astype(np.float32)
    sigma = np.broadcast_to(np.asarray(spec.noise, dtype=np.float64), (nb,))
    shot = 0.01 * np.abs(np.nan_to_num(img))  # a small signal-dependent part
    noise = rng.standard_normal(img.shape).astype(np.float32)
    img = img + noise * np.sqrt(sigma[:, None, None] ** 2 + shot**2).astype(np.float32)
    cloud_fraction = 0.0
    if rng.uniform() < spec.cloud_probability:
        cover = rng.uniform(*spec.cloud_cover)
        clouds = cloud_mask(truth.shape[-2:], cover, rng).astype(np.float32)
        # A coarse pixel is masked once a fifth of its footprint is cloudy (conservative masks).
        cloudy = (degrade_to(clouds, f) > 0.2) if f > 1 else clouds > 0.5
        img[:, cloudy] = np.nan
        cloud_fraction = float(cloudy.mean())
    return SensorImage(
        role,
        date,
        spec.sensor,
        img.astype(np.float32),
        np.asarray(out_wl),
        np.asarray(out_fwhm),
        names,
        f,
        (float(dy), float(dx)),
        np.asarray(gain),
        cloud_fraction,
    )


@dataclass
class SeriesDesign:
    """Which role observes which date."""

    dates: list
    role_dates: dict  # role -> list of dates

    @classmethod
    def paper(cls, dates: Sequence[str], hs_indices: Sequence[int] = (0, 2, 3, 6)) -> SeriesDesign:
        """Dataset I layout: dense MS on every date, fine MS and HS on the same 4 dates."""
        hs = [dates[i] for i in hs_indices]
        return cls(list(dates), {"fine_ms": list(hs), "dense_ms": list(dates), "hs": list(hs)})


def simulate_inputs(
    truth: TruthSeries,
    wavelengths: Sequence[float] | np.ndarray,
    fwhm: Sequence[float] | np.ndarray,
    design: SeriesDesign,
    sensors: dict,
    seed: int = 0,
) -> list:
    """Every role's images on its dates (a list of SensorImage, by role then date)."""
    images = []
    for r, role in enumerate(ROLES):
        for date in design.role_dates.get(role, []):
            t = truth.dates.index(date)
            images.append(
                observe(truth.values[t], wavelengths, fwhm, sensors[role], rng_stream(seed, 100 + r, t), role, date)
            )
    return images
