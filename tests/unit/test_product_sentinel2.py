"""The Sentinel-2 L2A reader on tiny .SAFE products (folder and zip, baselines 04.00 and 03.01)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from helpers.products_sentinel2 import SCL_PIXELS, SIZE_10M, make_s2_l2a, reflectance
from helpers.rasters import make_raster
from osgeo import gdal

from stsfusion.model.mdd.products import ProductError, invalid_pixels, open_product
from stsfusion.model.mdd.products import sentinel2 as s2
from stsfusion.model.mdd.raster_io import inspect_layer

ORDER = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
S2A = [492.4, 559.8, 664.6, 704.1, 740.5, 782.8, 832.8, 864.7, 1613.7, 2202.4]
S2A_FWHM = [66, 36, 31, 15, 15, 20, 106, 21, 91, 175]
S2B = [492.1, 559.0, 664.9, 703.8, 739.1, 779.7, 832.9, 864.0, 1610.4, 2185.7]


def _physical(stack: str) -> np.ndarray:
    ds = gdal.Open(stack)
    out = []
    for b in range(ds.RasterCount):
        band = ds.GetRasterBand(b + 1)
        dn = band.ReadAsArray().astype(np.float64)
        v = dn * band.GetScale() + band.GetOffset()
        v[dn == band.GetNoDataValue()] = np.nan
        out.append(v)
    return np.array(out)


def test_recognise_folder_zip_and_mtd(tmp_path):
    fx = make_s2_l2a(tmp_path / "a")
    assert s2.recognise(fx.path)
    assert s2.recognise(os.path.join(fx.path, "MTD_MSIL2A.xml"))
    zx = make_s2_l2a(tmp_path / "z", as_zip=True)
    assert zx.path.endswith(".zip") and s2.recognise(zx.path)


def test_recognise_rejects_other_things(tmp_path):
    tif = make_raster(str(tmp_path / "plain.tif"), np.ones((2, 3, 3), np.uint16))
    assert not s2.recognise(tif)
    assert not s2.recognise(str(tmp_path))
    assert not s2.recognise(str(tmp_path / "missing.SAFE"))
    l1c = tmp_path / "S2A_MSIL1C_20220724T102041_N0400_R065_T33UUU_20220724T123456.SAFE"
    l1c.mkdir()
    (l1c / "MTD_MSIL1C.xml").write_text("<x/>")
    assert not s2.recognise(str(l1c))
    bad_zip = tmp_path / "not_a.zip"
    bad_zip.write_bytes(b"not a zip")
    assert not s2.recognise(str(bad_zip))
    he5 = tmp_path / "PRS_L2D_STD_20220724101530_20220724101534_0001.he5"
    he5.write_bytes(b"\x89HDF\r\n\x1a\n")
    assert not s2.recognise(str(he5))


def test_recognise_rejects_other_families_fixtures(tmp_path):
    enmap = pytest.importorskip("helpers.products_enmap")
    landsat = pytest.importorskip("helpers.products_landsat")
    assert not s2.recognise(enmap.make_enmap_product(str(tmp_path / "e")))
    assert not s2.recognise(enmap.make_enmap_zip(str(tmp_path / "ez")))
    folder = landsat.make_landsat_product(str(tmp_path / "l"))
    assert not s2.recognise(folder)
    assert not any(s2.recognise(os.path.join(folder, n)) for n in os.listdir(folder))
    assert not s2.recognise(landsat.make_landsat_tar(str(tmp_path / "lt")))


@pytest.mark.parametrize("as_zip", [False, True])
def test_read_baseline_04(tmp_path, as_zip):
    fx = make_s2_l2a(tmp_path / "src", as_zip=as_zip)
    layer = s2.read(fx.path, str(tmp_path / "work"))
    assert layer.family == "Sentinel-2 L2A" == s2.FAMILY
    assert layer.name == fx.name
    assert layer.date == "2022-07-24"
    ds = gdal.Open(layer.stack_path)
    assert (ds.RasterCount, ds.RasterXSize, ds.RasterYSize) == (10, SIZE_10M, SIZE_10M)
    gt = ds.GetGeoTransform()
    assert gt[1] == 10.0 and gt[5] == -10.0 and (gt[0], gt[3]) == (300000.0, 5900040.0)
    assert ds.GetSpatialRef().GetAuthorityCode(None) == "32633"
    assert ds.GetMetadataItem("ACQUISITION_DATE") == "2022-07-24"
    assert ds.GetMetadataItem("PROCESSING_BASELINE") == "04.00"
    for b, name in enumerate(ORDER):
        band = ds.GetRasterBand(b + 1)
        assert band.GetDescription() == name
        assert band.GetNoDataValue() == 0
        assert band.GetScale() == pytest.approx(1e-4)
        assert band.GetOffset() == pytest.approx(-0.1)
        assert float(band.GetMetadataItem("wavelength")) == pytest.approx(S2A[b])
        assert float(band.GetMetadataItem("fwhm")) == pytest.approx(S2A_FWHM[b])
        assert band.GetMetadataItem("wavelength_units") == "nm"
    ds = None
    got = _physical(layer.stack_path)
    for b, name in enumerate(ORDER):
        np.testing.assert_allclose(got[b], reflectance(fx, name), rtol=0, atol=1e-9, equal_nan=True)
    assert np.isnan(got[:, 11, 11]).all()  # DN 0: nodata in every band
    # Build MDD stack sees the same through inspect_layer.
    info = inspect_layer(layer.stack_path, layer.name)
    assert info.date == "2022-07-24"
    assert info.wavelengths == pytest.approx(S2A) and info.fwhm == pytest.approx(S2A_FWHM)
    assert info.scale == pytest.approx([1e-4] * 10) and info.offset == pytest.approx([-0.1] * 10)
    assert info.nodata == [0.0] * 10


def test_read_uses_native_resolution_files(tmp_path):
    fx = make_s2_l2a(tmp_path / "src", nodata_pixel=None)
    got = _physical(s2.read(fx.path, str(tmp_path / "w")).stack_path)
    # B02 from R10m (12 x 12 distinct values), not the R20m copy (written with other DNs).
    assert len(np.unique(got[0])) == SIZE_10M * SIZE_10M
    # B05 (20 m): each 20 m pixel covers 2 x 2 pixels of the 10 m grid.
    b05 = got[ORDER.index("B05")]
    np.testing.assert_allclose(b05[0:2, 0:2], (fx.dn["B05"][0, 0] - 1000) / 1e4)
    np.testing.assert_allclose(b05[::2, ::2], (fx.dn["B05"].astype(float) - 1000) / 1e4)


def test_read_baseline_03_has_no_offset_and_s2b_responses(tmp_path):
    fx = make_s2_l2a(tmp_path / "src", baseline="03.01")
    assert "N0301" in fx.name and fx.spacecraft == "S2B"
    layer = s2.read(fx.path, str(tmp_path / "work"))
    assert layer.date == "2021-06-15"
    ds = gdal.Open(layer.stack_path)
    for b in range(ds.RasterCount):
        band = ds.GetRasterBand(b + 1)
        assert band.GetScale() == pytest.approx(1e-4)
        assert band.GetOffset() == pytest.approx(0.0)
        assert float(band.GetMetadataItem("wavelength")) == pytest.approx(S2B[b])
    ds = None
    got = _physical(layer.stack_path)
    for b, name in enumerate(ORDER):
        np.testing.assert_allclose(got[b], reflectance(fx, name), atol=1e-9, equal_nan=True)
    assert np.nanmin(got) > 0.1  # DN / 10000, no -0.1


def test_quality_default_classes(tmp_path):
    fx = make_s2_l2a(tmp_path / "src")
    layer = s2.read(fx.path, str(tmp_path / "work"))
    q = layer.quality
    assert q is not None and q.rule.kind == "classes"
    assert q.path.endswith("_SCL_20m.jp2")
    scl = gdal.Open(q.path).ReadAsArray()
    np.testing.assert_array_equal(scl, fx.scl)
    hits = invalid_pixels(q.rule, scl)
    assert set(hits) == {
        "no_data",
        "saturated",
        "cloud_shadow",
        "cloud_medium_probability",
        "cloud_high_probability",
        "cirrus",
        "snow",
    }
    flagged = np.logical_or.reduce(list(hits.values()))
    expected = {rc for rc, v in SCL_PIXELS.items() if v in (0, 1, 3, 8, 9, 10, 11)}
    assert {tuple(rc) for rc in np.argwhere(flagged)} == expected
    assert {tuple(rc) for rc in np.argwhere(hits["cloud_shadow"])} == {(1, 0)}
    assert {tuple(rc) for rc in np.argwhere(hits["cloud_high_probability"])} == {(0, 0)}


def test_quality_zip_path_is_readable(tmp_path):
    fx = make_s2_l2a(tmp_path / "src", as_zip=True)
    layer = s2.read(fx.path, str(tmp_path / "work"))
    assert layer.quality.path.startswith("/vsizip/")
    np.testing.assert_array_equal(gdal.Open(layer.quality.path).ReadAsArray(), fx.scl)


def test_quality_chosen_classes_and_aliases(tmp_path):
    fx = make_s2_l2a(tmp_path / "src")
    layer = s2.read(fx.path, str(tmp_path / "work"), classes=["cloud", "Cloud_Shadow"])
    hits = invalid_pixels(layer.quality.rule, fx.scl)
    assert set(hits) == {"cloud_medium_probability", "cloud_high_probability", "cloud_shadow"}
    flagged = np.logical_or.reduce(list(hits.values()))
    assert {tuple(rc) for rc in np.argwhere(flagged)} == {(0, 0), (0, 1), (1, 0)}
    assert s2.scl_rule(["water"]).classes == {6: "water"}
    assert s2.scl_rule([]).classes == {}


def test_unknown_class_names_the_valid_ones(tmp_path):
    fx = make_s2_l2a(tmp_path / "src")
    with pytest.raises(ProductError, match=r"haze.*cloud_high_probability"):
        s2.read(fx.path, str(tmp_path / "work"), classes=["haze"])


@pytest.mark.parametrize(
    "omit, what", [(("B11_20m",), "B11_20m"), (("SCL_20m",), "SCL_20m"), (("B08_10m",), "B08_10m")]
)
def test_missing_band_file(tmp_path, omit, what):
    fx = make_s2_l2a(tmp_path / "src", omit=omit)
    assert s2.recognise(fx.path)
    with pytest.raises(ProductError, match=what):
        s2.read(fx.path, str(tmp_path / "work"))


def test_broken_metadata(tmp_path):
    fx = make_s2_l2a(tmp_path / "src")
    with open(os.path.join(fx.path, "MTD_MSIL2A.xml"), "w") as f:
        f.write("<n1:Level-2A_User_Product><unclosed>")
    with pytest.raises(ProductError, match="MTD_MSIL2A.xml"):
        s2.read(fx.path, str(tmp_path / "work"))


def test_metadata_offsets_and_fallbacks():
    xml = b"""<r><DATATAKE_SENSING_START>2023-01-02T10:00:00Z</DATATAKE_SENSING_START>
      <PROCESSING_BASELINE>05.09</PROCESSING_BASELINE><SPACECRAFT_NAME>Sentinel-2B</SPACECRAFT_NAME>
      <BOA_QUANTIFICATION_VALUE>10000</BOA_QUANTIFICATION_VALUE>
      <BOA_ADD_OFFSET_VALUES_LIST><BOA_ADD_OFFSET band_id="1">-1000</BOA_ADD_OFFSET>
      <BOA_ADD_OFFSET band_id="12">-900</BOA_ADD_OFFSET></BOA_ADD_OFFSET_VALUES_LIST></r>"""
    meta = s2.read_metadata(xml, "x")
    assert meta["date"] == "2023-01-02" and meta["spacecraft"] == "S2B" and meta["baseline"] == "05.09"
    assert meta["offsets"] == {1: -1000.0, 12: -900.0}
    # Baseline 04.00 on without the list: the -1000 offset still holds; no date in the XML: the name's.
    name = "S2A_MSIL2A_20220724T102041_N0400_R065_T33UUU_20220724T170140"
    meta = s2.read_metadata(b"<r><PROCESSING_BASELINE>04.00</PROCESSING_BASELINE></r>", name)
    assert meta["date"] == "2022-07-24" and meta["spacecraft"] == "S2A" and meta["quantification"] == 10000
    assert set(meta["offsets"].values()) == {-1000.0}
    with pytest.raises(ProductError, match="PRODUCT_START_TIME"):
        s2.read_metadata(b"<r/>", "product")


def test_open_product_finds_the_reader(tmp_path):
    fx = make_s2_l2a(tmp_path / "src", as_zip=True)
    layer = open_product(fx.path, str(tmp_path / "work"))
    assert layer is not None and layer.family == "Sentinel-2 L2A" and layer.date == fx.date
