"""Tiny fixture rasters made by code (never committed blobs), for every test module to import.

``make_raster`` writes a GeoTIFF (or ENVI) raster from a (band, row, col) array with a CRS, a
north-up grid, nodata, band scale/offset, spectral band metadata and dataset metadata.
"""

from __future__ import annotations

import os

import numpy as np
from osgeo import gdal, osr

gdal.UseExceptions()

_DTYPES = {
    np.dtype(np.uint8): gdal.GDT_Byte,
    np.dtype(np.int16): gdal.GDT_Int16,
    np.dtype(np.uint16): gdal.GDT_UInt16,
    np.dtype(np.int32): gdal.GDT_Int32,
    np.dtype(np.float32): gdal.GDT_Float32,
    np.dtype(np.float64): gdal.GDT_Float64,
}


def crs_wkt(epsg: int) -> str:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(int(epsg))
    return srs.ExportToWkt()


def make_raster(
    path,
    values,
    epsg=32633,
    origin_xy=(500000.0, 5800000.0),
    pixel_size=10.0,
    nodata=None,
    wavelengths=None,
    fwhm=None,
    metadata=None,
    scale=None,
    offset=None,
    band_metadata=None,
    descriptions=None,
    driver="GTiff",
    wavelength_units="nm",
):
    """Writes ``values`` (band, row, col) (or (row, col)) to ``path``; returns ``path``.

    origin_xy: the upper-left corner; pixel_size: a number or (x, y) (y given positive, north-up);
    epsg=None: no CRS; scale/offset: a number or one per band (GDAL band scale/offset);
    wavelengths/fwhm: one per band, in ``wavelength_units``; metadata: dataset metadata (e.g.
    ``{"ACQUISITION_DATE": "2022-07-24"}``); band_metadata: one dict per band, merged in.
    """
    values = np.asarray(values)
    if values.ndim == 2:
        values = values[None]
    n, h, w = values.shape
    px, py = (pixel_size, pixel_size) if np.isscalar(pixel_size) else pixel_size
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    ds = gdal.GetDriverByName(driver).Create(str(path), w, h, n, _DTYPES[values.dtype])
    ds.SetGeoTransform((float(origin_xy[0]), float(px), 0.0, float(origin_xy[1]), 0.0, -float(py)))
    if epsg is not None:
        ds.SetProjection(crs_wkt(epsg))
    per_band = lambda v, b: None if v is None else (v if np.isscalar(v) else v[b])
    for b in range(n):
        band = ds.GetRasterBand(b + 1)
        band.WriteArray(values[b])
        if nodata is not None:
            band.SetNoDataValue(float(nodata))
        if per_band(scale, b) is not None:
            band.SetScale(float(per_band(scale, b)))
        if per_band(offset, b) is not None:
            band.SetOffset(float(per_band(offset, b)))
        md = {}
        if wavelengths is not None:
            md.update(wavelength=f"{wavelengths[b]:g}", wavelength_units=wavelength_units)
            if fwhm is not None:
                md["fwhm"] = f"{fwhm[b]:g}"
        if band_metadata is not None and band_metadata[b]:
            md.update(band_metadata[b])
        if md:
            band.SetMetadata({k: str(v) for k, v in md.items()})
        if descriptions is not None:
            band.SetDescription(descriptions[b])
    if metadata:
        ds.SetMetadata({k: str(v) for k, v in metadata.items()})
    ds = None
    return str(path)


def ramp(h, w, bands=1, a=1.0, bx=0.5, by=0.25, band_step=10.0, dtype=np.float32):
    """A linear ramp a + bx*col + by*row + band_step*band: bilinear and area averaging keep it."""
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.stack([a + bx * cols + by * rows + band_step * b for b in range(bands)])
    return out.astype(dtype)


# Fine MS: UTM 33N, 10 m, 32 x 32 px from (500000, 5800000) (lat 52.35 N, lon 15 E).
FINE_ORIGIN = (500000.0, 5800000.0)
WL_MS = [490.0, 560.0, 665.0, 842.0]


def make_three_role_inputs(d, hs_nodata_pixel=True):
    """Paths of fine MS (EPSG:32633, 10 m, ramps), dense MS (EPSG:3857, 50 m ~ 30.5 m on the ground,
    int16 x 1e-4 with a nodata hole) and HS (EPSG:4326, 0.001 deg, wavelengths in micrometres). ``d``: a pathlib.Path.

    Fine MS: 2 dates (one from TIFFTAG_DATETIME, one from a Sentinel-2 name), 4 bands, ramps;
    dense MS: 3 dates from file names, 3 bands, 0.3 + 0.01*band + 0.001*date_index, cloud at
    source rows/cols 4..6; HS: 2 dates (ACQUISITION_DATE), 5 bands, 0.2 then 0.25, nodata at (1, 2)."""
    fine = [
        make_raster(
            d / "S2A_MSIL2A_20220801T101559_N0400_R065_T33UUU_20220801T165304.tif",
            ramp(32, 32, 4) + 1,
            32633,
            FINE_ORIGIN,
            10,
            wavelengths=WL_MS,
        ),
        make_raster(
            d / "fine_b.tif",
            ramp(32, 32, 4),
            32633,
            FINE_ORIGIN,
            10,
            wavelengths=WL_MS,
            metadata={"TIFFTAG_DATETIME": "2022:07:01 10:30:00"},
        ),
    ]
    dense = []
    for k, date in enumerate(["2022-07-01", "2022-07-15", "2022-08-01"]):
        v = (3000 + 100 * np.arange(3)[:, None, None] + 10 * k + np.zeros((3, 14, 14))).astype(np.int16)
        v[:, 4:7, 4:7] = -1  # a cloud: nodata
        dense.append(
            make_raster(d / f"dense_{date}.tif", v, 3857, (1669700.0, 6863800.0), 50.0, nodata=-1, scale=0.0001)
        )
    hs = []
    for k, date in enumerate(["20220701", "20220801"]):
        v = np.full((5, 6, 8), 2000 + 500 * k, np.int16)
        if hs_nodata_pixel:
            v[:, 1, 2] = -32768  # lon 15.000..15.001, lat 52.3495..52.3505: inside the grid
        hs.append(
            make_raster(
                d / f"hs_{k}.tif",
                v,
                4326,
                (14.998, 52.3515),
                0.001,
                nodata=-32768,
                scale=0.0001,
                wavelengths=[0.5, 0.6, 0.7, 0.8, 0.9],
                wavelength_units="um",
                metadata={"ACQUISITION_DATE": date},
            )
        )
    return fine, dense, hs
