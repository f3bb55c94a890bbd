"""Simulated images written as products (model/simulation/products.py) and read back by the
product readers (model/mdd/products): date, wavelengths, reflectance at given pixels, and the cloud
and shadow pixels flagged by the quality layer only."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.rasters import crs_wkt
from osgeo import gdal

from stsfusion.model.core.grid import Grid
from stsfusion.model.mdd.products import enmap as enmap_reader
from stsfusion.model.mdd.products import invalid_pixels, open_product
from stsfusion.model.mdd.products import sentinel2 as s2_reader
from stsfusion.model.simulation import products as sp
from stsfusion.model.simulation.truth import rng_stream

gdal.UseExceptions()

H, W = 9, 12
DATE = "2022-05-30"
S2_NAMES = ["2", "3", "4", "5", "6", "7", "8", "8A", "11", "12"]  # as in srf/S2A_MSI.txt
CLOUD_PX = [(1, 2), (1, 3), (2, 2)]
SHADOW_PX = [(4, 5), (5, 5)]
NODATA_PX = (8, 11)


def grid(pixel: float = 30.0) -> Grid:
    return Grid(crs_wkt(32633), (366000.0, pixel, 0.0, 5810010.0, 0.0, -pixel), W, H)


def image(n_bands: int) -> np.ndarray:
    """Known reflectance (band, row, col) in 0.02-0.55, NaN at NODATA_PX."""
    b, r, c = np.mgrid[0:n_bands, 0:H, 0:W]
    v = (0.02 + 0.03 * b + 0.004 * r + 0.001 * c).astype(np.float32)
    v[:, NODATA_PX[0], NODATA_PX[1]] = np.nan
    return v


def flags(pixels: list) -> np.ndarray:
    m = np.zeros((H, W), bool)
    for r, c in pixels:
        m[r, c] = True
    return m


def physical(stack: str) -> np.ndarray:
    """The stack's values with its scale/offset, NaN at nodata."""
    ds = gdal.Open(stack)
    out = []
    for b in range(ds.RasterCount):
        band = ds.GetRasterBand(b + 1)
        dn = band.ReadAsArray().astype(np.float64)
        v = dn * band.GetScale() + band.GetOffset()
        v[dn == band.GetNoDataValue()] = np.nan
        out.append(v)
    return np.array(out)


def wavelengths(stack: str) -> list:
    ds = gdal.Open(stack)
    return [float(ds.GetRasterBand(b + 1).GetMetadataItem("wavelength")) for b in range(ds.RasterCount)]


def quality_invalid(layer) -> dict:
    """{class: bool (row, col)} the product's quality layer flags (its own rule)."""
    q = layer.quality
    if q.path:
        return invalid_pixels(q.rule, gdal.Open(q.path).ReadAsArray())
    out = {}
    for path, rule in enmap_reader.source_rules(q).values():
        out.update(invalid_pixels(rule, gdal.Open(path).ReadAsArray()))
    return out


def check_values(read: np.ndarray, written: np.ndarray, tol: float) -> None:
    for r, c in [(0, 0), (3, 7), (8, 0), (1, 2), (4, 5)]:
        np.testing.assert_allclose(read[:, r, c], written[:, r, c], atol=tol)
    assert np.all(np.isnan(read[:, NODATA_PX[0], NODATA_PX[1]]))
    assert np.isfinite(read[:, :8]).all()


