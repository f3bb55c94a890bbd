"""What the profile dock plots: a pixel's spectrum on every date of a series, and the observed inputs.

A *source* is found from the file of the clicked layer:
- a fused output (``fused_YYYY-MM-DD.tif``) or a baseline (``<method>_YYYY-MM-DD.tif``): every file
  of the same name pattern in its folder is one date of the series;
- an MDD stack (``<stem>_<role>.tif`` beside the manifest ``<stem>.json``): every role's dates, all
  shown as observed inputs;
- any other raster with band wavelengths: one spectrum, or one a date when its bands carry a
  ``date`` metadata item.
An MDD manifest (chosen in the dock, or named by the fused files' ``STSFUSION_MDD`` metadata) adds
the observed inputs (fine MS, dense MS, HS) at the pixel.

Raster reading is GDAL only (one 1×1 window per file); ``qgis.core`` is used solely to bring a
clicked map coordinate into a raster's CRS, so everything else is testable without a canvas.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field

import numpy as np
from osgeo import gdal

from ..model.core.vocabulary import ROLE_LABELS, ROLES, iso_date
from ..model.mdd.format import MDD, MDDError
from ..model.mdd.geotiff import read_band_wavelengths

gdal.UseExceptions()

_SERIES_FILE = re.compile(r"^(?P<prefix>.+)_(?P<date>\d{4}-\d{2}-\d{2})\.tiff?$", re.IGNORECASE)
_STACK_FILE = re.compile(r"^(?P<stem>.+)_(?P<role>fine_ms|dense_ms|hs)(?:_mask)?\.tif$")
_ISO_DATE = re.compile(r"(?<!\d)(\d{4})-(\d{2})-(\d{2})(?!\d)")
_COMPACT_DATE = re.compile(r"(?<!\d)(\d{4})(\d{2})(\d{2})(?!\d)")
_DATE_KEYS = ("ACQUISITION_DATE", "DATE", "date", "acquisition_date", "TIFFTAG_DATETIME")
# A band without FWHM covers half the distance to its nearest neighbour, at most this much: a
# multispectral band is rarely wider than 60 nm, and a marker far from its band centre misleads.
MAX_TOLERANCE_NM = 30.0


class ProfileError(ValueError):
    """The layer or point cannot be profiled; the message says why and what to do."""


@dataclass
class Spectrum:
    """One pixel's values on one date: a curve of the series, or an observed input."""

    series: str  # "fused", a baseline method, a file name, or a role (fine_ms, dense_ms, hs)
    date: str | None  # ISO date, None when the raster does not say
    wavelengths: list
    values: np.ndarray  # float64, NaN where nodata / invalid
    fwhm: list | None = None
    observed: bool = False  # an MDD input (drawn as markers) rather than a product curve

    @property
    def label(self) -> str:
        return ROLE_LABELS.get(self.series, self.series) if self.observed else self.series


@dataclass
class Profile:
    """Everything sampled at one clicked point."""

    x: float
    y: float
    crs: str  # the clicked coordinate's CRS (auth id or WKT), as given
    spectra: list = field(default_factory=list)  # the series' curves, ascending date
    observed: list = field(default_factory=list)  # MDD inputs, by role then date
    pixel: tuple | None = None  # (col, row) in the clicked source
    notes: list = field(default_factory=list)  # why something is missing, for the status line

    @property
    def dates(self) -> list:
        return sorted({s.date for s in self.spectra + self.observed if s.date})

    @property
    def is_empty(self) -> bool:
        return not any(np.isfinite(s.values).any() for s in self.spectra + self.observed)

    def wavelength_choices(self) -> list:
        """The wavelengths one may follow over time: the series' bands, else every observed band."""
        items = self.spectra or self.observed
        return sorted({float(w) for s in items for w in s.wavelengths})

    def at_wavelength(self, wavelength: float):
        """(series points, observed points) at one wavelength.

        Series points: [(date, value)] from each curve's nearest band within its width; observed
        points: [(role, date, band centre, value)] where a band of that input covers the wavelength.
        """
        series = []
        for s in self.spectra:
            b = matching_band(s.wavelengths, s.fwhm, wavelength)
            if b is not None:
                series.append((s.date, float(s.values[b])))
        observed = []
        for s in self.observed:
            b = matching_band(s.wavelengths, s.fwhm, wavelength)
            if b is not None:
                observed.append((s.series, s.date, float(s.wavelengths[b]), float(s.values[b])))
        return series, observed


