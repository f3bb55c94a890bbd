"""Three baselines to compare the fusion network with. They are NOT the paper's method: they are the
simpler ways to get fine HS images on every date, run like the fusion (an MDD in, one GeoTIFF per
date out, ``<method>_YYYY-MM-DD.tif``).

``interpolation``
    Per date and pixel, the HS image of the nearest date (in days; the earlier on a tie) that is
    valid there, taken back to its native scale (block mean of ``mdd.scale_ratio("hs")`` fine
    pixels, which undoes the MDD's warp onto the fine grid) and upsampled bicubically to the fine
    grid. Spatial detail never exceeds the HS's; temporal change between HS dates is ignored.

``two_stage``
    1. Temporal (a simplification of STARFM, Gao et al. 2006): the fine MS of every date is
       predicted from each fine-MS date k as F_k + the dense-MS change from k to t, mapped to the
       fine-MS bands by a linear band mapping (least squares at the dense-MS scale on dates with
       both sensors) and averaged over the similar pixels of a (2r+1)² window (pixels whose fine
       MS at k differs from the centre's by at most 2σ_b/4 in every band, weighted by
       1/(1 + distance/r)). Predictions from several fine-MS dates are averaged with STARFM's
       temporal weights 1/(mean |dense change| + ε). Where a fine MS is observed at t, it is used.
    2. Spectral: a ridge regression from the (predicted) fine MS to each HS band, learned at the
       HS scale (both block-averaged by the HS scale ratio) on the valid pixels of the HS dates,
       then applied at the fine scale.

``per_date_regression``
    Only on the dates with both an HS and a fine MS image (within ``max_days_apart``): a ridge
    regression from that date's fine MS to each of its HS bands, learned at the HS scale on that
    date's pixels alone, applied to the fine MS. What one date's observations say on their own: the
    yardstick on the HS dates (a fusion should not fall below it there).

Tiles are processed with halos so results do not depend on the tile size; memory is bounded by the
tile size. Outputs are written under temporary names and renamed when all dates are complete.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import numpy as np
from osgeo import gdal

from ..core.calendar import MAX_DAYS_APART, check_max_days, fill_in_time, fine_for
from ..core.callbacks import Callbacks, callbacks_or_default
from ..core.degrade import degrade, upsample
from ..core.vocabulary import ROLE_LABELS, ROLES, by_distance, day_number
from ..mdd.format import MDD, NODATA
from ..mdd.geotiff import GeoTiffWriter, WriterGroup, spectral_band_metadata
from .tiling import aligned_window, requested_dates, tile_windows

gdal.UseExceptions()

METHODS = ("interpolation", "two_stage", "per_date_regression")
OUTPUT_PATTERN = "{method}_{date}.tif"
RIDGE_ALPHA = 1e-3  # ridge penalty relative to the mean feature variance
SIMILAR_CLASSES = 4  # STARFM's m: similar = within 2σ/m of the centre pixel in every band
CANCELED = "Baseline canceled: no GeoTIFF was written."


class BaselineError(ValueError):
    """A baseline cannot run as asked; the message says what is wrong and how to fix it."""


def output_path(folder: str, method: str, date: str) -> str:
    return os.path.join(folder, OUTPUT_PATTERN.format(method=method, date=date))


def _factor(mdd: MDD, role: str) -> int:
    return max(1, int(round(mdd.scale_ratio(role))))


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    return a if f == 1 else degrade(a, f, sigma=0)


# ---- interpolation ----------------------------------------------------------------------


def _interpolation_tile(mdd: MDD, tile, dates, f: int) -> dict:
    grid = mdd.grid
    window, crop = aligned_window(tile, 3 * f, f, grid.width, grid.height)
    hs_dates = mdd.roles["hs"].dates
    cache, out = {}, {}
    for date in dates:
        order = by_distance(hs_dates, day_number(date))
        result = None
        for d in order:
            if d not in cache:
                coarse = _block_mean(mdd.read("hs", window, [d])[0], f)
                cache[d] = upsample(coarse, f, (tile[3], tile[2]), "bicubic", origin=(crop[0].start, crop[1].start))
            result = cache[d].copy() if result is None else np.where(np.isnan(result), cache[d], result)
            if not np.isnan(result).any():
                break
        out[date] = result
    return out


# ---- two-stage: band mapping, STARFM-like temporal prediction, ridge spectral mapping -------


def _pad(v: np.ndarray, r: int, fill) -> np.ndarray:
    """``v`` padded by ``r`` pixels on both spatial axes with ``fill``."""
    return np.pad(v, [(0, 0)] * (v.ndim - 2) + [(r, r), (r, r)], constant_values=fill)


def _solve(gram: np.ndarray, rhs: np.ndarray, alpha: float) -> np.ndarray:
    """Ridge solution of (G + λ·I')W = R for one (p+1)² or a stack of normal equations; the last
    feature is the intercept (not penalised, which is the same as centring the features);
    λ = alpha · the mean feature variance times the pixel count (scale-free)."""
    single = gram.ndim == 2
    gram, rhs = (gram[None], rhs[None]) if single else (gram, rhs)
    p = gram.shape[-1] - 1
    reg = np.zeros((p + 1, p + 1))
    reg[:p, :p] = np.eye(p)
    n = np.maximum(gram[:, p, p], 1.0)
    mean = gram[:, :p, p] / n[:, None]
    centred = gram[:, :p, :p] - n[:, None, None] * mean[:, :, None] * mean[:, None, :]
    lam = alpha * np.trace(centred, axis1=1, axis2=2) / max(p, 1)
    out = np.stack([np.linalg.solve(g + l_ * reg + 1e-12 * np.eye(p + 1), r) for g, l_, r in zip(gram, lam, rhs)])
    return out[0] if single else out


class TwoStage:
    """The two-stage baseline fitted to one MDD (see the module docstring)."""

    def __init__(
        self,
        mdd: MDD,
        tile_size: int,
        radius: int | None = None,
        alpha: float = RIDGE_ALPHA,
        callbacks: Callbacks | None = None,
        max_days_apart: float = MAX_DAYS_APART,
    ) -> None:
        for role in ROLES:
            if role not in mdd.roles:
                raise BaselineError(
                    f"The two-stage baseline needs fine MS, dense MS and HS; the MDD "
                    f"has no {ROLE_LABELS[role]}: rebuild it with all three roles."
                )
        self.mdd = mdd
        self.fd, self.fh = _factor(mdd, "dense_ms"), _factor(mdd, "hs")
        self.step = self.fd * self.fh // math.gcd(self.fd, self.fh)
        self.radius = int(radius) if radius else max(2, int(round(1.5 * self.fd)))
        self.alpha = alpha
        self.tiles = tile_windows(mdd.grid.width, mdd.grid.height, tile_size)
        self.callbacks = callbacks_or_default(callbacks)
        self.log = self.callbacks.log
        self.fine_dates = mdd.roles["fine_ms"].dates
        self.dense_dates = mdd.roles["dense_ms"].dates
        self.max_days = check_max_days(max_days_apart)
        self._dense_days = [day_number(d) for d in self.dense_dates]
        self._dense_memo = (None, None)  # (window, (values, validity) of every dense MS date)
        self.band_map = self._fit_band_map()
        self.sigma = self._fine_std()
        self.weights = None

    def _check(self):
        self.callbacks.check(CANCELED)

    def dense_at(self, window: tuple, date: str) -> np.ndarray:
        """The dense MS (bands, rows, cols) of a window on any date, filled in time per pixel (the
        calendar rule, as in training and fusion); NaN where the pixel is never valid."""
        if self._dense_memo[0] != tuple(window):
            values = self.mdd.read("dense_ms", window)
            self._dense_memo = (tuple(window), (values, np.isfinite(values).all(axis=1)))
        values, valid = self._dense_memo[1]
        out, ok = fill_in_time(values, valid, self._dense_days, day_number(date))
        out[:, ~ok] = np.nan
        return out

    def _fit_band_map(self) -> np.ndarray:
        """A (n_dense + 1, n_fine) least-squares map dense MS -> fine MS at the dense scale, on every
        fine MS date (the dense MS brought to it in time)."""
        common = list(self.fine_dates)
        nd, nf = self.mdd.roles["dense_ms"].n_bands, self.mdd.roles["fine_ms"].n_bands
        gram, rhs = np.zeros((nd + 1, nd + 1)), np.zeros((nd + 1, nf))
        for tile in self.tiles:
            self._check()
            for d in common:
                x = _block_mean(self.dense_at(tile, d), self.fd)
                y = _block_mean(self.mdd.read("fine_ms", tile, [d])[0], self.fd)
                x, y = x.reshape(nd, -1).T, y.reshape(nf, -1).T
                ok = np.isfinite(x).all(1) & np.isfinite(y).all(1)
                xa = np.c_[x[ok], np.ones(ok.sum())]
                gram += xa.T @ xa
                rhs += xa.T @ y[ok]
        if gram[nd, nd] < 2 * (nd + 1):
            raise BaselineError(
                "The fine MS and the dense MS (brought to the fine MS dates in time) share too few "
                "valid pixels to relate their bands: give the fine MS at least one mostly cloud-free "
                "date within the dense MS series."
            )
        m = _solve(gram, rhs, 1e-6)
        self.log(
            f"Band mapping dense MS -> fine MS fitted on {int(gram[nd, nd])} pixels at the dense "
            f"scale ({len(common)} fine MS date(s))."
        )
        return m

    def _fine_std(self) -> np.ndarray:
        """Per fine-MS band standard deviation over valid pixels (STARFM's similarity scale)."""
        nf = self.mdd.roles["fine_ms"].n_bands
        s, s2, n = np.zeros(nf), np.zeros(nf), 0
        for tile in self.tiles:
            v = self.mdd.read("fine_ms", tile).transpose(1, 0, 2, 3).reshape(nf, -1)
            ok = np.isfinite(v).all(0)
            s += v[:, ok].sum(1)
            s2 += (v[:, ok].astype(np.float64) ** 2).sum(1)
            n += int(ok.sum())
        return np.sqrt(np.maximum(s2 / max(n, 1) - (s / max(n, 1)) ** 2, 0)) + 1e-12

    def predict_fine(self, window: tuple, date: str) -> np.ndarray:
        """Stage 1 on a window: fine MS (bands, rows, cols), NaN where it cannot be predicted."""
        mdd, r = self.mdd, self.radius
        nf = mdd.roles["fine_ms"].n_bands
        shape = (nf, window[3], window[2])
        own = fine_for(self.fine_dates, date, mdd.roles["hs"].dates, self.max_days)  # the fine MS of this date
        observed = mdd.read("fine_ms", window, [own])[0] if own else None
        dense_t = self.dense_at(window, date)
        num, den = np.zeros(shape), np.zeros(shape[1:])
        a = self.band_map[:-1]  # changes: the intercept cancels
        yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
        offsets = [
            (dy, dx, 1.0 / (1.0 + math.hypot(dy, dx) / r))
            for dy, dx in zip(yy.ravel(), xx.ravel())
            if math.hypot(dy, dx) <= r
        ]
        tol = (2.0 * self.sigma / SIMILAR_CLASSES)[:, None, None]
        for k in self.fine_dates:
            if k == own:
                continue
            fk = mdd.read("fine_ms", window, [k])[0]
            dd = dense_t - self.dense_at(window, k)
            change = np.einsum("db,dyx->byx", a, np.nan_to_num(dd))
            change_ok = np.isfinite(dd).all(0)
            fk_p, ch_p, ok_p = _pad(fk, r, np.nan), _pad(change, r, 0.0), _pad(change_ok, r, False)
            acc, wsum = np.zeros(shape), np.zeros(shape[1:])
            h, w = shape[1:]
            for dy, dx, wd in offsets:
                nb = fk_p[:, r + dy : r + dy + h, r + dx : r + dx + w]
                similar = (np.abs(nb - fk) <= tol).all(0) & ok_p[r + dy : r + dy + h, r + dx : r + dx + w]
                wgt = similar * wd
                acc += wgt * ch_p[:, r + dy : r + dy + h, r + dx : r + dx + w]
                wsum += wgt
            with np.errstate(invalid="ignore", divide="ignore"):
                pred = fk + acc / wsum
            # STARFM's temporal weight: dates with less dense-MS change are more reliable
            mag = np.where(change_ok, np.abs(np.nan_to_num(dd)).mean(0), np.inf)
            weight = 1.0 / (mag + 1e-3 * float(self.sigma.mean()))  # global ε: tile-independent
            good = np.isfinite(pred).all(0) & (wsum > 0)
            num += np.where(good, weight * np.nan_to_num(pred), 0.0)
            den += np.where(good, weight, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = (num / den).astype(np.float32)
        out[:, den == 0] = np.nan
        if observed is not None:
            out = np.where(np.isfinite(observed).all(0), observed, out)
        return out

    def fit_spectral(self) -> None:
        """Stage 2: ridge MS -> HS at the HS scale over every tile's HS dates."""
        mdd = self.mdd
        nf, nh = mdd.roles["fine_ms"].n_bands, mdd.roles["hs"].n_bands
        gram = np.zeros((nh, nf + 1, nf + 1))
        rhs = np.zeros((nh, nf + 1))
        for tile in self.tiles:
            self._check()
            window, crop = aligned_window(tile, self.radius, self.step, mdd.grid.width, mdd.grid.height)
            for d in mdd.roles["hs"].dates:
                fine = self.predict_fine(window, d)[:, crop[0], crop[1]]
                x = _block_mean(fine, self.fh).reshape(nf, -1).T
                y = _block_mean(mdd.read("hs", tile, [d])[0], self.fh).reshape(nh, -1).T
                ok = np.isfinite(x).all(1)
                xa = np.c_[x[ok], np.ones(ok.sum())]
                yv = y[ok]
                m = np.isfinite(yv)  # per HS band: bad bands are NaN everywhere
                gram += np.einsum("nb,ni,nj->bij", m.astype(np.float64), xa, xa)
                rhs += np.einsum("nb,ni,nb->bi", m.astype(np.float64), xa, np.nan_to_num(yv))
        counts = gram[:, nf, nf]
        fitted = counts >= 2 * (nf + 1)
        if not fitted.any():
            raise BaselineError(
                "The HS dates have too few valid pixels where the fine MS can be "
                "predicted to learn the MS -> HS mapping: check the HS and MS masks."
            )
        w = np.full((nh, nf + 1), np.nan)
        w[fitted] = _solve(gram[fitted], rhs[fitted], self.alpha)
        self.weights = w  # (HS band, MS band + intercept)
        self.log(
            f"MS -> HS ridge regression fitted on {int(counts.max())} HS-scale pixels; "
            f"{int((~fitted).sum())} HS band(s) without valid data are left nodata."
        )

    def predict(self, tile: tuple, dates: list[str]) -> dict:
        grid = self.mdd.grid
        window, crop = aligned_window(tile, self.radius, 1, grid.width, grid.height)
        out = {}
        for d in dates:
            fine = self.predict_fine(window, d)[:, crop[0], crop[1]]
            hs = np.einsum("hb,byx->hyx", self.weights[:, :-1], fine) + self.weights[:, -1][:, None, None]
            out[d] = hs.astype(np.float32)
        return out


class PerDateRegression:
    """The per-date regression: on a date with both an HS image and a fine MS image (within
    ``max_days_apart``), a ridge regression from that date's fine MS to each of its HS bands,
    learned at the HS pixel size (both block-averaged by the HS scale ratio) on that date's valid
    pixels only, applied to the fine MS at the fine scale. What the observations of one date say
    on their own: the yardstick a fusion must not fall below on its HS dates."""

    def __init__(self, mdd: MDD, tile_size: int, alpha: float = RIDGE_ALPHA, max_days_apart: float = MAX_DAYS_APART):
        for role in ("fine_ms", "hs"):
            if role not in mdd.roles:
                raise BaselineError(
                    f"The per-date regression needs fine MS and HS; the MDD has no {ROLE_LABELS[role]}: rebuild "
                    "it with both roles."
                )
        self.mdd, self.alpha = mdd, alpha
        self.fh = _factor(mdd, "hs")
        self.tiles = tile_windows(mdd.grid.width, mdd.grid.height, tile_size)
        self.max_days = check_max_days(max_days_apart)
        fine_dates, hs_dates = mdd.roles["fine_ms"].dates, mdd.roles["hs"].dates
        self.pairs = {}  # date -> (its fine MS date, its HS date)
        for h in hs_dates:
            f = fine_for(fine_dates, h, hs_dates, self.max_days)
            if f:
                self.pairs[h] = (f, h)
                if f != h:
                    self.pairs[f] = (f, h)
        self.weights = {}

    def dates(self) -> list:
        return sorted(self.pairs)

    def fit(self, date: str, check: Callable[[], None] = lambda: None) -> None:
        """The ridge maps of ``date`` (HS band, MS band + intercept), from every tile."""
        mdd, (fd, hd) = self.mdd, self.pairs[date]
        nf, nh = mdd.roles["fine_ms"].n_bands, mdd.roles["hs"].n_bands
        gram, rhs = np.zeros((nh, nf + 1, nf + 1)), np.zeros((nh, nf + 1))
        for tile in self.tiles:
            check()
            x = _block_mean(mdd.read("fine_ms", tile, [fd])[0], self.fh).reshape(nf, -1).T
            y = _block_mean(mdd.read("hs", tile, [hd])[0], self.fh).reshape(nh, -1).T
            ok = np.isfinite(x).all(1)
            xa, yv = np.c_[x[ok], np.ones(ok.sum())], y[ok]
            m = np.isfinite(yv).astype(np.float64)
            gram += np.einsum("nb,ni,nj->bij", m, xa, xa)
            rhs += np.einsum("nb,ni,nb->bi", m, xa, np.nan_to_num(yv))
        fitted = gram[:, nf, nf] >= 2 * (nf + 1)
        w = np.full((nh, nf + 1), np.nan)
        if fitted.any():
            w[fitted] = _solve(gram[fitted], rhs[fitted], self.alpha)
        self.weights[date] = w

    def predict(self, tile: tuple, dates: list[str]) -> dict:
        out = {}
        for d in dates:
            fine = self.mdd.read("fine_ms", tile, [self.pairs[d][0]])[0]
            w = self.weights[d]
            out[d] = (np.einsum("hb,byx->hyx", w[:, :-1], fine) + w[:, -1][:, None, None]).astype(np.float32)
        return out


# ---- driver ------------------------------------------------------------------------------


def run_baseline(
    mdd_path: str,
    method: str,
    output_folder: str,
    dates: str | list[str] | None = None,
    tile_size: int = 128,
    callbacks: Callbacks | None = None,
    max_days_apart: float = MAX_DAYS_APART,
) -> list:
    """Runs one baseline on an MDD; returns the written ``<method>_YYYY-MM-DD.tif`` paths.
    ``max_days_apart``: the two-stage baseline's pairing of fine MS with the dates (calendar rule)."""
    cb = callbacks_or_default(callbacks)
    log, progress = cb.log, cb.progress
    if method not in METHODS:
        raise BaselineError(f"Unknown baseline '{method}': choose {', '.join(METHODS)}.")
    mdd = MDD.open(mdd_path)
    if "hs" not in mdd.roles:
        raise BaselineError("The MDD has no HS role: both baselines need HS images.")
    try:
        targets = requested_dates(mdd, dates)
    except ValueError as e:
        raise BaselineError(str(e)) from None
    hs = mdd.roles["hs"]
    f = _factor(mdd, "hs")
    tile_size = max(int(tile_size), 16)
    model = None
    if method == "two_stage":
        model = TwoStage(mdd, tile_size, callbacks=cb, max_days_apart=max_days_apart)
        tile_size = -(-tile_size // model.step) * model.step
        model.tiles = tile_windows(mdd.grid.width, mdd.grid.height, tile_size)
        model.fit_spectral()
    elif method == "per_date_regression":
        tile_size = -(-tile_size // f) * f
        model = PerDateRegression(mdd, tile_size, max_days_apart=max_days_apart)
        if dates is None or (isinstance(dates, str) and not dates.strip()):
            targets = model.dates()
        outside = [d for d in targets if d not in model.pairs]
        if outside or not targets:
            raise BaselineError(
                f"The per-date regression predicts only the dates with both an HS and a fine MS image "
                f"(within {max_days_apart:g} days): {', '.join(model.dates()) or 'none in this MDD'}; "
                f"not {', '.join(outside) or 'these'}."
            )
        for d in targets:
            model.fit(d, lambda: cb.check(CANCELED))
    else:
        tile_size = -(-tile_size // f) * f
    tiles = tile_windows(mdd.grid.width, mdd.grid.height, tile_size)
    log(
        f"Baseline '{method}': {len(targets)} date(s), {hs.n_bands} HS bands, HS scale ratio {f}, "
        f"{len(tiles)} tile(s) of {tile_size} px."
    )
    os.makedirs(output_folder, exist_ok=True)
    wavelengths = hs.wavelengths or list(range(1, hs.n_bands + 1))
    with WriterGroup() as writers:
        for d in targets:
            writers.append(
                GeoTiffWriter(
                    output_path(output_folder, method, d),
                    mdd.grid,
                    hs.n_bands,
                    gdal.GDT_Float32,
                    NODATA,
                    [f"{w:g} nm" for w in wavelengths] if hs.wavelengths else None,
                    (spectral_band_metadata(hs.wavelengths, hs.fwhm, extra={"date": d}) if hs.wavelengths else None),
                    {"ACQUISITION_DATE": d, "STSFUSION_BASELINE": method, "STSFUSION_MDD": os.path.basename(mdd.path)},
                )
            )
        for i, tile in enumerate(tiles):
            cb.check(CANCELED)
            values = _interpolation_tile(mdd, tile, targets, f) if model is None else model.predict(tile, targets)
            for d, w in zip(targets, writers):
                v = values[d]
                w.write(np.where(np.isfinite(v), v, np.float32(NODATA)).astype(np.float32), tile)
            progress((i + 1) / len(tiles), f"tile {i + 1}/{len(tiles)}")
    return [w.path for w in writers]
