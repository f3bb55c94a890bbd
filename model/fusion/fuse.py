"""Tiled inference: a trained fusion model applied to a whole MDD, one fine HS GeoTIFF per date.

The grid is cut into square tiles of ``tile_size`` pixels (the last row and column of tiles reach
the edge). Each tile is predicted from a window grown by the predictor's ``halo`` on every side
(shifted inward at the grid's edge), then cropped back to the tile: every output pixel sees the
same context it would see in a one-tile run, so no seam shows at tile borders. Memory is bounded by
``(tile_size + 2 * halo)²`` pixels times the MDD's bands and dates, never by the raster size.

Dates are fused in passes (``DATES_PER_PASS``): within a pass the tiles are the outer loop, so each
tile's inputs are read once for all its dates. Outputs are written by window through
``GeoTiffWriter`` under temporary names (``*.tif.partial``) and renamed when their pass is complete:
a failure or a cancel removes the pass's temporary files, keeps the passes already complete, and
leaves any earlier file of the same name as it was. ``skip_existing`` resumes from there. On a GPU
out-of-memory error tiles are halved until they fit.

Where Dask is installed, ``fuse_time_series`` runs groups of dates as Dask tasks instead
(``distributed.py``: this process's threads, or a dask.distributed cluster): each task is
``fuse_date_group``, which opens the MDD and loads the model itself from a ``FusionJob`` (paths and
small parameters) and writes and renames its own dates' files, the same bytes as this loop's.
No QGIS import here.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from osgeo import gdal

from ..core.calendar import MAX_DAYS_APART, date_sources
from ..core.callbacks import Callbacks, callbacks_or_default
from ..core.memory import release_freed_memory
from ..mdd.format import MDD, NODATA
from ..mdd.geotiff import (
    COMPRESSIONS,
    GeoTiffWriter,
    WriterGroup,
    cap_gdal_cache,
    gdal_cache,
    read_band_wavelengths,
    remove_leftovers,
    spectral_band_metadata,
)
from ..nn.device import is_out_of_memory, release_gpu_memory
from .tiling import FusionError, TileReadCache, expand_window, requested_dates, tile_windows, valid_anywhere

__all__ = [
    "FusionError",
    "FusionJob",
    "OutputFormat",
    "fuse_date_group",
    "fuse_time_series",
    "int16_scale",
    "fuse_with_predictor",
    "prepare_outputs",
    "report_fused",
    "rgb_band_indices",
    "rgb_band_indices_of_file",
    "output_path",
]

gdal.UseExceptions()

OUTPUT_PATTERN = "fused_{date}.tif"
RGB_TARGETS_NM = (650.0, 560.0, 480.0)  # red, green, blue band centres for the default rendering
OUTPUT_TYPES = ("float32", "int16")
INT16_NODATA = -32768
INT16_MAX = 32767
# Dates fused together (tiles outer loop, so each tile's inputs are read once for all of them) and
# committed together: a killed run loses at most this many dates, a run over N dates reads the MDD
# ceil(N / DATES_PER_PASS) times.
DATES_PER_PASS = 8
MIN_TILE = 16  # px: the smallest tile a GPU out-of-memory error may shrink to
# GDAL's block cache while fusing: the MDD blocks around one tile and its halo. More holds more of
# the MDD on a large grid only, so the peak grew with the raster (2048² vs 512², 128 HS bands:
# +74 MB at 128 MB, +10 % of the peak at 64 MB; the time within run-to-run noise).
FUSE_GDAL_CACHE_MB = 64


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
    output_type: str = "float32",
    compression: str = "DEFLATE",
    skip_existing: bool = False,
    gdal_cache_mb: int = FUSE_GDAL_CACHE_MB,
    scheduler: str | None = None,
    subpixel_change: bool | None = None,
) -> list:
    """Fuses every requested date of the MDD into ``output_folder/fused_YYYY-MM-DD.tif``.

    ``device``: a DEVICE text (``select_device``); ``threads``: CPU threads, 0 = torch's default.
    ``output_type``/``compression``: see ``OutputFormat``; ``skip_existing``: keep the dates an
    earlier run completed (see ``fuse_with_predictor``); ``gdal_cache_mb``: GDAL's block cache while
    fusing (set explicitly, not GDAL's default of 5 % of the RAM, and restored afterwards).
    ``subpixel_change``: the dense MS change put below the dense pixel too (``network.SubpixelChange``;
    more accurate, 4-8 % more fusion time; None: ``predictor.SUBPIXEL_CHANGE``, on).

    ``dates``: None (every date of the MDD), a list of ISO dates, or a comma/semicolon separated
    string. ``callbacks``: progress after each tile, cancel checked before each tile. Returns the
    written paths in date order. Raises ``FusionError``, ``MDDError`` or the predictor's
    ``ModelError`` (all ValueErrors with a message for the user), ``Canceled``.

    ``scheduler`` (``distributed.resolve_scheduler``): None or "" = the environment variable
    DASK_SCHEDULER if set, else groups of dates as Dask tasks on this process's threads where Dask
    is installed (the loop below where it is not); "threads": Dask in this process;
    "none": the loop below; an address such as tcp://host:port: a dask.distributed cluster whose
    workers import this plugin and see the MDD, the model and ``output_folder`` at the same paths.
    ``threads`` is then PyTorch's threads (0: every core in this process, where the tasks' networks
    take turns; on a cluster each host's cores shared out among its worker threads).
    The outputs are the same bytes whichever way they are fused, given the same PyTorch threads
    per task (oneDNN's sums depend on the thread count, by one unit in the last place).
    """
    from ..nn.device import configure_threads, describe_device
    from ..nn.predictor import load_predictor  # torch is imported only when fusion actually runs
    from .distributed import (
        DASK_MISSING_NOTE,
        NO_DASK,
        dask_available,
        fuse_with_dask,
        resolve_scheduler,
    )
    from .self_check import report_self_check

    tile_size = int(tile_size)
    if tile_size < 16:
        raise FusionError(f"Tile size {tile_size} is too small: use at least 16 pixels (default 256).")

    fmt = OutputFormat(output_type, compression)
    mdd = MDD.open(mdd_path)
    targets = requested_dates(mdd, dates)
    mode = resolve_scheduler(scheduler)  # FusionError when Dask is asked for and missing
    if mode != NO_DASK:
        return fuse_with_dask(
            mdd,
            model_path,
            output_folder,
            targets,
            mode,
            tile_size=tile_size,
            device=device,
            callbacks=callbacks,
            threads=threads,
            output_format=fmt,
            skip_existing=skip_existing,
            gdal_cache_mb=gdal_cache_mb,
            subpixel_change=subpixel_change,
        )
    if not dask_available():
        callbacks_or_default(callbacks).log(DASK_MISSING_NOTE)
    threads = configure_threads(threads)
    predictor = load_predictor(model_path, device=device, subpixel_change=subpixel_change)
    mdd = predictor.prepare(mdd, callbacks_or_default(callbacks).log)  # checked, read co-registered
    callbacks_or_default(callbacks).log(describe_device(predictor.device, threads, training=False))
    report_self_check(predictor.meta, callbacks_or_default(callbacks))
    with gdal_cache(gdal_cache_mb):
        return fuse_with_predictor(
            mdd,
            predictor,
            output_folder,
            targets,
            tile_size,
            callbacks,
            model_path=model_path,
            output_format=fmt,
            skip_existing=skip_existing,
        )


@dataclass
class OutputFormat:
    """How the fused GeoTIFFs are stored.

    ``data_type``: "float32" (default; the HS's own units, nodata -9999) or "int16" (the value
    divided by ``scale``, rounded, nodata -32768, with the band scale written so that GDAL, QGIS
    and the EnMAP-Box read physical values; scale None: chosen from the model, see ``int16_scale``).
    ``compression``: DEFLATE or ZSTD. ``threads``: GDAL's compression threads (ALL_CPUS: every core).
    """

    data_type: str = "float32"
    compression: str = "DEFLATE"
    scale: float | None = None
    threads: str | int | None = "ALL_CPUS"

    def __post_init__(self) -> None:
        self.data_type = str(self.data_type).lower()
        self.compression = str(self.compression).upper()
        if self.data_type not in OUTPUT_TYPES:
            raise FusionError(f"Unknown output type '{self.data_type}': choose {' or '.join(OUTPUT_TYPES)}.")
        if self.compression not in COMPRESSIONS:
            raise FusionError(f"Unknown compression '{self.compression}': choose {' or '.join(COMPRESSIONS)}.")

    @property
    def gdal_type(self) -> int:
        return gdal.GDT_Int16 if self.data_type == "int16" else gdal.GDT_Float32

    @property
    def nodata(self) -> float:
        return INT16_NODATA if self.data_type == "int16" else NODATA


def int16_scale(typical_max: float) -> float:
    """The band scale for int16 output: the power of ten that stores values up to ``typical_max``
    within int16 at the finest step, e.g. 1e-4 for reflectance in 0-1 (EnMAP L2A's convention),
    1 for reflectance already x 10000, 0.01 for percent."""
    typical_max = abs(float(typical_max))
    if not np.isfinite(typical_max) or typical_max <= 0:
        return 1e-4
    return float(10.0 ** np.ceil(np.log10(typical_max / INT16_MAX)))


def _encode(values: np.ndarray, keep: np.ndarray, fmt: OutputFormat, scale: float) -> tuple[np.ndarray, int]:
    """(array to write, number of values clipped to the int16 range)."""
    if fmt.data_type == "float32":
        return np.where(keep, values, np.float32(NODATA)).astype(np.float32, copy=False), 0
    stored = np.rint(np.where(keep, values, 0.0) / scale)
    over = keep & (np.abs(stored) > INT16_MAX)
    stored = np.clip(stored, -INT16_MAX, INT16_MAX).astype(np.int16)
    stored[~keep] = INT16_NODATA
    return stored, int(over.sum())


def _file_fingerprint(path: str) -> str:
    """The first 16 hex digits of a file's SHA-256: which model (or MDD manifest) made an output."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _complete_output(path: str, grid: Any, n_bands: int, fmt: OutputFormat, file_md: dict) -> str | None:
    """None when ``path`` is a complete output of this very run's inputs and format (so
    SKIP_EXISTING may keep it); else why it must be fused again."""
    try:
        ds = gdal.Open(path)
    except RuntimeError:
        return "it cannot be read"
    if (ds.RasterXSize, ds.RasterYSize, ds.RasterCount) != (grid.width, grid.height, n_bands):
        return "its size or band count differs"
    if ds.GetRasterBand(1).DataType != fmt.gdal_type:
        return "its data type differs"
    md = ds.GetMetadata() or {}
    for key in ("STSFUSION_MODEL_SHA256", "STSFUSION_MDD_SHA256"):
        if key in file_md and md.get(key) != file_md[key]:
            return "another model or MDD made it"
    return None


@dataclass(frozen=True)
class FusionJob:
    """What every group of dates of one run shares, and all a Dask task carries: paths and small
    parameters, never arrays or a model (``fuse_date_group`` opens the MDD and loads the model
    itself). ``file_md`` and ``scale`` are settled once for the run (``prepare_outputs``), so every
    group writes the same metadata whichever process fuses it; ``device`` is a DEVICE text, chosen
    by the process that runs the group."""

    mdd_path: str
    model_path: str
    output_folder: str
    tile_size: int
    output_format: OutputFormat
    scale: float | None
    file_md: dict
    device: str = "cpu"
    gdal_cache_mb: int = FUSE_GDAL_CACHE_MB  # GDAL's block cache in the process that fuses a group
    subpixel_change: bool | None = None  # load_predictor's


def prepare_outputs(
    mdd: MDD,
    predictor: Any,
    output_folder: str,
    dates: list[str],
    callbacks: Callbacks | None = None,
    model_path: str | None = None,
    output_format: OutputFormat | None = None,
    skip_existing: bool = False,
) -> tuple[float | None, dict, list[str]]:
    """Before any date is fused: makes the folder, removes the partial files of a killed run,
    settles the file metadata and the int16 scale, and with ``skip_existing`` keeps the dates
    already complete. Returns (scale, file metadata, the dates still to fuse, in order)."""
    log = callbacks_or_default(callbacks).log
    fmt = output_format or OutputFormat()
    grid = mdd.grid
    n_bands = len(predictor.hs_wavelengths)
    os.makedirs(output_folder, exist_ok=True)
    for path in remove_leftovers(output_folder, OUTPUT_PATTERN.format(date="*")):
        log(f"Removed {os.path.basename(path)}, left by an earlier run that did not finish.")

    file_md = {"STSFUSION_MDD": os.path.basename(mdd.path)}
    if model_path:
        file_md["STSFUSION_MODEL"] = os.path.basename(model_path)
        file_md["STSFUSION_MODEL_SHA256"] = _file_fingerprint(model_path)
    if mdd.path and os.path.isfile(mdd.path):
        file_md["STSFUSION_MDD_SHA256"] = _file_fingerprint(mdd.path)
    scale = None
    if fmt.data_type == "int16":
        scale = fmt.scale or int16_scale(getattr(predictor, "hs_typical_max", 1.0))
        log(f"Output int16: value / {scale:g}, rounded (band scale {scale:g}, nodata {INT16_NODATA}).")

    todo = list(dates)
    if skip_existing:
        todo = []
        for date in dates:
            path = output_path(output_folder, date)
            why = _complete_output(path, grid, n_bands, fmt, file_md) if os.path.exists(path) else "absent"
            if why is None:
                log(f"{os.path.basename(path)} is complete: kept (SKIP_EXISTING).")
            else:
                todo.append(date)
                if why != "absent":
                    log(f"{os.path.basename(path)} is fused again: {why}.")
    return scale, file_md, todo


def fuse_with_predictor(
    mdd: MDD,
    predictor: Any,
    output_folder: str,
    dates: list[str],
    tile_size: int = 256,
    callbacks: Callbacks | None = None,
    model_path: str | None = None,
    output_format: OutputFormat | None = None,
    skip_existing: bool = False,
    dates_per_pass: int = DATES_PER_PASS,
) -> list:
    """The tiling loop, for any object with ``halo``, ``hs_wavelengths``, ``hs_fwhm`` and
    ``predict(mdd, window, date)`` (``fuse_time_series`` loads and checks the real model first).

    The dates are fused in passes of ``dates_per_pass``: within a pass the tiles are the outer loop,
    so each tile's inputs are read once for all the pass's dates (a prediction reads every date of
    the window); at the end of a pass its files are renamed into place together. A cancel, a
    failure or a killed process loses at most the pass under way; ``skip_existing`` then keeps the
    dates already complete (same grid, bands, type, model and MDD) instead of fusing them again.
    Returns the paths of every requested date, in date order (kept ones included)."""
    cb = callbacks_or_default(callbacks)
    log, progress = cb.log, cb.progress
    fmt = output_format or OutputFormat()
    grid = mdd.grid
    n_bands = len(predictor.hs_wavelengths)
    halo = int(predictor.halo)
    tiles = tile_windows(grid.width, grid.height, tile_size)
    scale, file_md, todo = prepare_outputs(mdd, predictor, output_folder, dates, cb, model_path, fmt, skip_existing)
    passes = [todo[i : i + max(1, int(dates_per_pass))] for i in range(0, len(todo), max(1, int(dates_per_pass)))]
    log(
        f"Fusing {len(todo)} date(s) on the {grid.width}x{grid.height} px grid, {n_bands} HS bands, "
        f"{len(tiles)} tile(s) of {tile_size} px with a {halo} px halo, device "
        f"{getattr(predictor, 'device', 'cpu')}, {fmt.data_type} {fmt.compression}"
        + (f", in {len(passes)} passes of up to {dates_per_pass} dates" if len(passes) > 1 else "")
        + "."
    )

    report_date_sources(mdd, todo, predictor, cb)
    total = max(1, len(tiles) * len(todo))
    done = clipped = 0
    started = time.monotonic()
    cache = TileReadCache(mdd)
    shrink = {"side": max(grid.width, grid.height)}  # lowered for good after a GPU out-of-memory error
    for group in passes:
        done, clipped = _fuse_pass(
            mdd,
            predictor,
            output_folder,
            group,
            tiles,
            cache,
            fmt,
            scale,
            file_md,
            _band_labels(predictor),
            cb,
            (done, total, clipped),
            shrink,
        )
        log(f"Written {', '.join(os.path.basename(output_path(output_folder, d)) for d in group)}.")
    report_fused(cb, grid, n_bands, len(todo), time.monotonic() - started, clipped, scale)
    if not todo:
        progress(1.0, "every date was already complete")
    return [output_path(output_folder, d) for d in dates]


def sources_of(mdd: MDD, date: str, predictor: Any) -> dict:
    """``calendar.date_sources`` of ``date`` in ``mdd``, with the model's pairing rule and the
    layers' valid pixels where the manifest records them (``RoleStack.valid_shares``)."""
    fine, dense, hs = (mdd.roles[r].dates if r in mdd.roles else [] for r in ("fine_ms", "dense_ms", "hs"))
    max_days = getattr(predictor, "max_days", MAX_DAYS_APART)
    valid = {role: stack.valid_shares() for role, stack in mdd.roles.items()}
    return date_sources(fine, dense, hs, date, max_days, valid)


def report_date_sources(mdd: MDD, dates: Sequence[str], predictor: Any, callbacks: Callbacks) -> None:
    """A log line per date saying what its fused image rests on (as its file's metadata says), and a
    warning for each date with nothing observed near it (``calendar.date_sources``)."""
    for date in dates:
        s = sources_of(mdd, date, predictor)
        callbacks.log(f"{date}: fine MS {s['fine_ms']}; dense MS {s['dense_ms']}; HS {s['hs']}.")
        if s["warning"]:
            callbacks.warn(s["warning"])


def sources_metadata(mdd: MDD, date: str, predictor: Any) -> dict:
    """The fused file's metadata items saying what its image rests on."""
    s = sources_of(mdd, date, predictor)
    return {"STSFUSION_FINE_MS": s["fine_ms"], "STSFUSION_DENSE_MS": s["dense_ms"], "STSFUSION_HS": s["hs"]}


def report_fused(
    callbacks: Callbacks, grid: Any, n_bands: int, n_dates: int, elapsed: float, clipped: int, scale: float | None
) -> None:
    """The closing log line (dates, time, pixel-bands per second) and the int16 clipping warning."""
    if n_dates:
        rate = grid.width * grid.height * n_bands * n_dates / max(elapsed, 1e-9)
        callbacks.log(f"Fused {n_dates} date(s) in {elapsed:.1f} s ({rate:,.0f} pixel-bands per second).")
    if clipped:
        callbacks.warn(
            f"{clipped:,} fused values lay outside the int16 range at scale {scale:g} and were clipped: "
            "use OUTPUT_TYPE float32, or a coarser scale."
        )


def _band_labels(predictor: Any) -> tuple:
    """(wavelengths, fwhm, band descriptions) of the model's HS bands."""
    wavelengths = [float(w) for w in predictor.hs_wavelengths]
    return wavelengths, getattr(predictor, "hs_fwhm", None), [f"{w:g} nm" for w in wavelengths]


def fuse_date_group(job: FusionJob, dates: list[str], callbacks: Callbacks | None = None) -> dict:
    """Fuses ``dates`` completely (every tile) from paths alone, and renames their files into place:
    one Dask task (``distributed.py``). Opens the MDD and loads the model itself, on ``job.device``,
    with PyTorch's threads as the caller set them. The same pass as ``fuse_with_predictor``'s, so
    the same bytes. ``callbacks``: progress after each tile of the group (fraction of the group),
    cancel checked before the model is loaded and before each tile (``Canceled``: no file of the
    group is left, partial or not). Returns {"dates", "clipped", "seconds", "device"}."""
    from ..nn.device import describe_device
    from ..nn.predictor import load_predictor

    cb = callbacks_or_default(callbacks)
    cb.check("Fusion canceled: the dates under way were not written.")
    cap_gdal_cache(job.gdal_cache_mb)  # a cluster's worker: bounded as this process is
    started = time.monotonic()
    predictor = load_predictor(job.model_path, device=job.device, subpixel_change=job.subpixel_change)
    mdd = predictor.prepare(MDD.open(job.mdd_path))
    grid = mdd.grid
    tiles = tile_windows(grid.width, grid.height, job.tile_size)
    shrink = {"side": max(grid.width, grid.height)}
    _, clipped = _fuse_pass(
        mdd,
        predictor,
        job.output_folder,
        list(dates),
        tiles,
        TileReadCache(mdd),
        job.output_format,
        job.scale,
        job.file_md,
        _band_labels(predictor),
        cb,
        (0, max(1, len(tiles) * len(dates)), 0),
        shrink,
    )
    return {
        "dates": list(dates),
        "clipped": clipped,
        "seconds": time.monotonic() - started,
        "device": describe_device(predictor.device, _torch_threads(), training=False),
    }


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _predict_tile(predictor, cache, tile, date, grid, n_bands, shrink, cb) -> np.ndarray:
    """The prediction (bands, rows, cols) for ``tile`` on ``date``, from a window grown by the halo.

    On a GPU out-of-memory error the tile is cut into quarters (and every later tile too) until it
    fits; the output is the same, since every pixel sees the same context whatever the tiling."""
    side = shrink["side"]
    x0, y0, w, h = tile
    if w > side or h > side:
        out = np.empty((n_bands, h, w), np.float32)
        for sx, sy, sw, sh in tile_windows(w, h, side):
            sub = (x0 + sx, y0 + sy, sw, sh)
            out[:, sy : sy + sh, sx : sx + sw] = _predict_tile(predictor, cache, sub, date, grid, n_bands, shrink, cb)
        return out
    halo_for = getattr(predictor, "halo_for", None)  # less context for a model without the detail step
    halo = int(halo_for(date)) if halo_for is not None else int(predictor.halo)
    window, crop = expand_window(tile, halo, grid.width, grid.height)
    try:
        values = np.asarray(predictor.predict(cache, window, date, crop=crop), dtype=np.float32)
    except Exception as e:
        if not is_out_of_memory(e):
            raise
        device = str(getattr(predictor, "device", "cpu"))
        if max(w, h) <= MIN_TILE:
            raise FusionError(
                f"{device} ran out of memory even on a {w}x{h} px tile: fuse on the CPU (DEVICE=cpu), or "
                "free the GPU of other work."
            ) from None
        release_gpu_memory(device)
        shrink["side"] = max(MIN_TILE, (max(w, h) + 1) // 2)
        cb.log(f"Out of memory on {device} for a {w}x{h} px tile: tiles of {shrink['side']} px from now on.")
        return _predict_tile(predictor, cache, tile, date, grid, n_bands, shrink, cb)
    expected = (n_bands, h, w)
    if values.shape != expected:
        raise FusionError(
            f"The model returned an array of shape {values.shape} for tile "
            f"{tile}, expected {expected}: the model file is inconsistent."
        )
    return values


def _fuse_pass(mdd, predictor, folder, group, tiles, cache, fmt, scale, file_md, bands, cb, counters, shrink) -> tuple:
    """One pass: every tile for the dates of ``group``, their files committed together at the end."""
    wavelengths, fwhm, descriptions = bands
    done, total, clipped = counters
    n_bands, grid = len(wavelengths), mdd.grid
    with WriterGroup() as writers:
        for date in group:
            band_md = spectral_band_metadata(wavelengths, fwhm, extra={"date": date})
            writers.append(
                GeoTiffWriter(
                    output_path(folder, date),
                    grid,
                    n_bands,
                    fmt.gdal_type,
                    fmt.nodata,
                    descriptions,
                    band_md,
                    dict(file_md, ACQUISITION_DATE=date, **sources_metadata(mdd, date, predictor)),
                    scale=scale,
                    offset=0.0 if scale is not None else None,
                    compression=fmt.compression,
                    threads=fmt.threads,
                    predictor=2 if fmt.data_type == "int16" else None,
                )
            )
        with mdd.reading(), BackgroundWrites(len(group)) as background:
            for i, tile in enumerate(tiles):
                cb.check("Fusion canceled: the dates under way were not written.")
                cache.clear()
                release_freed_memory()  # the last tile's temporaries: peak memory stays that of one tile
                valid = valid_anywhere(mdd, tile)
                for date, writer in zip(group, writers):
                    values = _predict_tile(predictor, cache, tile, date, grid, n_bands, shrink, cb)
                    keep = valid[None] & np.isfinite(values)
                    stored, over = _encode(values, keep, fmt, scale)
                    background.write(writer, stored, tile)  # compressed while the next tile is predicted
                    clipped += over
                    done += 1
                cb.progress(done / total, f"tile {i + 1}/{len(tiles)} done")
        cache.clear()
    return done, clipped


class BackgroundWrites:
    """One thread that writes the tiles (and, tile by tile, has GDAL compress them) while the main
    thread predicts the next tile: the CPU left idle by the single-threaded parts of a prediction
    (reading, PCA) compresses the output meanwhile. At most ``2 * per_tile`` tiles wait, so memory
    stays bounded by the tile; an error in the thread is raised in the caller. Leaving the block
    waits for every write (a GDAL dataset is never used by two threads at once)."""

    def __init__(self, per_tile: int) -> None:
        self._queue = queue.Queue(maxsize=max(1, int(per_tile)))
        self._error = None
        self._thread = threading.Thread(target=self._run, name="stsfusion-writes", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is None:  # after an error, drain without writing
                writer, values, tile = item
                try:
                    writer.write(values, tile)
                    writer.flush()
                except BaseException as e:  # raised again in the caller's thread
                    self._error = e

    def write(self, writer: GeoTiffWriter, values: np.ndarray, tile: tuple) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put((writer, values, tile))

    def __enter__(self) -> BackgroundWrites:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._queue.put(None)
        self._thread.join()
        if exc_type is None and self._error is not None:
            raise self._error
        return False


def rgb_band_indices_of_file(path: str) -> tuple:
    """``rgb_band_indices`` from a GeoTIFF's wavelength band metadata (1, 2, 3 when it has none)."""
    wavelengths, _ = read_band_wavelengths(gdal.Open(path))
    if wavelengths is None:
        n = gdal.Open(path).RasterCount
        return (1, min(2, n), min(3, n))
    return rgb_band_indices(wavelengths)
