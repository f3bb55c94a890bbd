"""Tiled inference: a trained fusion model applied to a whole MDD, one fine HS GeoTIFF per date.

The grid is cut into square tiles of ``tile_size`` pixels (the last row and column of tiles reach
the edge). Each tile is predicted from a window grown by the predictor's ``halo`` on every side
(clipped to the grid), then cropped back to the tile: every output pixel sees the same context it
would see in a one-tile run, so no seam shows at tile borders. Memory is bounded by
``(tile_size + 2 * halo)²`` pixels times the MDD's bands and dates, never by the raster size.

Outputs are written by window through ``GeoTiffWriter`` under temporary names and renamed only when
every date is complete: a failure or a cancel removes all temporary files and leaves the output
folder exactly as it was (including an earlier run's files of the same names).
No QGIS import here.
"""

from __future__ import annotations

import os
import re
import time

import numpy as np
from osgeo import gdal

from .geotiff import GeoTiffWriter, WriterGroup, spectral_band_metadata
from .mdd import MDD, NODATA

gdal.UseExceptions()

OUTPUT_PATTERN = "fused_{date}.tif"
RGB_TARGETS_NM = (650.0, 560.0, 480.0)  # red, green, blue band centres for the default rendering
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class FusionError(ValueError):
    """Fusion cannot run as asked; the message says what is wrong and how to fix it."""


class FusionCanceled(Exception):
    """Raised when ``is_canceled()`` turned true; no output file is left behind."""


def tile_windows(width: int, height: int, tile_size: int) -> list:
    """Tiles (xoff, yoff, xsize, ysize) covering the grid row by row; the last ones reach the edge."""
    if tile_size < 1:
        raise FusionError(f"Tile size must be at least 1 pixel, got {tile_size}.")
    return [(x, y, min(tile_size, width - x), min(tile_size, height - y))
            for y in range(0, height, tile_size) for x in range(0, width, tile_size)]


def expand_window(window, halo: int, width: int, height: int):
    """The window grown by ``halo`` pixels each side, clipped to the grid.

    Returns (expanded window, (row slice, col slice)) where the slices cut the original window
    back out of an array covering the expanded one.
    """
    xoff, yoff, xs, ys = window
    x0, y0 = max(0, xoff - halo), max(0, yoff - halo)
    x1, y1 = min(width, xoff + xs + halo), min(height, yoff + ys + halo)
    crop = (slice(yoff - y0, yoff - y0 + ys), slice(xoff - x0, xoff - x0 + xs))
    return (x0, y0, x1 - x0, y1 - y0), crop


def parse_dates(text) -> list | None:
    """'2022-05-01, 2022-06-01;2022-07-01' -> ['2022-05-01', ...]; empty or None -> None (all)."""
    if text is None:
        return None
    if isinstance(text, (list, tuple)):
        items = [str(t).strip() for t in text]
    else:
        items = [t.strip() for t in re.split(r"[,;\s]+", str(text))]
    items = [t for t in items if t]
    if not items:
        return None
    bad = [t for t in items if not _DATE_RE.match(t)]
    if bad:
        raise FusionError(f"Dates must be written YYYY-MM-DD, separated by commas or semicolons; "
                          f"cannot read {', '.join(repr(b) for b in bad)}.")
    return list(dict.fromkeys(items))  # keep order, drop repeats


def select_dates(mdd: MDD, dates) -> list:
    """The requested dates (all of the MDD's when None), checked against the MDD, ascending."""
    available = mdd.dates
    if dates is None:
        return list(available)
    unknown = [d for d in dates if d not in available]
    if unknown:
        raise FusionError(f"The MDD has no date {', '.join(unknown)}; its dates are "
                          f"{', '.join(available)}. Leave DATES empty to fuse every date.")
    return sorted(dates)


def valid_anywhere(mdd: MDD, window) -> np.ndarray:
    """bool (row, col): True where at least one role is valid on at least one date."""
    out = np.zeros((window[3], window[2]), dtype=bool)
    for role in mdd.roles:
        out |= mdd.read_mask(role, window).any(axis=0)
    return out


class TileReadCache:
    """The MDD seen through a memo of its windowed reads, emptied at each tile.

    A prediction for one date reads the neighbouring dates too (reference HS dates, the fine MS
    date it starts from), so the dates of one tile read the same windows again and again; the memo
    reads each once. It holds at most one window of the MDD: memory stays bounded by the tile.
    Callers get copies, so a caller that edits its array in place cannot spoil the next read.
    """

    def __init__(self, mdd: MDD):
        self._mdd = mdd
        self._memo = {}

    def __getattr__(self, name):  # grid, roles, dates, path, scale_ratio, ...
        return getattr(self._mdd, name)

    def clear(self):
        self._memo.clear()

    def _cached(self, kind, role, window, dates):
        key = (kind, role, None if window is None else tuple(int(v) for v in window),
               None if dates is None else tuple(dates))
        if key not in self._memo:
            self._memo[key] = getattr(self._mdd, kind)(role, window=window, dates=dates)
        return self._memo[key].copy()

    def read(self, role, window=None, dates=None):
        return self._cached("read", role, window, dates)

    def read_mask(self, role, window=None, dates=None):
        return self._cached("read_mask", role, window, dates)


