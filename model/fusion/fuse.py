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
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from osgeo import gdal

from ..core.callbacks import Callbacks, callbacks_or_default
from ..mdd.format import MDD, NODATA
from ..mdd.geotiff import GeoTiffWriter, WriterGroup, read_band_wavelengths, spectral_band_metadata
from .tiling import FusionError, TileReadCache, expand_window, requested_dates, tile_windows, valid_anywhere

__all__ = [
    "FusionError",
    "fuse_time_series",
    "fuse_with_predictor",
    "rgb_band_indices",
    "rgb_band_indices_of_file",
    "output_path",
]

gdal.UseExceptions()

OUTPUT_PATTERN = "fused_{date}.tif"
RGB_TARGETS_NM = (650.0, 560.0, 480.0)  # red, green, blue band centres for the default rendering


def rgb_band_indices(wavelengths: Sequence[float]) -> tuple:
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


def fuse_time_series(
    mdd_path: str,
    model_path: str,
    output_folder: str,
    dates: str | list[str] | None = None,
    tile_size: int = 256,
    device: str = "auto",
    callbacks: Callbacks | None = None,
    threads: int = 0,
) -> list:
    """Fuses every requested date of the MDD into ``output_folder/fused_YYYY-MM-DD.tif``.

    ``device``: a DEVICE text (``select_device``); ``threads``: CPU threads, 0 = torch's default.

    ``dates``: None (every date of the MDD), a list of ISO dates, or a comma/semicolon separated
    string. ``callbacks``: progress after each tile, cancel checked before each tile. Returns the
    written paths in date order. Raises ``FusionError``, ``MDDError`` or the predictor's
    ``ModelError`` (all ValueErrors with a message for the user), ``Canceled``.
    """
    from ..nn.device import configure_threads, describe_device
    from ..nn.predictor import load_predictor  # torch is imported only when fusion actually runs
    from .self_check import report_self_check

    tile_size = int(tile_size)
    if tile_size < 16:
        raise FusionError(f"Tile size {tile_size} is too small: use at least 16 pixels (default 256).")

    mdd = MDD.open(mdd_path)
    targets = requested_dates(mdd, dates)
    threads = configure_threads(threads)
    predictor = load_predictor(model_path, device=device)
    predictor.check_compatible(mdd)
    callbacks_or_default(callbacks).log(describe_device(predictor.device, threads, training=False))
    report_self_check(predictor.meta, callbacks_or_default(callbacks))
    return fuse_with_predictor(mdd, predictor, output_folder, targets, tile_size, callbacks, model_path=model_path)


def fuse_with_predictor(
    mdd: MDD,
    predictor: Any,
    output_folder: str,
    dates: list[str],
    tile_size: int = 256,
    callbacks: Callbacks | None = None,
    model_path: str | None = None,
) -> list:
    """The tiling loop, for any object with ``halo``, ``hs_wavelengths``, ``hs_fwhm`` and
    ``predict(mdd, window, date)`` (``fuse_time_series`` loads and checks the real model first)."""
    cb = callbacks_or_default(callbacks)
    log, progress = cb.log, cb.progress
    grid = mdd.grid
    wavelengths = [float(w) for w in predictor.hs_wavelengths]
    fwhm = getattr(predictor, "hs_fwhm", None)
    n_bands = len(wavelengths)
    halo = int(predictor.halo)
    tiles = tile_windows(grid.width, grid.height, tile_size)
    os.makedirs(output_folder, exist_ok=True)

    log(
        f"Fusing {len(dates)} date(s) on the {grid.width}x{grid.height} px grid, {n_bands} HS bands, "
        f"{len(tiles)} tile(s) of {tile_size} px with a {halo} px halo, device "
        f"{getattr(predictor, 'device', 'cpu')}."
    )
    descriptions = [f"{w:g} nm" for w in wavelengths]
    file_md = {"STSFUSION_MDD": os.path.basename(mdd.path)}
    if model_path:
        file_md["STSFUSION_MODEL"] = os.path.basename(model_path)

    # Every date's file stays open (temporary name) until the last tile: tiles are the outer loop,
    # so each tile's inputs are read once for all dates and one cancel aborts everything.
    with WriterGroup() as writers:
        for date in dates:
            band_md = spectral_band_metadata(wavelengths, fwhm, extra={"date": date})
            writers.append(
                GeoTiffWriter(
                    output_path(output_folder, date),
                    grid,
                    n_bands,
                    gdal.GDT_Float32,
                    NODATA,
                    descriptions,
                    band_md,
                    dict(file_md, ACQUISITION_DATE=date),
                )
            )
        total = len(tiles) * len(dates)
        done = 0
        started = time.monotonic()
        cache = TileReadCache(mdd)
        for i, tile in enumerate(tiles):
            cb.check("Fusion canceled: no GeoTIFF was written.")
            cache.clear()
            window, crop = expand_window(tile, halo, grid.width, grid.height)
            valid = valid_anywhere(mdd, tile)
            for date, writer in zip(dates, writers):
                values = np.asarray(predictor.predict(cache, window, date), dtype=np.float32)
                expected = (n_bands, window[3], window[2])
                if values.shape != expected:
                    raise FusionError(
                        f"The model returned an array of shape {values.shape} for window "
                        f"{window}, expected {expected}: the model file is inconsistent."
                    )
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
    wavelengths, _ = read_band_wavelengths(gdal.Open(path))
    if wavelengths is None:
        n = gdal.Open(path).RasterCount
        return (1, min(2, n), min(3, n))
    return rgb_band_indices(wavelengths)
