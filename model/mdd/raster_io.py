"""What an input raster layer is (CRS, grid, nodata, scale/offset, wavelengths, date) and how to
warp it onto a target grid. GDAL only: no QGIS import, so tests and benchmarks use it directly.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field

import numpy as np
from osgeo import gdal, gdal_array, osr

from ..core.grid import Grid
from ..core.vocabulary import iso_date, iso_date_from_doy, parse_date_text
from .geotiff import read_band_wavelengths

gdal.UseExceptions()

# The warper's own working buffers (source and destination chunks), in MB: a window larger than
# this is warped in chunks, so a warp's memory stops growing with the window (GDAL's default is 64).
WARP_MEMORY_MB = 32


class RasterInputError(ValueError):
    """An input raster that cannot be used; the message names the layer and the fix."""


@dataclass
class LayerInfo:
    """One input layer as GDAL sees it (one sensor on one date)."""

    name: str  # the layer name users see (QGIS layer name; file base name for files)
    source: str  # what gdal.Open reads
    crs_wkt: str  # "" when the raster has no CRS
    geotransform: tuple
    georeferenced: bool  # False when GDAL gives the default (0, 1, 0, 0, 0, 1) transform
    width: int
    height: int
    band_count: int
    data_type: int  # GDAL data type of band 1
    nodata: list  # per band: a float or None
    scale: list  # per band: float (1.0 when unset)
    offset: list  # per band: float (0.0 when unset)
    wavelengths: list | None  # nm
    fwhm: list | None  # nm
    bbl: list | None  # ENVI bad band list (1 good, 0 bad), None when the raster does not say
    band_names: list
    date: str | None = None  # ISO date read from metadata or the name (None: not found)
    date_source: str = ""  # where the date came from, for the log
    quality: object | None = None  # a product's QualityLayer (products/__init__.py), or None
    origin: str = ""  # what the user gave (a product folder, zip, MTL...), when not ``source``
    masked: str | None = None  # what the quality layer masked, for the log ("cloud 12.3 %, ...")
    masks: list = field(default_factory=list)  # explicit MASK rasters (QualityLayers), added to ``quality``

    @property
    def corners(self) -> list:
        gt = self.geotransform
        return [
            (gt[0] + c * gt[1] + r * gt[2], gt[3] + c * gt[4] + r * gt[5])
            for c, r in ((0, 0), (self.width, 0), (0, self.height), (self.width, self.height))
        ]

    @property
    def extent(self) -> tuple:
        """(xmin, ymin, xmax, ymax) in the layer's own CRS."""
        xs, ys = zip(*self.corners)
        return (min(xs), min(ys), max(xs), max(ys))


def _srs(wkt: str) -> osr.SpatialReference:
    srs = osr.SpatialReference()
    srs.ImportFromWkt(wkt)
    # x = easting/longitude, y = northing/latitude, whatever the CRS's official axis order.
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def crs_from_user(text: str) -> str:
    """WKT for a user CRS given as "EPSG:32633", WKT or a PROJ string."""
    srs = osr.SpatialReference()
    try:
        srs.SetFromUserInput(text)
    except RuntimeError as e:
        raise RasterInputError(f"'{text}' is not a CRS GDAL knows ({e}): give e.g. EPSG:32633.") from None
    return srs.ExportToWkt()


def same_crs(wkt_a: str, wkt_b: str) -> bool:
    return bool(_srs(wkt_a).IsSame(_srs(wkt_b)))


