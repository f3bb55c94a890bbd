"""GeoTIFF writing and band-metadata reading shared by every module that touches raster files.

Writers create the file under a temporary name in the destination folder (``<name>.partial``,
never ending in ``.tif``, so no tool mistakes it for a result) and rename it when complete
(``commit``), so a failure or a cancel never leaves a half-written GeoTIFF behind. A process that is
killed cannot clean up after itself: ``remove_leftovers`` lets the next run do it.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import re
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from osgeo import gdal

from ..core.grid import Grid

gdal.UseExceptions()

CREATION_OPTIONS = [
    "TILED=YES",
    "BLOCKXSIZE=256",
    "BLOCKYSIZE=256",
    "COMPRESS=DEFLATE",
    "BIGTIFF=IF_SAFER",
    "INTERLEAVE=BAND",
]
GDAL_CACHE_MB = 128  # GDAL's block cache in our steps: bounded, not GDAL's default of 5 % of the RAM
PARTIAL_SUFFIX = ".partial"
LEGACY_PARTIAL_SUFFIX = ".part.tif"  # what version 0.1 and 0.2 left behind when killed
COMPRESSIONS = ("DEFLATE", "ZSTD")
_UNIT_TO_NM = {
    "nm": 1.0,
    "nanometers": 1.0,
    "nanometer": 1.0,
    "um": 1000.0,
    "µm": 1000.0,
    "micrometers": 1000.0,
    "micrometer": 1000.0,
    "microns": 1000.0,
    "micron": 1000.0,
    "mm": 1e6,
    "millimeters": 1e6,
}


class GeoTiffWriter:
    """A tiled, compressed GeoTIFF written by window under ``<path>.partial``.

    ``band_metadata``: one dict per band (e.g. wavelength, wavelength_units, fwhm);
    ``descriptions``: one string per band; ``scale``/``offset``: the band scaling that turns
    stored values into physical ones (e.g. int16 reflectance x 1e4 with scale 0.0001).
    ``compression``: DEFLATE (default) or ZSTD; ``threads``: GDAL's compression threads (a number or
    ALL_CPUS; None: one, GDAL's default); ``predictor``, ``block``: see ``creation_options``. Use as a context manager: an exception aborts.
    """

    def __init__(
        self,
        path: str,
        grid: Grid,
        n_bands: int,
        dtype: int = gdal.GDT_Float32,
        nodata: float | None = None,
        descriptions: Sequence[str] | None = None,
        band_metadata: Sequence[dict | None] | None = None,
        metadata: dict | None = None,
        scale: float | None = None,
        offset: float | None = None,
        compression: str = "DEFLATE",
        threads: str | int | None = None,
        predictor: int | None = None,
        block: int = 256,
        level: int | None = None,
    ) -> None:
        self.path = path
        self._tmp = partial_path(path)
        options = creation_options(dtype, compression, threads, predictor, block, level)
        self._ds = gdal.GetDriverByName("GTiff").Create(self._tmp, grid.width, grid.height, n_bands, dtype, options)
        self._ds.SetGeoTransform(tuple(grid.geotransform))
        self._ds.SetProjection(grid.crs_wkt)
        for b in range(n_bands):
            band = self._ds.GetRasterBand(b + 1)
            if nodata is not None:
                band.SetNoDataValue(float(nodata))
            if descriptions:
                band.SetDescription(descriptions[b])
            if band_metadata and band_metadata[b]:
                band.SetMetadata({k: str(v) for k, v in band_metadata[b].items()})
            if scale is not None:
                band.SetScale(float(scale))
            if offset is not None:
                band.SetOffset(float(offset))
        if metadata:
            self._ds.SetMetadata({k: str(v) for k, v in metadata.items()})

    def write(self, values: np.ndarray, window: tuple | None = None, first_band: int = 0) -> None:
        """values (band, row, col) written at window (xoff, yoff, ...) from band ``first_band``."""
        xoff, yoff = (0, 0) if window is None else (int(window[0]), int(window[1]))
        for b in range(values.shape[0]):
            self._ds.GetRasterBand(first_band + b + 1).WriteArray(values[b], xoff, yoff)

    def flush(self) -> None:
        """Hands the blocks written so far to GDAL's compression (its threads) and the file."""
        self._ds.FlushCache()

    def commit(self) -> None:
        self._ds.FlushCache()
        self._ds = None
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self._ds = None
        if os.path.exists(self._tmp):
            os.remove(self._tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.abort()
        return False


def creation_options(
    dtype: int,
    compression: str = "DEFLATE",
    threads: str | int | None = None,
    predictor: int | None = None,
    block: int = 256,
    level: int | None = None,
) -> list:
    """GTiff creation options: ``block`` px tiles (a multiple of 16), band interleave, the
    compression with a predictor (None: 3, floating point, for float data, none for integers; 2
    suits int16 reflectance) at ``level`` (ZSTD_LEVEL or ZLEVEL; None: GDAL's default, 9 and 6)
    and, optionally, GDAL's own multi-threaded compression (the bytes written are the same
    whatever the thread count)."""
    compression = str(compression).upper()
    if compression not in COMPRESSIONS:
        raise ValueError(f"Unknown compression '{compression}': choose {' or '.join(COMPRESSIONS)}.")
    if int(block) % 16:
        raise ValueError(f"GeoTIFF tiles are multiples of 16 pixels, not {block}.")
    options = [o for o in CREATION_OPTIONS if not o.startswith(("COMPRESS=", "BLOCKXSIZE=", "BLOCKYSIZE="))]
    options += [f"BLOCKXSIZE={int(block)}", f"BLOCKYSIZE={int(block)}", f"COMPRESS={compression}"]
    if predictor is None and dtype in (gdal.GDT_Float32, gdal.GDT_Float64):
        predictor = 3
    if predictor:
        options.append(f"PREDICTOR={int(predictor)}")
    if level is not None:
        options.append(f"{'ZSTD_LEVEL' if compression == 'ZSTD' else 'ZLEVEL'}={int(level)}")
    if threads is not None and str(threads) not in ("", "1"):
        options.append(f"NUM_THREADS={threads}")
    return options


@contextlib.contextmanager
def gdal_cache(megabytes: int = GDAL_CACHE_MB) -> Iterator[None]:
    """GDAL's block cache set to ``megabytes`` for the duration, then restored (QGIS desktop runs
    in the same process and keeps its own setting)."""
    previous = gdal.GetCacheMax()
    gdal.SetCacheMax(int(megabytes) * 2**20)
    try:
        yield
    finally:
        gdal.SetCacheMax(previous)


def cap_gdal_cache(megabytes: int) -> None:
    """GDAL's block cache in this process at most ``megabytes``, never raised: for a Dask worker's
    tasks, whose process would otherwise cache up to GDAL's default of 5 % of the machine's RAM (the
    peak of a worker fusing 2048² px: 1717 MiB against 686 MiB at 512²). In QGIS's own process the
    step has set it already (``gdal_cache``), so this changes nothing there."""
    if gdal.GetCacheMax() > int(megabytes) * 2**20:
        gdal.SetCacheMax(int(megabytes) * 2**20)


def with_gdal_cache(megabytes: int = GDAL_CACHE_MB) -> Callable:
    """A decorator: the function runs with GDAL's block cache at ``megabytes`` (``gdal_cache``), so
    a step's memory does not grow with the raster through GDAL's default cache of 5 % of the RAM."""

    def decorate(func: Callable) -> Callable:
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            with gdal_cache(megabytes):
                return func(*args, **kwargs)

        return wrapper

    return decorate


@functools.cache
def fast_compression() -> str:
    """ZSTD where this GDAL's GTiff driver has it (GDAL 2.3 and later builds with libzstd: it reads
    about twice as fast as DEFLATE at the same size), else DEFLATE: for the MDD's working stacks,
    which every step reads again and again."""
    options = gdal.GetDriverByName("GTiff").GetMetadataItem("DMD_CREATIONOPTIONLIST") or ""
    return "ZSTD" if "<Value>ZSTD</Value>" in options else "DEFLATE"


def partial_path(path: str) -> str:
    """Where ``GeoTiffWriter`` writes ``path`` until it is complete."""
    return path + PARTIAL_SUFFIX


def remove_leftovers(folder: str, pattern: str = "*.tif") -> list:
    """Removes the partial files a killed run left in ``folder`` for outputs matching ``pattern``
    (``<name>.partial`` and version 0.1's ``<name>.part.tif``); returns the removed paths."""
    removed = []
    for suffix in (PARTIAL_SUFFIX, LEGACY_PARTIAL_SUFFIX):
        for path in sorted(glob.glob(os.path.join(glob.escape(folder), pattern + suffix))):
            try:
                os.remove(path)
                removed.append(path)
            except OSError:  # another process may hold it (Windows): leave it, it is never read
                pass
    return removed


class WriterGroup(list):
    """Writers whose files land together or not at all (e.g. one GeoTIFF per date).

    ``with WriterGroup() as writers: writers.append(...)``: on a clean exit every writer is
    committed (renamed into place); an exception, a cancel included, aborts every writer, so no
    partial series is left behind.
    """

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                for w in self:
                    w.commit()
                return False
        except BaseException:
            self._abort_all()
            raise
        self._abort_all()
        return False

    def _abort_all(self):
        for w in self:
            w.abort()


def write_text_atomic(path: str, text: str) -> None:
    """Writes a text file under ``<path>.part`` and renames it: readers never see half a file."""
    tmp = path + ".part"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def spectral_band_metadata(
    wavelengths: Sequence[float], fwhm: Sequence[float] | None = None, extra: dict | None = None
) -> list:
    """Band metadata in the convention QGIS, GDAL and the EnMAP-Box read: wavelength in nm."""
    out = []
    for b, wl in enumerate(wavelengths):
        md = {"wavelength": f"{float(wl):g}", "wavelength_units": "nm"}
        if fwhm is not None:
            md["fwhm"] = f"{float(fwhm[b]):g}"
        if extra:
            md.update(extra)
        out.append(md)
    return out


def write_geotiff(
    path: str,
    values: np.ndarray,
    grid: Grid,
    nodata: float | None = None,
    descriptions: Sequence[str] | None = None,
    band_metadata: Sequence[dict | None] | None = None,
    metadata: dict | None = None,
    scale: float | None = None,
    offset: float | None = None,
) -> None:
    """Writes a whole (band, row, col) array at once (small rasters: samples, tests, reports)."""
    dtype = {
        np.dtype(np.uint8): gdal.GDT_Byte,
        np.dtype(np.int16): gdal.GDT_Int16,
        np.dtype(np.float64): gdal.GDT_Float64,
    }.get(np.asarray(values).dtype, gdal.GDT_Float32)
    with GeoTiffWriter(
        path, grid, values.shape[0], dtype, nodata, descriptions, band_metadata, metadata, scale, offset
    ) as w:
        w.write(values)


def _to_nm(value: float, units: str | None) -> float:
    factor = _UNIT_TO_NM.get((units or "").strip().lower())
    if factor is None:
        # No or unknown units: guess from magnitude (micrometres are < 30, nanometres > 100).
        factor = 1000.0 if value < 30 else 1.0
    return value * factor


def read_band_wavelengths(ds: gdal.Dataset) -> tuple[list[float] | None, list[float] | None]:
    """Band centre wavelengths and FWHM in nm from GDAL band metadata or an ENVI header.

    Returns (wavelengths, fwhm); each a list of floats, or None when the raster does not say.
    """
    n = ds.RasterCount
    wl, fw = [], []
    for b in range(1, n + 1):
        md = {k.lower(): v for k, v in (ds.GetRasterBand(b).GetMetadata() or {}).items()}
        units = md.get("wavelength_units") or md.get("units")
        if "wavelength" in md:
            try:
                wl.append(_to_nm(float(md["wavelength"]), units))
                fw.append(_to_nm(float(md["fwhm"]), units) if "fwhm" in md else None)
                continue
            except ValueError:
                pass
        break
    envi = {k.lower(): v for k, v in (ds.GetMetadata("ENVI") or {}).items()}
    if len(wl) == n and n > 0:
        if any(f is None for f in fw):
            # GDAL's ENVI driver copies `wavelength` to the bands but leaves `fwhm` in the header.
            envi_fwhm = [float(v) for v in re.findall(r"[-+0-9.eE]+", envi.get("fwhm", ""))]
            units = envi.get("wavelength_units")
            fw = [_to_nm(v, units) for v in envi_fwhm] if len(envi_fwhm) == n else fw
        return wl, (fw if all(f is not None for f in fw) else None)
    if "wavelength" in envi:
        values = [float(v) for v in re.findall(r"[-+0-9.eE]+", envi["wavelength"])]
        units = envi.get("wavelength_units")
        if len(values) == n:
            fwhm = [float(v) for v in re.findall(r"[-+0-9.eE]+", envi.get("fwhm", ""))]
            return ([_to_nm(v, units) for v in values], [_to_nm(v, units) for v in fwhm] if len(fwhm) == n else None)
    return None, None