def matching_band(wavelengths, fwhm, wavelength: float):
    """Index of the band nearest ``wavelength`` if that band covers it, else None.

    A band covers ±FWHM/2 around its centre; without FWHM, half the distance to its nearest
    neighbouring band, at most MAX_TOLERANCE_NM (an HS band then stands only for itself).
    """
    if not wavelengths:
        return None
    wl = np.asarray(wavelengths, dtype=float)
    b = int(np.argmin(np.abs(wl - wavelength)))
    if fwhm is not None and fwhm[b]:
        tolerance = 0.5 * float(fwhm[b])
    elif len(wl) > 1:
        others = np.delete(wl, b)
        tolerance = min(0.5 * float(np.min(np.abs(others - wl[b]))), MAX_TOLERANCE_NM)
    else:
        tolerance = MAX_TOLERANCE_NM
    return b if abs(wl[b] - wavelength) <= tolerance + 1e-6 else None


def date_from_text(text: str):
    """The first plausible date in a name or metadata value (YYYY-MM-DD, YYYYMMDD, YYYY:MM:DD)."""
    text = str(text or "").replace(":", "-")
    for pattern in (_ISO_DATE, _COMPACT_DATE):
        for m in pattern.finditer(text):
            date = iso_date(*m.groups())
            if date:
                return date
    return None


@dataclass
class _Item:
    """One spectrum to read: some bands of one file."""

    path: str
    date: str | None
    bands: list  # 0-based band indices in the file
    wavelengths: list
    fwhm: list | None


class ProfileSource:
    """A clicked layer's series plus, optionally, an MDD whose inputs are shown as markers."""

    def __init__(self, name: str, items: list, mdd: MDD | None = None, kind: str = "raster"):
        self.name = name
        self.items = items
        self.mdd = mdd
        self.kind = kind  # "series" (fused/baseline files), "mdd" (a stack), "raster"
        self._datasets = {}  # kept open so GDAL's block cache serves the next click
        self._stamps = self._folder_stamps()

    # ---- discovery -------------------------------------------------------------------------
    @classmethod
    def from_path(cls, path: str, manifest: str | None = None) -> ProfileSource:
        path = os.path.abspath(path.split("|")[0])
        if not os.path.isfile(path):
            raise ProfileError(
                f"{path} is not a file on disk: the profile reads GDAL rasters saved "
                "as files (fused GeoTIFFs, MDD stacks, rasters with band wavelengths)."
            )
        name = os.path.basename(path)
        stack = _STACK_FILE.match(name)
        if stack:
            candidate = os.path.join(os.path.dirname(path), stack.group("stem") + ".json")
            if os.path.isfile(candidate):
                try:
                    return cls(os.path.basename(candidate), [], MDD.open(candidate), kind="mdd")
                except MDDError:
                    pass  # not our manifest after all: read the file as a plain raster below
        series = _SERIES_FILE.match(name)
        if series:
            items = _series_items(path, series.group("prefix"))
            source = cls(series.group("prefix"), items, kind="series")
            found = manifest or _manifest_named_by(path)
        else:
            source = cls(os.path.splitext(name)[0], _raster_items(path), kind="raster")
            found = manifest
        if found:
            source.set_manifest(found)
        return source

    def set_manifest(self, manifest: str | None):
        """Shows the inputs of this MDD as markers (None: no markers). Raises ProfileError."""
        if self.kind == "mdd":
            return  # the stack's own MDD already provides every input
        if not manifest:
            self.mdd = None
            return
        try:
            self.mdd = MDD.open(manifest)
        except MDDError as e:
            raise ProfileError(str(e)) from None
        self._stamps = self._folder_stamps()

    def close(self):
        self._datasets.clear()

    def _folder_stamps(self) -> dict:
        folders = {os.path.dirname(i.path) for i in self.items}
        if self.mdd is not None:
            folders.add(os.path.dirname(self.mdd.path))
        return {f: os.stat(f).st_mtime_ns for f in folders if os.path.isdir(f)}

    def is_stale(self) -> bool:
        """True when a file was added, replaced or removed in one of the source's folders since it
        was opened (outputs are written by rename, which touches the folder): rediscover it."""
        try:
            return self._folder_stamps() != self._stamps
        except OSError:
            return True

    def _open(self, path: str) -> gdal.Dataset:
        ds = self._datasets.get(path)
        if ds is None:
            ds = self._datasets[path] = gdal.Open(path)
        return ds

    # ---- sampling --------------------------------------------------------------------------
    def sample(self, x: float, y: float, crs=None) -> Profile:
        """Every spectrum at map point (x, y). ``crs``: the point's CRS (QgsCoordinateReferenceSystem,
        auth id or WKT); None means the point is already in the rasters' CRS."""
        transform = _PointTransformer(crs)
        profile = Profile(float(x), float(y), _crs_text(crs))
        pixels = {}  # path -> every band at the pixel: a date-grouped stack is read once
        for item in self.items:
            if item.path not in pixels:
                ds = self._open(item.path)
                px = pixel_of(ds, *transform(x, y, ds.GetProjection()))
                pixels[item.path] = (px, None if px is None else read_pixel(ds, *px))
            px, all_bands = pixels[item.path]
            if px is None:
                profile.notes.append(f"the point lies outside {os.path.basename(item.path)}")
                continue
            profile.pixel = profile.pixel or px
            values = all_bands[item.bands]
            profile.spectra.append(Spectrum(self.name, item.date, item.wavelengths, values, item.fwhm))
        profile.spectra.sort(key=lambda s: s.date or "")
        if self.mdd is not None:
            grid = self.mdd.grid
            px = _grid_pixel(grid, *transform(x, y, grid.crs_wkt))
            if px is None:
                profile.notes.append(f"the point lies outside the MDD {os.path.basename(self.mdd.path)}")
            else:
                if self.kind == "mdd":
                    profile.pixel = px
                profile.observed = self._observed(px)
        return profile

    def _observed(self, px) -> list:
        out = []
        for role in ROLES:
            stack = self.mdd.roles.get(role)
            if stack is None or not stack.wavelengths:
                continue  # an MS input without band centres cannot be placed on a wavelength axis
            nb = stack.n_bands
            at = _stored_pixel(stack, self.mdd.grid, *px)  # a coarse role: its own pixel under the point
            values = read_pixel(self._open(stack.path), *at).reshape(stack.n_dates, nb)
            valid = read_pixel(self._open(stack.mask_path), *at) > 0
            for t, date in enumerate(stack.dates):
                v = values[t] if valid[t] else np.full(nb, np.nan)
                out.append(Spectrum(role, date, list(stack.wavelengths), v, stack.fwhm, observed=True))
        return out


