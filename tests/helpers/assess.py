"""Tiny rasters for the assess / simulate / baseline tests (made by code, never committed)."""

import numpy as np
from osgeo import gdal, osr

from stsfusion.model.core.grid import Grid
from stsfusion.model.mdd.geotiff import spectral_band_metadata, write_geotiff

HS_WAVELENGTHS = np.arange(420.0, 1001.0, 10.0)  # 59 bands like EnMAP VNIR: GF-6 WFV B7 is not covered


def utm_grid(width=12, height=12, px=10.0, x0=500000.0, y0=5800000.0) -> Grid:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    return Grid(srs.ExportToWkt(), (x0, px, 0.0, y0, 0.0, -px), width, height)


def hs_cube(seed=0, height=12, width=12, wavelengths=HS_WAVELENGTHS) -> np.ndarray:
    """A smooth vegetation-like spectrum times a random brightness per pixel, reflectance 0..1."""
    rng = np.random.default_rng(seed)
    wl = np.asarray(wavelengths)
    spectrum = 0.05 + 0.35 / (1 + np.exp(-(wl - 715) / 15)) + 0.04 * np.exp(-(((wl - 550) / 30) ** 2))
    bright = 0.6 + 0.8 * rng.random((height, width))
    return (spectrum[:, None, None] * bright[None]).astype(np.float32)


def write_hs_int16(path, cube, grid, date=None, bbl=None, nodata=-32768, fwhm=None, wavelengths=HS_WAVELENGTHS):
    """int16 reflectance x 1e4 with band scale 0.0001 (like EnMAP L2A), NaN -> nodata."""
    q = np.where(np.isfinite(cube), np.round(cube * 1e4), nodata).astype(np.int16)
    md = spectral_band_metadata(wavelengths, fwhm)
    if bbl is not None:
        for m, b in zip(md, bbl):
            m["bbl"] = str(b)
    write_geotiff(path, q, grid, nodata=nodata, band_metadata=md, metadata={"ACQUISITION_DATE": date} if date else None)
    ds = gdal.Open(path, gdal.GA_Update)
    for b in range(ds.RasterCount):
        ds.GetRasterBand(b + 1).SetScale(1e-4)
    ds = None
    return path


def read_physical(path) -> np.ndarray:
    ds = gdal.Open(path)
    out = []
    for b in range(ds.RasterCount):
        band = ds.GetRasterBand(b + 1)
        a = band.ReadAsArray().astype(np.float64)
        nd = band.GetNoDataValue()
        if nd is not None:
            a[a == nd] = np.nan
        out.append(a * (band.GetScale() or 1.0) + (band.GetOffset() or 0.0))
    return np.array(out)
