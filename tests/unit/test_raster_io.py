"""Inspecting input rasters (CRS, grid, nodata, scale, wavelengths, dates) and warping them."""

import math

import numpy as np
import pytest
from helpers.rasters import crs_wkt, make_raster, ramp
from osgeo import gdal

from stsfusion.model.mdd.format import Grid
from stsfusion.model.mdd.raster_io import (
    date_from_name,
    extent_in_crs,
    inspect_layer,
    open_source,
    parse_date_text,
    pixel_size_in_crs,
    warp_window,
)


def test_inspect_layer_reads_grid_nodata_scale_wavelengths(tmp_path):
    p = make_raster(
        tmp_path / "x.tif",
        np.zeros((3, 4, 5), np.int16),
        32633,
        (500000, 5800000),
        (10, 20),
        nodata=-9,
        scale=[0.0001, 0.001, 0.01],
        offset=0.5,
        wavelengths=[0.49, 0.56, 0.665],
        fwhm=[0.06, 0.035, 0.03],
        wavelength_units="micrometers",
        descriptions=["B2", "B3", "B4"],
        band_metadata=[{"bbl": "1"}, {"bbl": "0"}, {"bbl": "1"}],
    )
    i = inspect_layer(p)
    assert i.name == "x" and i.source == p
    assert (i.width, i.height, i.band_count) == (5, 4, 3)
    assert i.geotransform == (500000.0, 10.0, 0.0, 5800000.0, 0.0, -20.0)
    assert i.extent == (500000.0, 5799920.0, 500050.0, 5800000.0)
    assert "32633" in i.crs_wkt and i.georeferenced
    assert i.nodata == [-9.0] * 3 and i.scale == [0.0001, 0.001, 0.01] and i.offset == [0.5] * 3
    assert i.wavelengths == pytest.approx([490, 560, 665]) and i.fwhm == pytest.approx([60, 35, 30])
    assert i.bbl == [1, 0, 1] and i.band_names == ["B2", "B3", "B4"]
    assert i.date is None


def test_inspect_layer_without_crs_or_georeferencing(tmp_path):
    ds = gdal.GetDriverByName("GTiff").Create(str(tmp_path / "raw.tif"), 4, 4, 1)
    del ds  # closes the file
    i = inspect_layer(str(tmp_path / "raw.tif"), "my layer")
    assert i.name == "my layer" and i.crs_wkt == "" and not i.georeferenced


@pytest.mark.parametrize(
    "key,value",
    [
        ("ACQUISITION_DATE", "2022-07-24"),
        ("TIFFTAG_DATETIME", "2022:07:24 10:45:26"),
        ("start_time", "2022-07-24T10:45:26"),  # EnMAP tiles
        ("DATE_ACQUIRED", "2022-07-24"),
        ("SENSING_TIME", "2022-07-24T10:15:59.024Z"),
        ("ACQUISITIONDATETIME", "20220724"),
    ],
)
def test_date_from_metadata_beats_file_name(tmp_path, key, value):
    p = make_raster(tmp_path / "scene_20190101.tif", np.zeros((1, 2, 2), np.float32), metadata={key: value})
    i = inspect_layer(p)
    assert i.date == "2022-07-24" and i.date_source == f"metadata {key}"


def test_envi_header_date_wavelengths_fwhm_and_bbl(tmp_path):
    p = str(tmp_path / "hyper.bsq")
    ds = gdal.GetDriverByName("ENVI").Create(p, 3, 3, 2, gdal.GDT_Float32)
    ds.SetGeoTransform((0, 1, 0, 0, 0, -1))
    ds = None
    with open(tmp_path / "hyper.hdr", "a") as f:
        f.write(
            "acquisition time = 2021-05-06T10:00:00Z\nwavelength units = Micrometers\n"
            "wavelength = {0.45, 0.55}\nfwhm = {0.01, 0.02}\nbbl = {1, 0}\n"
        )
    i = inspect_layer(p)
    assert i.date == "2021-05-06" and i.date_source == "metadata acquisition_time"
    assert i.wavelengths == pytest.approx([450, 550]) and i.fwhm == pytest.approx([10, 20])
    assert i.bbl == [1, 0]