def inspect_layer(source: str, name: str | None = None) -> LayerInfo:
    """Reads everything the MDD builder needs to know about one raster (no pixels)."""
    name = name or os.path.splitext(os.path.basename(source))[0]
    try:
        ds = gdal.Open(source)
    except RuntimeError as e:
        raise RasterInputError(
            f"Layer '{name}' ({source}) cannot be read by GDAL ({e}): check the "
            "file exists and is a raster GDAL can open."
        ) from None
    srs = ds.GetSpatialRef()
    gt = tuple(ds.GetGeoTransform(can_return_null=True) or (0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    bands = [ds.GetRasterBand(b + 1) for b in range(ds.RasterCount)]
    wavelengths, fwhm = read_band_wavelengths(ds)
    info = LayerInfo(
        name=name,
        source=source,
        crs_wkt=srs.ExportToWkt() if srs is not None else "",
        geotransform=gt,
        georeferenced=gt != (0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
        width=ds.RasterXSize,
        height=ds.RasterYSize,
        band_count=ds.RasterCount,
        data_type=bands[0].DataType if bands else gdal.GDT_Unknown,
        nodata=[b.GetNoDataValue() for b in bands],
        scale=[b.GetScale() if b.GetScale() not in (None, 0) else 1.0 for b in bands],
        offset=[b.GetOffset() or 0.0 for b in bands],
        wavelengths=wavelengths,
        fwhm=fwhm,
        bbl=_read_bbl(ds),
        band_names=[b.GetDescription() or f"band {i + 1}" for i, b in enumerate(bands)],
    )
    info.date, info.date_source = date_from_metadata(ds)
    if info.date is None:
        info.date = date_from_name(os.path.basename(source)) or date_from_name(name)
        info.date_source = "file name" if info.date else ""
    return info


def _read_bbl(ds: gdal.Dataset):
    """The bad band list (ENVI ``bbl``, also written per band by the EnMAP-Box): 1 good, 0 bad."""
    n = ds.RasterCount
    per_band = [ds.GetRasterBand(b + 1).GetMetadataItem("bbl") for b in range(n)]
    if n and all(v is not None for v in per_band):
        try:
            return [int(float(v) != 0) for v in per_band]
        except ValueError:
            pass
    envi = {k.lower(): v for k, v in (ds.GetMetadata("ENVI") or {}).items()}
    values = re.findall(r"[-+0-9.eE]+", envi.get("bbl", ""))
    return [int(float(v) != 0) for v in values] if len(values) == n and n else None


# ---- dates ----------------------------------------------------------------------------------

# Dataset metadata keys that hold the acquisition date, most specific first (compared lower-case).
# TIFFTAG_DATETIME is last: by the TIFF specification it is when the file was made, which for
# most imagery products is the acquisition, but not always.
DATE_KEYS = (
    "acquisition_date",
    "acquisitiondate",
    "acquisition_datetime",
    "acquisitiondatetime",
    "date_acquired",
    "sensing_time",
    "sensing_date",
    "sensing_start",
    "start_time",
    "product_start_time",
    "datatake_sensing_start",
    "acquisition_time",
    "date",
    "tifftag_datetime",
)


def date_from_metadata(ds: gdal.Dataset) -> tuple:
    """(ISO date, "metadata KEY") from the dataset's metadata, or (None, "")."""
    domains = {}
    for domain in ("", "IMAGERY", "ENVI"):
        for k, v in (ds.GetMetadata(domain) or {}).items():
            domains.setdefault(k.lower(), (k, v))
    for key in DATE_KEYS:
        if key in domains:
            date = parse_date_text(domains[key][1])
            if date:
                return date, f"metadata {domains[key][0]}"
    return None, ""


# Product names first (their first date is the acquisition; a processing date may follow), then
# generic dates. An 8-digit date must not sit inside a longer digit run (ids, times).
_NAME_DOY = (
    re.compile(r"(?<![A-Za-z0-9])L[COTEM]\d\d{6}(\d{4})(\d{3})[A-Z]{3}\d{2}"),  # Landsat scene id
    re.compile(r"\.A(\d{4})(\d{3})(?!\d)"),
)  # MODIS: MOD09GA.A2022205.h18v03...
_NAME_YMD = (
    re.compile(r"_V(\d{4})(\d{2})(\d{2})T\d{6}"),  # old Sentinel-2 names: sensing start
    re.compile(r"(?<!\d)(\d{4})-(\d{2})-(\d{2})(?!\d)"),
    re.compile(r"(?<!\d)(\d{4})_(\d{2})_(\d{2})(?!\d)"),
    re.compile(r"(?<!\d)(\d{4})(\d{2})(\d{2})(?!\d)"),
)


def date_from_name(name: str) -> str | None:
    """ISO date from a file name: Landsat/MODIS/Sentinel-2 product names, YYYYMMDD, YYYY-MM-DD,
    YYYY_MM_DD (the leftmost valid one: product names put the acquisition first)."""
    for pattern in _NAME_DOY:
        for m in pattern.finditer(name):
            if iso_date_from_doy(*m.groups()):
                return iso_date_from_doy(*m.groups())
    m = _NAME_YMD[0].search(name)
    if m and iso_date(*m.groups()):
        return iso_date(*m.groups())
    found = [(m.start(), iso_date(*m.groups())) for p in _NAME_YMD[1:] for m in p.finditer(name)]
    found = sorted((pos, d) for pos, d in found if d)
    return found[0][1] if found else None


# ---- geometry -------------------------------------------------------------------------------


def extent_in_crs(info: LayerInfo, target_wkt: str) -> tuple:
    """The layer's footprint bounding box (xmin, ymin, xmax, ymax) in the target CRS."""
    if same_crs(info.crs_wkt, target_wkt):
        return info.extent
    return transform_bounds(info.extent, info.crs_wkt, target_wkt)


def transform_bounds(bounds: tuple, src_wkt: str, dst_wkt: str) -> tuple:
    ct = osr.CoordinateTransformation(_srs(src_wkt), _srs(dst_wkt))
    # Densified edges (21 points a side): a projected rectangle's edges are curves elsewhere.
    return tuple(ct.TransformBounds(*bounds, 21))


def pixel_size_in_crs(info: LayerInfo, target_wkt: str) -> float:
    """The layer's pixel size in target CRS units: sqrt of the area of its centre pixel there."""
    gt = info.geotransform
    c, r = info.width / 2.0, info.height / 2.0
    pts = [
        (gt[0] + cc * gt[1] + rr * gt[2], gt[3] + cc * gt[4] + rr * gt[5])
        for cc, rr in ((c, r), (c + 1, r), (c, r + 1))
    ]
    if not same_crs(info.crs_wkt, target_wkt):
        ct = osr.CoordinateTransformation(_srs(info.crs_wkt), _srs(target_wkt))
        pts = [ct.TransformPoint(x, y)[:2] for x, y in pts]
    (x0, y0), (x1, y1), (x2, y2) = pts
    return math.sqrt(abs((x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)))


def gdal_opens(path: str) -> bool:
    """Whether GDAL opens ``path`` as a raster (without reading any pixel)."""
    try:
        return gdal.OpenEx(path, gdal.OF_RASTER) is not None
    except RuntimeError:
        return False


def open_source(info: LayerInfo) -> gdal.Dataset:
    return gdal.Open(info.source)


def warp_window(
    src: gdal.Dataset, info: LayerInfo, grid: Grid, window: tuple, resampling: str, float64: bool = False
) -> np.ndarray:
    """The window (xoff, yoff, xsize, ysize) of ``grid`` warped from the layer, all bands, float32
    (float64 when asked: integers above 2**24 stay exact, as bit flags need) in physical units
    (band scale/offset applied), NaN where invalid.

    Source nodata, NaN and everything outside the source footprint come out as NaN; each band's
    nodata counts on its own (UNIFIED_SRC_NODATA=NO), so a band that is nodata everywhere does not
    blank the others. Each window is warped on its own into memory: the result equals the same
    window of a whole-grid warp, and memory is bounded by the window whatever GDAL's block cache
    is (a warped VRT read band by band re-warps every band whenever its cache is too small).
    """
    xoff, yoff, xs, ys = (int(v) for v in window)
    x0, dx, rx, y0, ry, dy = grid.geotransform
    src_nodata = None
    if any(v is not None for v in info.nodata) or info.data_type in (gdal.GDT_Float32, gdal.GDT_Float64):
        src_nodata = " ".join("nan" if v is None else repr(float(v)) for v in info.nodata)
    # GDAL warps straight into this array (a MEM dataset over it): one copy of the window, not two.
    a = np.empty((info.band_count, ys, xs), dtype=np.float64 if float64 else np.float32)
    target = gdal_array.OpenArray(a if info.band_count > 1 else a[0])
    target.SetGeoTransform((x0 + xoff * dx + yoff * rx, dx, rx, y0 + xoff * ry + yoff * dy, ry, dy))
    target.SetProjection(grid.crs_wkt)
    options = gdal.WarpOptions(
        resampleAlg=resampling,
        workingType=gdal.GDT_Float64 if float64 else gdal.GDT_Float32,
        srcNodata=src_nodata,
        dstNodata="nan",
        warpOptions=["UNIFIED_SRC_NODATA=NO", "INIT_DEST=NO_DATA"],
        warpMemoryLimit=WARP_MEMORY_MB,  # GDAL's own buffers: cut into chunks beyond this
    )
    gdal.Warp(target, src, options=options)
    target = None
    a *= np.asarray(info.scale, dtype=np.float32)[:, None, None]  # in place: no second copy of a window
    a += np.asarray(info.offset, dtype=np.float32)[:, None, None]
    return a
