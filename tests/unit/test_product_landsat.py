"""Landsat Collection 2 Level-2 products (folder, .tar, MTL file) read into one stack with QA_PIXEL."""

from __future__ import annotations

import os

import numpy as np
import pytest
from helpers import products_landsat as pl
from helpers.rasters import make_raster
from osgeo import gdal

from stsfusion.model.mdd.products import ProductError, invalid_pixels, landsat, open_product, readers
from stsfusion.model.mdd.raster_io import inspect_layer

OLI_WL = [443.0, 482.0, 561.5, 654.5, 865.0, 1608.5, 2200.5]
OLI_FWHM = [16.0, 60.0, 57.0, 37.0, 28.0, 85.0, 187.0]


def mask_of(pixels) -> np.ndarray:
    m = np.zeros((pl.H, pl.W), bool)
    for r, c in pixels:
        m[r, c] = True
    return m


def physical(path: str) -> np.ndarray:
    """The stack read back with GDAL: DN * scale + offset, NaN at nodata, (band, row, col)."""
    ds = gdal.Open(path)
    out = []
    for b in range(ds.RasterCount):
        band = ds.GetRasterBand(b + 1)
        v = band.ReadAsArray().astype(np.float64)
        phys = v * band.GetScale() + band.GetOffset()
        phys[v == band.GetNoDataValue()] = np.nan
        out.append(phys)
    return np.stack(out)


# ---- recognise ------------------------------------------------------------------------------------


def test_recognises_folder_mtl_files_and_tar(tmp_path):
    folder = pl.make_landsat_product(tmp_path / "a")
    assert landsat.recognise(folder)
    assert landsat.recognise(os.path.join(folder, f"{pl.LC09_ID}_MTL.txt"))
    xml_only = pl.make_landsat_product(tmp_path / "b", mtl=("xml",))
    assert landsat.recognise(xml_only)
    assert landsat.recognise(os.path.join(xml_only, f"{pl.LC09_ID}_MTL.xml"))
    assert landsat.recognise(pl.make_landsat_tar(tmp_path / "c"))
    assert landsat.recognise(pl.make_landsat_tar(tmp_path / "d", nested=True))
    assert landsat.recognise(pl.make_landsat_product(tmp_path / "e", pl.LT05_ID, "2007-07-15"))


def test_does_not_recognise_other_inputs(tmp_path):
    plain = make_raster(tmp_path / "plain.tif", np.zeros((3, 4, 5), np.int16), 32633)
    folder = pl.make_landsat_product(tmp_path / "a")
    one_band = os.path.join(folder, f"{pl.LC09_ID}_SR_B4.TIF")
    (tmp_path / "empty").mkdir()
    (tmp_path / "other.tar").write_bytes(b"\0" * 1024)
    (tmp_path / "notes_MTL.txt").write_text("GROUP = X\nEND_GROUP = X\nEND\n")
    # Look-alikes of the other families' products (their own metadata files, no Landsat MTL).
    safe = tmp_path / "S2A_MSIL2A_20220724T101031_N0400_R022_T33UUU_20220724T164521.SAFE"
    (safe / "GRANULE").mkdir(parents=True)
    (safe / "MTD_MSIL2A.xml").write_text("<n1:Level-2A_User_Product/>")
    enmap = tmp_path / "ENMAP01-____L2A-DT0000001234_20220724T101031Z_001_V010110_20220801T000000Z"
    enmap.mkdir()
    (enmap / f"{enmap.name}-METADATA.XML").write_text("<level_X/>")
    make_raster(enmap / f"{enmap.name}-SPECTRAL_IMAGE.TIF", np.zeros((3, 4, 5), np.int16), 32633)
    he5 = tmp_path / "PRS_L2D_STD_20220724101031_20220724101035_0001.he5"
    he5.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    for path in (plain, one_band, tmp_path / "empty", tmp_path / "other.tar", tmp_path / "notes_MTL.txt", safe,
                 enmap, he5, tmp_path / "missing"):  # fmt: skip
        assert not landsat.recognise(str(path)), path