@pytest.mark.parametrize(
    "name,date",
    [
        ("S2A_MSIL2A_20220724T101559_N0400_R065_T33UUU_20220724T165304.tif", "2022-07-24"),
        ("T33UUU_20220805T101031_B04_10m.jp2", "2022-08-05"),
        ("S2A_OPER_MSI_L1C_TL_SGS__20160101T120000_A002749_T33UUU_N02.01_V20151231T101015", "2015-12-31"),
        ("LC08_L2SP_193023_20220724_20220802_02_T1_SR_B4.TIF", "2022-07-24"),
        ("LC81930232022205LGN00_B4.TIF", "2022-07-24"),  # Landsat scene id: year + day of year
        ("MOD09GA.A2022205.h18v03.061.2022207033036.hdf", "2022-07-24"),
        ("potsdam_2022-07-24.tif", "2022-07-24"),
        ("potsdam_2022_07_24_clip.tif", "2022-07-24"),
        ("img20220724.tif", "2022-07-24"),
        ("id_120220724.tif", None),  # inside a longer digit run: not a date
        ("scene_20221399.tif", None),  # month 13
        ("enmap_potsdam_tile_128_0.tif", None),
    ],
)
def test_date_from_name(name, date):
    assert date_from_name(name) == date


def test_parse_date_text():
    assert parse_date_text("2022:07:24 10:45:26") == "2022-07-24"
    assert parse_date_text("2022-07-24T10:45:26.5Z") == "2022-07-24"
    assert parse_date_text("24.07.2022") is None and parse_date_text("2022-02-30") is None


def test_pixel_size_and_extent_in_other_crs(tmp_path):
    p = make_raster(tmp_path / "u.tif", np.zeros((1, 10, 10), np.float32), 32633, (500000, 5800000), 30)
    i = inspect_layer(p)
    assert pixel_size_in_crs(i, i.crs_wkt) == pytest.approx(30.0)
    lat = math.radians(52.34)
    # Web Mercator stretches by 1/cos(lat) (UTM's 0.9996 on the central meridian aside).
    assert pixel_size_in_crs(i, crs_wkt(3857)) == pytest.approx(30 / 0.9996 / math.cos(lat), rel=2e-3)
    deg = pixel_size_in_crs(i, crs_wkt(4326))
    assert deg == pytest.approx(30 / 111250 / math.sqrt(math.cos(lat)), rel=1e-2)
    xmin, ymin, xmax, ymax = extent_in_crs(i, crs_wkt(4326))
    assert xmin == pytest.approx(15.0, abs=1e-6) and ymax == pytest.approx(52.3503, abs=1e-3)
    assert 0.0043 < xmax - xmin < 0.0046 and 0.0026 < ymax - ymin < 0.0028


def test_warp_window_footprint_nodata_nan_and_scale(tmp_path):
    v = ramp(4, 4, 2)
    v[0, 1, 1] = -5  # nodata in band 1 only
    v[1, 2, 2] = np.nan  # a non-finite value in band 2
    p = make_raster(tmp_path / "s.tif", v, 32633, (500020, 5800000), 10, nodata=-5, scale=2.0, offset=1.0)
    i = inspect_layer(p)
    # A 6 x 6 grid of 10 m starting 20 m west of the source: columns 0-1 lie outside it.
    grid = Grid(crs_wkt(32633), (500000.0, 10.0, 0.0, 5800000.0, 0.0, -10.0), 6, 6)
    src = open_source(i)
    whole = warp_window(src, i, grid, (0, 0, 6, 6), "bilinear")
    top = np.concatenate(
        [warp_window(src, i, grid, (0, 0, 4, 3), "bilinear"), warp_window(src, i, grid, (4, 0, 2, 3), "bilinear")],
        axis=2,
    )
    a = np.concatenate([top, warp_window(src, i, grid, (0, 3, 6, 3), "bilinear")], axis=1)
    np.testing.assert_array_equal(np.nan_to_num(a, nan=-1), np.nan_to_num(whole, nan=-1))
    assert a.shape == (2, 6, 6)
    assert np.isnan(a[:, :, :2]).all() and np.isnan(a[:, 4:, :]).all()
    assert np.isnan(a[0, 1, 3]) and not np.isnan(a[1, 1, 3])
    assert np.isnan(a[1, 2, 4]) and not np.isnan(a[0, 2, 4])
    np.testing.assert_allclose(a[0, 0, 2:], 2 * ramp(4, 4)[0, 0] + 1)
    np.testing.assert_allclose(a[1, 3, 2:], 2 * (ramp(4, 4)[0, 3] + 10) + 1)