def rgb_band_indices(wavelengths) -> tuple:
    """1-based (red, green, blue) band numbers for a natural-colour rendering.

    The bands nearest 650/560/480 nm; where the bands do not span the visible (all three would be
    the same band), three bands spread over the range instead, long to short wavelengths.
    """
    wl = np.asarray(wavelengths, dtype=float)
    n = len(wl)
    if n < 3:
        return (1, min(2, n), 1) if n == 2 else (1, 1, 1)
    picks = [int(np.argmin(np.abs(wl - t))) for t in RGB_TARGETS_NM]
    if len(set(picks)) < 3:
        order = np.argsort(wl)[::-1]  # longest wavelength first: red, green, blue order
        picks = [int(order[i]) for i in (0, n // 2, n - 1)]
    return tuple(p + 1 for p in picks)


def output_path(folder: str, date: str) -> str:
    return os.path.join(folder, OUTPUT_PATTERN.format(date=date))


def fuse_time_series(mdd_path, model_path, output_folder, dates=None, tile_size=256, device="auto",
                     progress=None, is_canceled=None, log=None) -> list:
    """Fuses every requested date of the MDD into ``output_folder/fused_YYYY-MM-DD.tif``.

    ``dates``: None (every date of the MDD), a list of ISO dates, or a comma/semicolon separated
    string. ``progress(fraction, message)`` is called after each tile, ``is_canceled()`` before
    each tile. Returns the written paths in date order. Raises ``FusionError``, ``MDDError`` or the
    predictor's ``ModelError`` (all ValueErrors with a message for the user), ``FusionCanceled``.
    """
    from .predictor import load_predictor  # torch is imported only when fusion actually runs

    log = log or (lambda message: None)
    progress = progress or (lambda fraction, message: None)
    is_canceled = is_canceled or (lambda: False)
    tile_size = int(tile_size)
    if tile_size < 16:
        raise FusionError(f"Tile size {tile_size} is too small: use at least 16 pixels (default 256).")

    mdd = MDD.open(mdd_path)
    targets = select_dates(mdd, parse_dates(dates))
    predictor = load_predictor(model_path, device=device)
    predictor.check_compatible(mdd)
    return fuse_with_predictor(mdd, predictor, output_folder, targets, tile_size, progress,
                               is_canceled, log, model_path=model_path)


def fuse_with_predictor(mdd: MDD, predictor, output_folder, dates, tile_size=256, progress=None,
                        is_canceled=None, log=None, model_path=None) -> list:
    """The tiling loop, for any object with ``halo``, ``hs_wavelengths``, ``hs_fwhm`` and
    ``predict(mdd, window, date)`` (``fuse_time_series`` loads and checks the real model first)."""
    log = log or (lambda message: None)
    progress = progress or (lambda fraction, message: None)
    is_canceled = is_canceled or (lambda: False)
    grid = mdd.grid
    wavelengths = [float(w) for w in predictor.hs_wavelengths]
    fwhm = getattr(predictor, "hs_fwhm", None)
    n_bands = len(wavelengths)
    halo = int(predictor.halo)
    tiles = tile_windows(grid.width, grid.height, tile_size)
    os.makedirs(output_folder, exist_ok=True)

    log(f"Fusing {len(dates)} date(s) on the {grid.width}x{grid.height} px grid, {n_bands} HS bands, "
        f"{len(tiles)} tile(s) of {tile_size} px with a {halo} px halo, device "
        f"{getattr(predictor, 'device', 'cpu')}.")
    descriptions = [f"{w:g} nm" for w in wavelengths]
    file_md = {"STSFUSION_MDD": os.path.basename(mdd.path)}
    if model_path:
        file_md["STSFUSION_MODEL"] = os.path.basename(model_path)

    # Every date's file stays open (temporary name) until the last tile: tiles are the outer loop,
    # so each tile's inputs are read once for all dates and one cancel aborts everything.
    with WriterGroup() as writers:
        for date in dates:
            band_md = spectral_band_metadata(wavelengths, fwhm, extra={"date": date})
            writers.append(GeoTiffWriter(output_path(output_folder, date), grid, n_bands,
                                         gdal.GDT_Float32, NODATA, descriptions, band_md,
                                         dict(file_md, ACQUISITION_DATE=date)))
        total = len(tiles) * len(dates)
        done = 0
        started = time.monotonic()
        cache = TileReadCache(mdd)
        for i, tile in enumerate(tiles):
            if is_canceled():
                raise FusionCanceled("Fusion canceled: no GeoTIFF was written.")
            cache.clear()
            window, crop = expand_window(tile, halo, grid.width, grid.height)
            valid = valid_anywhere(mdd, tile)
            for date, writer in zip(dates, writers):
                values = np.asarray(predictor.predict(cache, window, date), dtype=np.float32)
                expected = (n_bands, window[3], window[2])
                if values.shape != expected:
                    raise FusionError(f"The model returned an array of shape {values.shape} for window "
                                      f"{window}, expected {expected}: the model file is inconsistent.")
                values = values[:, crop[0], crop[1]]
                keep = valid[None] & np.isfinite(values)
                writer.write(np.where(keep, values, np.float32(NODATA)), tile)
                done += 1
            progress(done / total, f"tile {i + 1}/{len(tiles)} done")
        cache.clear()
    elapsed = time.monotonic() - started
    rate = grid.width * grid.height * n_bands * len(dates) / max(elapsed, 1e-9)
    log(f"Fused {len(dates)} date(s) in {elapsed:.1f} s ({rate:,.0f} pixel-bands per second).")
    return [w.path for w in writers]


def rgb_band_indices_of_file(path: str) -> tuple:
    """``rgb_band_indices`` from a GeoTIFF's wavelength band metadata (1, 2, 3 when it has none)."""
    from .geotiff import read_band_wavelengths

    wavelengths, _ = read_band_wavelengths(gdal.Open(path))
    if wavelengths is None:
        n = gdal.Open(path).RasterCount
        return (1, min(2, n), min(3, n))
    return rgb_band_indices(wavelengths)