def test_mtl_only_without_sr_bands_is_not_a_product_folder(tmp_path):
    folder = pl.make_landsat_product(tmp_path, omit=tuple(f"SR_B{b}.TIF" for b in pl.OLI_BANDS))
    assert not landsat.recognise(folder)


# ---- the MTL ------------------------------------------------------------------------------------


def test_parse_mtl_reads_groups_of_odl_and_xml(tmp_path):
    folder = pl.make_landsat_product(tmp_path, mtl=("txt", "xml"))
    for ext in ("txt", "xml"):
        with open(os.path.join(folder, f"{pl.LC09_ID}_MTL.{ext}"), encoding="utf-8") as f:
            mtl = landsat.parse_mtl(f.read())
        assert mtl["IMAGE_ATTRIBUTES"]["DATE_ACQUIRED"] == "2022-07-24"
        assert mtl["IMAGE_ATTRIBUTES"]["SPACECRAFT_ID"] == "LANDSAT_9"  # quotes gone
        assert float(mtl["LEVEL2_SURFACE_REFLECTANCE_PARAMETERS"]["REFLECTANCE_MULT_BAND_3"]) == 2.75e-05
        assert float(mtl["LEVEL2_SURFACE_REFLECTANCE_PARAMETERS"]["REFLECTANCE_ADD_BAND_3"]) == -0.2
        assert float(mtl["LEVEL1_RADIOMETRIC_RESCALING"]["REFLECTANCE_MULT_BAND_3"]) == 2e-05
        assert mtl["PRODUCT_CONTENTS"]["FILE_NAME_QUALITY_L1_PIXEL"] == f"{pl.LC09_ID}_QA_PIXEL.TIF"


# ---- read -----------------------------------------------------------------------------------------


def check_stack(product, tmp_path, wavelengths=OLI_WL, fwhm=OLI_FWHM, bands=pl.OLI_BANDS):
    assert product.family == "Landsat C2 L2" == landsat.FAMILY
    info = inspect_layer(product.stack_path)
    assert info.date == product.date
    assert info.band_count == len(bands)
    assert info.wavelengths == pytest.approx(wavelengths)
    assert info.fwhm == pytest.approx(fwhm)
    assert info.scale == pytest.approx([2.75e-05] * len(bands))  # the SR group's, not Level-1's 2e-05
    assert info.offset == pytest.approx([-0.2] * len(bands))
    assert info.nodata == [0.0] * len(bands)
    assert info.georeferenced and info.geotransform == (pl.ORIGIN[0], 30.0, 0.0, pl.ORIGIN[1], 0.0, -30.0)
    assert "UTM zone 33N" in info.crs_wkt
    phys = physical(product.stack_path)
    for i, b in enumerate(bands):
        np.testing.assert_allclose(phys[i], np.where(mask_of(pl.FILL_PX), np.nan, pl.reflectance(b)), rtol=1e-9)
    assert np.isnan(phys[:, 0, 0]).all()
    assert phys[0, 0, 1] == pytest.approx((9091 + 1000 + 100) * 2.75e-05 - 0.2)


def check_quality(product, expected: dict):
    q = product.quality
    assert q is not None and q.rule.kind == "bits"
    qa = gdal.Open(q.path).ReadAsArray()
    np.testing.assert_array_equal(qa, pl.qa_values())
    hits = invalid_pixels(q.rule, qa)
    assert set(hits) == set(expected)
    for name, pixels in expected.items():
        np.testing.assert_array_equal(hits[name], mask_of(pixels), err_msg=name)


DEFAULT = {
    "fill": pl.FILL_PX,
    "dilated_cloud": pl.DILATED_PX,
    "cirrus": [],
    "cloud": pl.CLOUD_PX,
    "cloud_shadow": pl.SHADOW_PX,
}