def test_sentinel2_round_trip(tmp_path):
    v = image(10)
    path = sp.write_sentinel2_l2a(str(tmp_path), v, S2_NAMES, grid(), DATE, flags(CLOUD_PX), flags(SHADOW_PX))
    assert path.endswith(".SAFE") and s2_reader.recognise(path)
    layer = open_product(path, str(tmp_path / "work"))
    assert layer.family == "Sentinel-2 L2A" and layer.date == DATE
    np.testing.assert_allclose(
        wavelengths(layer.stack_path), [s2_reader.SPECTRAL["S2A"][b][0] for b in sp.S2_READER_BANDS]
    )
    ds = gdal.Open(layer.stack_path)
    assert (ds.RasterXSize, ds.RasterYSize) == (W, H) and ds.GetGeoTransform()[1] == pytest.approx(30.0)
    assert ds.GetRasterBand(1).GetOffset() == pytest.approx(-0.1)  # BOA_ADD_OFFSET -1000 / 10000
    read = physical(layer.stack_path)
    # the reader's order (B02..B07, B08, B8A, B11, B12) is the written order here
    check_values(read, v, 0.5e-4 + 1e-7)
    inv = quality_invalid(layer)
    assert inv["cloud_high_probability"][tuple(np.array(CLOUD_PX).T)].all()
    assert inv["cloud_shadow"][tuple(np.array(SHADOW_PX).T)].all()
    assert inv["no_data"][NODATA_PX]
    flagged = np.any(list(inv.values()), axis=0)
    assert flagged.sum() == len(CLOUD_PX) + len(SHADOW_PX) + 1


def test_sentinel2_band_names_and_missing_bands(tmp_path):
    assert [sp.s2_band_name(n) for n in ("2", "B2", "b02", "8A", "B8A", "12")] == [
        "B02",
        "B02",
        "B02",
        "B8A",
        "B8A",
        "B12",
    ]
    with pytest.raises(ValueError):
        sp.s2_band_name("13")
    # Only the four 10 m bands: written, but the reader needs its ten bands and says which lack.
    path = sp.write_sentinel2_l2a(str(tmp_path), image(4), ["B02", "B03", "B04", "B08"], grid(), DATE)
    with pytest.raises(Exception, match="B05_20m"):
        open_product(path, str(tmp_path / "work"))


def test_landsat_round_trip(tmp_path):
    v = image(7)
    path = sp.write_landsat_c2_l2(str(tmp_path), v, sp.OLI_BANDS, grid(60.0), DATE, flags(CLOUD_PX), flags(SHADOW_PX))
    layer = open_product(path, str(tmp_path / "work"))
    assert layer.family == "Landsat C2 L2" and layer.date == DATE and layer.name.startswith("LC08_L2SP_")
    assert wavelengths(layer.stack_path)[1:] == [482.0, 561.5, 654.5, 865.0, 1608.5, 2200.5]
    ds = gdal.Open(layer.stack_path)
    assert ds.GetGeoTransform()[1] == pytest.approx(60.0)
    assert ds.GetRasterBand(1).GetScale() == pytest.approx(2.75e-5) and ds.GetRasterBand(1).GetOffset() == -0.2
    check_values(physical(layer.stack_path), v, 2.75e-5 / 2 + 1e-7)
    inv = quality_invalid(layer)
    assert inv["cloud"][tuple(np.array(CLOUD_PX).T)].all() and inv["cloud"].sum() == len(CLOUD_PX)
    assert inv["cloud_shadow"][tuple(np.array(SHADOW_PX).T)].all() and inv["cloud_shadow"].sum() == len(SHADOW_PX)
    assert inv["fill"][NODATA_PX] and inv["fill"].sum() == 1
    assert not inv["dilated_cloud"].any() and not inv["cirrus"].any()