def _stored_pixel(stack, grid, col: int, row: int) -> tuple:
    """(col, row) in the role's stored grid of the grid pixel (col, row): the observed pixel under
    its centre (a role stored at its own, coarser pixel size; the same pixel on the grid otherwise)."""
    ratio = getattr(stack, "pixel_ratio", 1.0)
    if ratio == 1:
        return col, row
    stored = stack.stored_grid(grid)
    return min(int((col + 0.5) // ratio), stored.width - 1), min(int((row + 0.5) // ratio), stored.height - 1)


def _series_items(path: str, prefix: str) -> list:
    """Every ``<prefix>_YYYY-MM-DD.tif`` beside ``path``, one spectrum each."""
    folder = os.path.dirname(path)
    items = []
    for name in sorted(os.listdir(folder)):
        m = _SERIES_FILE.match(name)
        if not m or m.group("prefix") != prefix:
            continue
        p = os.path.join(folder, name)
        ds = gdal.Open(p)
        wl, fwhm = read_band_wavelengths(ds)
        if wl is None:
            if p == path:
                raise _no_wavelengths(p)
            continue  # a sibling that only shares the name pattern
        items.append(_Item(p, m.group("date"), list(range(ds.RasterCount)), wl, fwhm))
    return items


def _raster_items(path: str) -> list:
    """One spectrum, or one a date when the bands carry a ``date`` metadata item (a stack)."""
    ds = gdal.Open(path)
    wl, fwhm = read_band_wavelengths(ds)
    if wl is None:
        raise _no_wavelengths(path)
    band_dates = [ds.GetRasterBand(b + 1).GetMetadataItem("date") for b in range(ds.RasterCount)]
    if all(band_dates):
        groups = {}
        for b, d in enumerate(band_dates):
            groups.setdefault(date_from_text(d) or d, []).append(b)
        return [
            _Item(path, d, bands, [wl[b] for b in bands], [fwhm[b] for b in bands] if fwhm else None)
            for d, bands in groups.items()
        ]
    md = ds.GetMetadata() or {}
    date = next((date_from_text(md[k]) for k in _DATE_KEYS if md.get(k) and date_from_text(md[k])), None)
    date = date or date_from_text(os.path.basename(path))
    return [_Item(path, date, list(range(ds.RasterCount)), wl, fwhm)]


def _manifest_named_by(path: str):
    """The MDD manifest a fused file names in its ``STSFUSION_MDD`` metadata, if it is found beside
    the file or one folder up; None otherwise."""
    name = gdal.Open(path).GetMetadataItem("STSFUSION_MDD")
    if not name:
        return None
    folder = os.path.dirname(path)
    for candidate in (os.path.join(folder, name), os.path.join(os.path.dirname(folder), name)):
        if os.path.isfile(candidate):
            return candidate
    return None


def _no_wavelengths(path: str) -> ProfileError:
    return ProfileError(
        f"{os.path.basename(path)} has no band wavelengths (GDAL band metadata "
        "'wavelength' or an ENVI header): the profile needs band centres. Click a "
        "fused output, an MDD stack or a raster whose bands say their wavelength."
    )


def pixel_of(ds: gdal.Dataset, x: float, y: float):
    """(col, row) of the pixel holding (x, y) in the raster's CRS, or None outside."""
    col, row = gdal.ApplyGeoTransform(gdal.InvGeoTransform(ds.GetGeoTransform()), x, y)
    col, row = int(np.floor(col)), int(np.floor(row))
    if 0 <= col < ds.RasterXSize and 0 <= row < ds.RasterYSize:
        return col, row
    return None


def _grid_pixel(grid, x, y):
    col, row = gdal.ApplyGeoTransform(gdal.InvGeoTransform(tuple(grid.geotransform)), x, y)
    col, row = int(np.floor(col)), int(np.floor(row))
    return (col, row) if 0 <= col < grid.width and 0 <= row < grid.height else None


def read_pixel(ds: gdal.Dataset, col: int, row: int) -> np.ndarray:
    """Every band's value at one pixel, float64, NaN where it equals the band's nodata."""
    values = np.asarray(ds.ReadAsArray(col, row, 1, 1), dtype=np.float64).reshape(-1)
    for b in range(ds.RasterCount):
        nodata = ds.GetRasterBand(b + 1).GetNoDataValue()
        if nodata is not None and (values[b] == nodata or (np.isnan(nodata) and np.isnan(values[b]))):
            values[b] = np.nan
    return values


def _crs_text(crs) -> str:
    if crs is None:
        return ""
    if hasattr(crs, "authid"):
        return crs.authid() or crs.toWkt()
    return str(crs)


class _PointTransformer:
    """Brings a map point into a raster's CRS with QGIS's transform (same as the canvas uses)."""

    def __init__(self, crs):
        self.crs = crs
        self._cache = {}

    def __call__(self, x, y, raster_wkt):
        if self.crs is None or not raster_wkt:
            return x, y
        t = self._cache.get(raster_wkt)
        if t is None:
            from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsProject

            src = self.crs if hasattr(self.crs, "authid") else QgsCoordinateReferenceSystem(str(self.crs))
            dst = QgsCoordinateReferenceSystem.fromWkt(raster_wkt)
            if not src.isValid() or not dst.isValid():
                raise ProfileError(
                    f"Cannot relate the clicked point's CRS ({_crs_text(self.crs)}) to "
                    "the raster's: give both layers a valid CRS."
                )
            if src == dst:
                t = self._cache[raster_wkt] = False
            else:
                t = self._cache[raster_wkt] = QgsCoordinateTransform(src, dst, QgsProject.instance().transformContext())
        if t is False:
            return x, y
        from qgis.core import QgsCsException, QgsPointXY

        try:
            p = t.transform(QgsPointXY(x, y))
        except QgsCsException:
            raise ProfileError(
                "The clicked point cannot be brought into the raster's CRS: click inside the raster's area."
            ) from None
        return p.x(), p.y()


def write_csv(path: str, profile: Profile):
    """The plotted values as CSV (one row a value), written under a temporary name then renamed."""
    tmp = path + ".part"
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["x", "y", "crs", "series", "kind", "date", "wavelength_nm", "value"])
            for s in profile.spectra + profile.observed:
                kind = "observed" if s.observed else "series"
                for wl, v in zip(s.wavelengths, s.values):
                    w.writerow(
                        [
                            f"{profile.x:.6f}",
                            f"{profile.y:.6f}",
                            profile.crs,
                            s.series,
                            kind,
                            s.date or "",
                            f"{float(wl):g}",
                            "" if np.isnan(v) else f"{float(v):.6g}",
                        ]
                    )
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
