"""Spectral response functions (SRFs): read, make from band centres/widths, and apply to HS data.

An SRF says how strongly each band of a multispectral (MS) sensor responds to each wavelength.
Simulating an MS image from a hyperspectral (HS) one is a response-weighted mean over the HS bands.
Everything here is in nanometres; responses are peak-normalised (maximum 1 per band).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SENSORS_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "resources", "sensors"
)
# A band is simulated only if at least this fraction of its response area lies inside the HS range.
MIN_COVERED_FRACTION = 0.9
# Response below this share of the peak counts as zero, so a NaN HS band far out in a Gaussian
# tail (e.g. a water-vapour band flagged bad) does not turn a whole MS band to NaN.
MIN_RESPONSE = 1e-3
_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


class SRFError(ValueError):
    """A spectral response that cannot be read or applied; the message says what to change."""


@dataclass
class SpectralResponse:
    """Responses of ``len(names)`` bands sampled at common ``wavelengths`` (nm, ascending).

    ``responses`` is (n_bands, n_samples), each row peak-normalised, zero where a band has no data.
    """

    names: list
    wavelengths: np.ndarray
    responses: np.ndarray

    def __post_init__(self):
        self.wavelengths = np.asarray(self.wavelengths, dtype=np.float64)
        self.responses = np.atleast_2d(np.asarray(self.responses, dtype=np.float64))
        if self.responses.shape != (len(self.names), self.wavelengths.size):
            raise SRFError(
                f"Responses of shape {self.responses.shape} do not match {len(self.names)} "
                f"bands and {self.wavelengths.size} wavelengths."
            )

    @property
    def n_bands(self) -> int:
        return len(self.names)

    def centres(self) -> np.ndarray:
        """Response-weighted mean wavelength of each band (the centre of a Gaussian band), nm."""
        area = np.trapz(self.responses, self.wavelengths, axis=1)
        return np.trapz(self.responses * self.wavelengths, self.wavelengths, axis=1) / area

    def fwhm(self) -> np.ndarray:
        """Full width at half maximum of each band, nm: outermost half-maximum crossings,
        linearly interpolated between samples."""
        out = np.empty(self.n_bands)
        wl = self.wavelengths
        for b, r in enumerate(self.responses):
            above = np.flatnonzero(r >= 0.5 * r.max())
            i, j = above[0], above[-1]
            lo = wl[i] if i == 0 else np.interp(0.5, [r[i - 1], r[i]], [wl[i - 1], wl[i]])
            hi = wl[j] if j == wl.size - 1 else np.interp(0.5, [r[j + 1], r[j]], [wl[j + 1], wl[j]])
            out[b] = hi - lo
        return out


def _common_grid(bands: list) -> SpectralResponse:
    """Puts bands sampled at their own wavelengths onto the union of all sample wavelengths."""
    names = [n for n, _, _ in bands]
    wl = np.unique(np.concatenate([w for _, w, _ in bands]))
    resp = np.zeros((len(bands), wl.size))
    for k, (name, w, r) in enumerate(bands):
        order = np.argsort(w)
        w, r = w[order], np.clip(r[order], 0.0, None)  # tabulated RSRs have small negative noise
        if r.max() <= 0:
            raise SRFError(f"Band '{name}' has no positive response.")
        resp[k] = np.interp(wl, w, r / r.max(), left=0.0, right=0.0)
    return SpectralResponse(names, wl, resp)


def load_srf_file(path: str) -> SpectralResponse:
    """Reads a tabulated SRF file: ``;; BAND name`` (or ``# BAND name``) headers, each followed by
    ``wavelength response [more columns]`` rows; other ``;;``/``#`` lines are comments.

    Wavelengths below 30 are taken as micrometres and converted to nm.
    """
    bands, name, rows = [], None, []

    def flush():
        if name is not None:
            if len(rows) < 2:
                raise SRFError(f"{path}: band '{name}' has fewer than two wavelength rows.")
            a = np.array(rows, dtype=np.float64)
            bands.append((name, a[:, 0], a[:, 1]))

    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise SRFError(f"Cannot read spectral response file {path}: {e}.") from None
    for n, line in enumerate(lines, 1):
        s = line.strip()
        if not s:
            continue
        if s.startswith((";", "#")):
            m = re.match(r"^[;#]+\s*BAND\s+(.+?)\s*$", s, re.IGNORECASE)
            if m:
                flush()
                name, rows = m.group(1), []
            continue
        parts = re.split(r"[\s,;]+", s)
        try:
            values = [float(parts[0]), float(parts[1])]
        except (ValueError, IndexError):
            raise SRFError(f"{path}, line {n}: expected 'wavelength response', got '{s}'.") from None
        if name is None:
            raise SRFError(f"{path}, line {n}: data before the first ';; BAND name' header.")
        rows.append(values)
    flush()
    if not bands:
        raise SRFError(
            f"{path} holds no bands: expected ';; BAND name' headers followed by 'wavelength response' rows."
        )
    srf = _common_grid(bands)
    if srf.wavelengths.max() < 30:  # micrometres
        srf.wavelengths = srf.wavelengths * 1000.0
    return srf


def gaussian_response(
    names: Sequence[str], centres_nm: Sequence[float] | np.ndarray, fwhm_nm: Sequence[float] | np.ndarray
) -> SpectralResponse:
    """Gaussian bands from centres and FWHM (nm), sampled every 0.5 nm (or finer for narrow bands)
    out to 3 FWHM either side of each band."""
    c = np.asarray(centres_nm, dtype=np.float64)
    w = np.asarray(fwhm_nm, dtype=np.float64)
    if not (len(names) == c.size == w.size) or c.size == 0:
        raise SRFError("Give one centre and one FWHM per band name.")
    if np.any(w <= 0):
        raise SRFError(f"Every FWHM must be > 0 nm, got {list(w)}.")
    step = min(0.5, float(w.min()) / 20.0)
    lo, hi = float((c - 3 * w).min()), float((c + 3 * w).max())
    wl = np.arange(lo, hi + step / 2, step)
    sigma = w / _FWHM_PER_SIGMA
    resp = np.exp(-0.5 * ((wl[None] - c[:, None]) / sigma[:, None]) ** 2)
    return SpectralResponse(list(names), wl, resp)


def list_presets() -> list:
    """Names of the sensor presets in resources/sensors (file names without .json)."""
    if not os.path.isdir(SENSORS_DIR):
        return []
    return sorted(f[:-5] for f in os.listdir(SENSORS_DIR) if f.endswith(".json"))


def preset_info(name: str) -> dict:
    """The preset's JSON: sensor, source, bands [{name, centre_nm, fwhm_nm}]."""
    path = os.path.join(SENSORS_DIR, f"{name}.json")
    if not os.path.isfile(path):
        raise SRFError(
            f"Unknown sensor preset '{name}': choose one of {', '.join(list_presets())}, "
            "or give a spectral response file."
        )
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def sensor_preset(name: str) -> SpectralResponse:
    """Gaussian responses of a sensor preset (resources/sensors/<name>.json)."""
    bands = preset_info(name)["bands"]
    return gaussian_response([b["name"] for b in bands], [b["centre_nm"] for b in bands], [b["fwhm_nm"] for b in bands])


def hs_band_widths(hs_wavelengths: Sequence[float] | np.ndarray) -> np.ndarray:
    """Widths of HS bands from their spacing: half the distance to each neighbour (one
    neighbour at the ends). Used when the HS FWHM is unknown."""
    wl = np.asarray(hs_wavelengths, dtype=np.float64)
    if wl.size == 1:
        return np.ones(1)
    edges = np.concatenate([[wl[0] - (wl[1] - wl[0]) / 2], (wl[1:] + wl[:-1]) / 2, [wl[-1] + (wl[-1] - wl[-2]) / 2]])
    return np.diff(edges)


def _hs_widths(wl: np.ndarray, hs_fwhm) -> np.ndarray:
    if hs_fwhm is not None:
        return np.asarray(hs_fwhm, dtype=np.float64)
    order = np.argsort(wl)
    widths = np.empty_like(wl)
    widths[order] = hs_band_widths(wl[order])
    return widths


def _coverage(hs_wavelengths, response: SpectralResponse, hs_fwhm):
    """(weights (n_ms, n_hs) unnormalised, list of uncovered band indices, (lo, hi) nm)."""
    wl = np.asarray(hs_wavelengths, dtype=np.float64)
    if wl.ndim != 1 or wl.size == 0 or not np.all(np.isfinite(wl)):
        raise SRFError("HS wavelengths must be a non-empty list of numbers (nm).")
    widths = _hs_widths(wl, hs_fwhm)
    lo, hi = float((wl - widths / 2).min()), float((wl + widths / 2).max())
    inside = (response.wavelengths >= lo) & (response.wavelengths <= hi)
    area = np.trapz(response.responses, response.wavelengths, axis=1)
    covered = np.trapz(np.where(inside, response.responses, 0.0), response.wavelengths, axis=1)
    at_centres = np.stack([np.interp(wl, response.wavelengths, r, left=0.0, right=0.0) for r in response.responses])
    weights = np.where(at_centres >= MIN_RESPONSE, at_centres, 0.0) * widths[None]
    bad = [b for b in range(response.n_bands) if covered[b] < MIN_COVERED_FRACTION * area[b] or weights[b].sum() <= 0]
    return weights, bad, (lo, hi)


def uncovered_bands(
    hs_wavelengths: Sequence[float] | np.ndarray,
    response: SpectralResponse,
    hs_fwhm: Sequence[float] | np.ndarray | None = None,
) -> list:
    """Names of the bands less than MIN_COVERED_FRACTION of whose response the HS range covers."""
    return [response.names[b] for b in _coverage(hs_wavelengths, response, hs_fwhm)[1]]


def subset(response: SpectralResponse, names: Sequence[str]) -> SpectralResponse:
    """The named bands only, in the given order."""
    idx = [response.names.index(n) for n in names]
    return SpectralResponse([response.names[i] for i in idx], response.wavelengths.copy(), response.responses[idx])


def resample_weights(
    hs_wavelengths: Sequence[float] | np.ndarray,
    response: SpectralResponse,
    hs_fwhm: Sequence[float] | np.ndarray | None = None,
) -> np.ndarray:
    """(n_ms_bands, n_hs_bands) weights, rows summing to 1: the response at each HS centre times
    the HS band width. Raises SRFError naming the MS bands the HS range does not cover."""
    weights, bad, (lo, hi) = _coverage(hs_wavelengths, response, hs_fwhm)
    if bad:
        c = response.centres()
        detail = ", ".join(f"{response.names[b]} ({c[b]:.0f} nm)" for b in bad)
        raise SRFError(
            f"Band(s) {detail} fall outside the HS range {lo:.0f}–{hi:.0f} nm: "
            "choose a sensor whose bands the HS covers, or drop those bands."
        )
    return weights / weights.sum(axis=1, keepdims=True)


def spectral_resample(
    hs: np.ndarray,
    hs_wavelengths: Sequence[float] | np.ndarray,
    response: SpectralResponse,
    hs_fwhm: Sequence[float] | np.ndarray | None = None,
) -> np.ndarray:
    """hs (n_hs_bands, ...) -> (n_ms_bands, ...): the response-weighted mean over HS bands.

    NaN in an HS band that a MS band uses makes that MS value NaN; HS bands with zero weight are
    ignored (so a NaN far outside a band does not spoil it).
    """
    hs = np.asarray(hs)
    weights = resample_weights(hs_wavelengths, response, hs_fwhm)
    if hs.shape[0] != weights.shape[1]:
        raise SRFError(f"The HS array has {hs.shape[0]} bands but {weights.shape[1]} wavelengths.")
    dtype = np.result_type(hs.dtype, np.float32)
    out = np.empty((weights.shape[0],) + hs.shape[1:], dtype=dtype)
    for b, w in enumerate(weights):
        used = np.flatnonzero(w > 0)
        out[b] = np.tensordot(w[used].astype(dtype), hs[used], axes=(0, 0))
    return out