def test_reads_folder(tmp_path):
    product = landsat.read(pl.make_landsat_product(tmp_path / "in"), str(tmp_path / "work"))
    assert product.name == pl.LC09_ID
    assert product.date == "2022-07-24"
    assert product.stack_path.startswith(str(tmp_path / "work"))
    check_stack(product, tmp_path)
    check_quality(product, DEFAULT)
    assert product.quality.rule.classes == {0: "fill", 1: "dilated_cloud", 2: "cirrus", 3: "cloud", 4: "cloud_shadow"}
    ds = gdal.Open(product.stack_path)
    assert ds.GetMetadataItem("ACQUISITION_DATE") == "2022-07-24"
    assert ds.GetMetadataItem("SPACECRAFT_ID") == "LANDSAT_9"
    assert [ds.GetRasterBand(i + 1).GetDescription() for i in range(7)] == [f"SR_B{b}" for b in pl.OLI_BANDS]


def test_reads_mtl_file_xml_and_tar(tmp_path):
    folder = pl.make_landsat_product(tmp_path / "a")
    from_mtl = landsat.read(os.path.join(folder, f"{pl.LC09_ID}_MTL.txt"), str(tmp_path / "w1"))
    check_stack(from_mtl, tmp_path)
    check_quality(from_mtl, DEFAULT)

    xml_only = pl.make_landsat_product(tmp_path / "b", mtl=("xml",))
    check_stack(landsat.read(xml_only, str(tmp_path / "w2")), tmp_path)

    for nested in (False, True):
        tar = pl.make_landsat_tar(tmp_path / f"c{nested}", nested=nested)
        product = landsat.read(tar, str(tmp_path / f"w3{nested}"))
        assert product.quality.path.startswith("/vsitar/")
        check_stack(product, tmp_path)
        check_quality(product, DEFAULT)


def test_open_product_finds_the_landsat_reader(tmp_path):
    product = open_product(pl.make_landsat_tar(tmp_path), str(tmp_path / "work"))
    assert product is not None and product.family == landsat.FAMILY and product.date == "2022-07-24"
    assert open_product(make_raster(tmp_path / "p.tif", np.zeros((2, 2), np.uint8)), str(tmp_path / "w")) is None


def test_reads_thematic_mapper(tmp_path):
    product = landsat.read(pl.make_landsat_product(tmp_path, pl.LT05_ID, "2007-07-15"), str(tmp_path / "w"))
    assert product.date == "2007-07-15"
    check_stack(
        product,
        tmp_path,
        wavelengths=[485.0, 560.0, 660.0, 830.0, 1650.0, 2215.0],
        fwhm=[70.0, 80.0, 60.0, 140.0, 200.0, 270.0],
        bands=pl.TM_BANDS,
    )
    check_quality(product, DEFAULT)


def test_classes_choose_what_counts(tmp_path):
    folder = pl.make_landsat_product(tmp_path / "in")
    product = landsat.read(folder, str(tmp_path / "w"), ["cloud", "Snow", "cloud_shadow"])
    check_quality(product, {"cloud": pl.CLOUD_PX, "snow": pl.SNOW_PX, "cloud_shadow": pl.SHADOW_PX})
    product = landsat.read(folder, str(tmp_path / "w"), ["water"])
    check_quality(product, {"water": pl.WATER_PX})
    product = landsat.read(folder, str(tmp_path / "w"), [])
    check_quality(product, {})
    with pytest.raises(ProductError, match=r"cloudz.*choose from fill, dilated_cloud, cirrus, cloud"):
        landsat.read(folder, str(tmp_path / "w"), ["cloud", "cloudz"])


def test_scale_and_offset_come_from_the_mtl(tmp_path):
    folder = pl.make_landsat_product(tmp_path / "in", scale=1e-4, offset=-0.1)
    info = inspect_layer(landsat.read(folder, str(tmp_path / "w")).stack_path)
    assert info.scale == pytest.approx([1e-4] * 7) and info.offset == pytest.approx([-0.1] * 7)


# ---- broken products ------------------------------------------------------------------------------


def test_missing_band_or_qa_is_an_error_naming_the_files(tmp_path):
    folder = pl.make_landsat_product(tmp_path / "a", omit=("SR_B4.TIF", "QA_PIXEL.TIF"))
    assert landsat.recognise(folder)
    with pytest.raises(ProductError, match=r"missing .*_SR_B4\.TIF, .*_QA_PIXEL\.TIF"):
        landsat.read(folder, str(tmp_path / "w"))
    tar = pl.make_landsat_tar(tmp_path / "b", omit=("SR_B7.TIF",))
    with pytest.raises(ProductError, match=r"missing .*_SR_B7\.TIF"):
        landsat.read(tar, str(tmp_path / "w"))