def test_enmap_round_trip(tmp_path):
    v = image(6)
    wl = [418.24, 548.13, 664.43, 864.94, 1652.27, 2198.95]
    fwhm = [6.99, 7.23, 7.88, 9.42, 9.64, 7.82]
    path = sp.write_enmap_l2a(str(tmp_path), v, wl, fwhm, grid(90.0), DATE, flags(CLOUD_PX), flags(SHADOW_PX))
    assert enmap_reader.recognise(path)
    layer = open_product(path, str(tmp_path / "work"))
    assert layer.family == "EnMAP L2A" and layer.date == DATE
    np.testing.assert_allclose(wavelengths(layer.stack_path), wl, atol=1e-3)
    check_values(physical(layer.stack_path), v, 0.5e-4 + 1e-7)
    inv = quality_invalid(layer)
    assert set(inv) == set(enmap_reader.DEFAULT_CLASSES)
    assert inv["cloud"][tuple(np.array(CLOUD_PX).T)].all() and inv["cloud"].sum() == len(CLOUD_PX)
    assert inv["cloud_shadow"].sum() == len(SHADOW_PX) and inv["cloud_shadow"][5, 5]
    assert not (inv["cirrus"].any() or inv["haze"].any() or inv["snow"].any())


def test_clouds_look_like_clouds_and_only_the_flags_say_so(tmp_path):
    fine = (36, 48)
    scene = sp.simulate_clouds(fine, 0.3, rng_stream(1, 2, 3))
    assert 0.25 < scene.core.mean() < 0.35 and not (scene.shadow & scene.core).any()
    assert scene.shadow.any() and 0.4 <= scene.level <= 0.8
    surface = np.full((4, *fine), 0.1, np.float32)
    surface[:, 0, 0] = np.nan
    wl = [490.0, 560.0, 665.0, 1610.0]
    for factor in (1, 3):
        values, cloud, shadow = sp.apply_clouds(surface[:, ::factor, ::factor], wl, factor, scene)
        assert values.shape == (4, fine[0] // factor, fine[1] // factor)
        assert np.isnan(values[:, 0, 0]).all()  # no data stays no data
        assert np.isfinite(values[:, 1:, 1:]).all()  # clouds are data, not holes
        share = sp.block_mean(scene.core.astype(np.float32), factor)  # of cloud core
        core = (share == 1) & np.isfinite(values[0])
        assert core.any() and cloud[core].all() and (values[:3][:, core] > 0.3).all()  # bright, flagged
        assert np.ptp(values[:3][:, core], axis=0).max() < 1e-6  # flat in the VNIR
        dark = sp.block_mean(scene.shadow.astype(np.float32), factor) == 1  # all shadow
        assert dark.any() and shadow[dark].all() and np.allclose(values[:, dark], 0.03)  # dark beside them
        assert not (cloud & shadow).any()
        # partly cloudy pixels below the flag share are mixed, not flagged: what a mask buffer catches
        assert not cloud[share <= sp.FLAG_SHARE].any() and cloud[share > sp.FLAG_SHARE].all()
    g = Grid(crs_wkt(32633), (366000.0, 30.0, 0.0, 5810010.0, 0.0, -30.0), fine[1], fine[0])
    values, cloud, shadow = sp.apply_clouds(surface, wl, 1, scene)
    s2 = sp.write_sentinel2_l2a(str(tmp_path), np.concatenate([values] * 3)[:10], S2_NAMES, g, DATE, cloud, shadow)
    layer = open_product(s2, str(tmp_path / "work"))
    inv = quality_invalid(layer)
    np.testing.assert_array_equal(inv["cloud_high_probability"], cloud & np.isfinite(values[0]))
    read = physical(layer.stack_path)
    assert np.isfinite(read[:, cloud]).sum() == 10 * (cloud & np.isfinite(values[0])).sum()


def test_write_product_dispatches_and_rejects_unknown_families(tmp_path):
    p = sp.write_product("Landsat C2 L2", str(tmp_path), image(7), sp.OLI_BANDS, [], [], grid(), DATE)
    assert open_product(p, str(tmp_path / "w")).family == "Landsat C2 L2"
    with pytest.raises(ValueError, match="Unknown product family"):
        sp.write_product("PRISMA", str(tmp_path), image(7), sp.OLI_BANDS, [], [], grid(), DATE)
    with pytest.raises(ValueError, match="grid"):
        sp.write_enmap_l2a(str(tmp_path), image(2)[:, :4], [500, 600], [10, 10], grid(), DATE)