def test_incomplete_or_unreadable_mtl_is_an_error(tmp_path):
    folder = pl.make_landsat_product(tmp_path / "a")
    mtl = os.path.join(folder, f"{pl.LC09_ID}_MTL.txt")
    with open(mtl, encoding="utf-8") as f:
        text = f.read()
    with open(mtl, "w", encoding="utf-8") as f:
        f.write(text.replace("    DATE_ACQUIRED = 2022-07-24\n", ""))
    with pytest.raises(ProductError, match="DATE_ACQUIRED"):
        landsat.read(folder, str(tmp_path / "w"))
    with open(mtl, "w", encoding="utf-8") as f:
        f.write(text.replace("    REFLECTANCE_ADD_BAND_5 = -0.2\n", ""))
    with pytest.raises(ProductError, match="REFLECTANCE_ADD_BAND_5"):
        landsat.read(folder, str(tmp_path / "w"))
    with open(mtl, "w", encoding="utf-8") as f:
        f.write(text.replace("LEVEL2_SURFACE_REFLECTANCE_PARAMETERS", "SOMETHING_ELSE"))
    with pytest.raises(ProductError, match="LEVEL2_SURFACE_REFLECTANCE_PARAMETERS"):
        landsat.read(folder, str(tmp_path / "w"))
    xml_folder = pl.make_landsat_product(tmp_path / "b", mtl=("xml",))
    with open(os.path.join(xml_folder, f"{pl.LC09_ID}_MTL.xml"), "w", encoding="utf-8") as f:
        f.write("<LANDSAT_METADATA_FILE><broken")
    with pytest.raises(ProductError, match="cannot be read"):
        landsat.read(xml_folder, str(tmp_path / "w"))


def test_level1_and_several_products_are_errors(tmp_path):
    l1 = "LC09_L1TP_193023_20220724_20230406_02_T1"
    (tmp_path / "l1").mkdir()
    (tmp_path / "l1" / f"{l1}_MTL.txt").write_text(
        "GROUP = LANDSAT_METADATA_FILE\nEND_GROUP = LANDSAT_METADATA_FILE\nEND\n"
    )
    with pytest.raises(ProductError, match="only Collection 2 Level-2"):
        landsat.read(str(tmp_path / "l1" / f"{l1}_MTL.txt"), str(tmp_path / "w"))
    two = tmp_path / "two"
    pl.make_landsat_product(two, pl.LC09_ID)
    pl.make_landsat_product(two, pl.LT05_ID, "2007-07-15")
    for sub in os.listdir(two):  # both products' files in one folder
        for name in os.listdir(two / sub):
            os.replace(two / sub / name, two / name)
    with pytest.raises(ProductError, match="holds 2 products"):
        landsat.read(str(two), str(tmp_path / "w"))


def test_other_families_fixtures_are_not_landsat_and_landsat_is_no_other_family(tmp_path):
    """Against the other readers' own fixtures, where those helpers exist."""
    others = []
    try:
        from helpers import products_enmap

        others += [
            products_enmap.make_enmap_product(tmp_path / "enmap"),
            products_enmap.make_enmap_zip(tmp_path / "ez"),
        ]
    except ImportError:
        pass
    try:
        from helpers import products_sentinel2

        others += [products_sentinel2.make_s2_l2a(tmp_path / "s2").path]
        others += [products_sentinel2.make_s2_l2a(tmp_path / "s2z", as_zip=True).path]
    except ImportError:
        pass
    for path in others:
        assert not landsat.recognise(path), path
    ours = [pl.make_landsat_product(tmp_path / "l"), pl.make_landsat_tar(tmp_path / "t")]
    ours.append(os.path.join(ours[0], f"{pl.LC09_ID}_MTL.txt"))
    for reader in readers():
        if reader is not landsat:
            for path in ours:
                assert not reader.recognise(path), (reader.FAMILY, path)
