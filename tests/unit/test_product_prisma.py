"""PRISMA L2D reader (model/mdd/products/prisma.py) on product-shaped .he5 fixtures
(helpers/products_prisma.py, written with h5py; the reader reads them with GDAL only)."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest
from helpers import products_prisma as fx
from helpers.rasters import make_raster
from osgeo import gdal

from stsfusion.model.mdd.products import ProductError, invalid_pixels, open_product, prisma
from stsfusion.model.mdd.raster_io import inspect_layer

gdal.UseExceptions()

L2C_ID = fx.PRODUCT_ID.replace("L2D", "L2C")


@pytest.fixture
def he5(tmp_path):
    return fx.make_prisma_he5(tmp_path / "in")


@pytest.fixture
def product_zip(tmp_path):
    return fx.make_prisma_zip(tmp_path / "zipped")


def physical(path: str) -> np.ndarray:
    """The stack's (band, row, col) as DN * scale + offset, NaN where nodata."""
    ds = gdal.Open(path)
    out = []
    for b in range(ds.RasterCount):
        band = ds.GetRasterBand(b + 1)
        v = band.ReadAsArray().astype(np.float64)
        p = v * band.GetScale() + band.GetOffset()
        p[v == band.GetNoDataValue()] = np.nan
        out.append(p)
    return np.stack(out)


def read_band(path: str, band: int = 1) -> np.ndarray:
    ds = gdal.Open(path)  # kept alive while its band is read
    return ds.GetRasterBand(band).ReadAsArray()


def flagged(layer) -> dict:
    """{class: bool (row, col)} of the layer's quality raster under its rule."""
    return invalid_pixels(layer.quality.rule, read_band(layer.quality.path))


# ---- recognise ---------------------------------------------------------------------------------


def test_recognises_he5_zip_and_folder(he5, product_zip, tmp_path):
    assert prisma.recognise(he5)
    assert prisma.recognise(product_zip)
    assert prisma.recognise(fx.make_prisma_zip(tmp_path / "nested", nested=True))
    assert prisma.recognise(os.path.dirname(he5))  # the folder holding the .he5 (an unpacked zip)
    assert prisma.recognise(str(tmp_path / "in" / ".." / "in"))


def test_recognises_a_renamed_he5_by_its_attributes(tmp_path):
    assert prisma.recognise(fx.make_prisma_he5(tmp_path, name="potsdam_hyperspectral"))


def test_recognises_other_levels_so_that_read_can_refuse_them(tmp_path):
    assert prisma.recognise(fx.make_prisma_he5(tmp_path, name=L2C_ID, level="2C"))
    l1 = "PRS_L1_STD_OFFL_20200612102345_20200612102350_0001"
    assert prisma.recognise(fx.make_prisma_he5(tmp_path, name=l1, level="1"))


def test_does_not_recognise_other_inputs(tmp_path):
    plain = make_raster(tmp_path / "plain" / "S2_20220724.tif", np.zeros((3, 4, 4), np.int16))
    assert not prisma.recognise(plain)
    assert not prisma.recognise(str(tmp_path / "plain"))
    assert not prisma.recognise(str(tmp_path / "missing.he5"))
    (tmp_path / "empty").mkdir()
    assert not prisma.recognise(str(tmp_path / "empty"))
    other_zip = tmp_path / "other.zip"
    with zipfile.ZipFile(other_zip, "w") as z:
        z.write(plain, "S2_20220724.tif")
    assert not prisma.recognise(str(other_zip))
    import h5py

    with h5py.File(tmp_path / "model_output.h5", "w") as f:  # an HDF5 file of something else
        f.attrs["title"] = "not PRISMA"
        f.create_dataset("a", data=np.zeros((2, 2)))
        f.create_dataset("b", data=np.zeros((2, 2)))
    assert not prisma.recognise(str(tmp_path / "model_output.h5"))
    (tmp_path / "broken.he5").write_bytes(b"\x89HDF\r\n\x1a\n")  # unnamed and unreadable
    assert not prisma.recognise(str(tmp_path / "broken.he5"))


def test_does_not_recognise_the_other_families_fixtures(tmp_path):
    from helpers import products_enmap, products_landsat, products_sentinel2

    assert not prisma.recognise(products_enmap.make_enmap_product(tmp_path / "e"))
    assert not prisma.recognise(products_enmap.make_enmap_zip(tmp_path / "ez"))
    assert not prisma.recognise(products_landsat.make_landsat_product(tmp_path / "l"))
    assert not prisma.recognise(products_landsat.make_landsat_tar(tmp_path / "lt"))
    assert not prisma.recognise(products_sentinel2.make_s2_l2a(tmp_path / "s").path)
    assert not prisma.recognise(products_sentinel2.make_s2_l2a(tmp_path / "sz", as_zip=True).path)


def test_the_other_readers_do_not_take_the_prisma_fixture(he5, product_zip):
    from stsfusion.model.mdd.products import enmap, landsat, sentinel2

    for reader in (enmap, landsat, sentinel2):
        assert not reader.recognise(he5) and not reader.recognise(product_zip)


# ---- read ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["he5", "zip", "nested_zip", "folder"])
def test_read_gives_date_ascending_bands_scaling_nodata(kind, tmp_path):
    if kind == "he5":
        path = fx.make_prisma_he5(tmp_path / "f")
    elif kind == "folder":
        path = os.path.dirname(fx.make_prisma_he5(tmp_path / "f"))
    else:
        path = fx.make_prisma_zip(tmp_path / "z", nested=kind == "nested_zip")
    work = str(tmp_path / "work")
    layer = prisma.read(path, work)
    assert layer.family == prisma.FAMILY == "PRISMA L2D"
    assert layer.name == fx.PRODUCT_ID
    assert layer.date == fx.DATE == "2020-06-12"
    assert os.path.dirname(layer.stack_path) == work
    # a zip's .he5 was copied into work_dir to be read, and removed afterwards
    assert sorted(os.listdir(work)) == [f"{fx.PRODUCT_ID}.tif", f"{fx.PRODUCT_ID}_quality.tif"]

    info = inspect_layer(layer.stack_path, layer.name)
    assert info.date == fx.DATE
    assert info.band_count == 9  # 6 + 6, less the two zero-wavelength bands and the VNIR 975.2 nm
    expected_wl = [452.1, 559.8, 660.3, 865.5, 948.1, 1020.9, 1240.4, 1650.7, 2195.3]
    assert info.wavelengths == expected_wl == sorted(info.wavelengths) == fx.WAVELENGTHS  # as the attributes say
    assert info.fwhm == [8.9, 9.2, 10.4, 12.6, 9.8, 12.5, 14.2, 12.9, 11.0]
    np.testing.assert_allclose(info.scale, [1 / 65535] * 4 + [0.92 / 65535] * 5, rtol=1e-12)
    assert info.offset == [0.0] * 4 + [-0.02] * 5
    assert info.nodata == [0] * 9
    assert info.georeferenced and "32632" in info.crs_wkt
    assert info.geotransform == (500010.0, 30.0, 0.0, 5100020.0, 0.0, -30.0)
    assert (info.width, info.height) == (10, 12)
    ds = gdal.Open(layer.stack_path)
    assert ds.GetRasterBand(1).GetMetadataItem("wavelength_units") == "nm"
    assert ds.GetMetadataItem("ACQUISITION_DATE") == "2020-06-12"
    assert ds.GetRasterBand(5).GetDescription() == "SWIR band 5 (948.1 nm)"

    values = physical(layer.stack_path)
    np.testing.assert_allclose(values, fx.reflectance(), rtol=1e-6, equal_nan=True)
    # spelled out: 452.1 nm is VNIR cube band 6, DN 1000 + 2000*5 + 50*2 + 3*3 at (2, 3)
    assert values[0, 2, 3] == pytest.approx(11109 / 65535, rel=1e-6)
    # 2195.3 nm is SWIR cube band 1, DN 1500 + 40*5 + 7*5 at (5, 5): -0.02 + DN * 0.92 / 65535
    assert values[8, 5, 5] == pytest.approx(-0.02 + 1735 * 0.92 / 65535, rel=1e-6)
    assert values[8, 5, 5] == pytest.approx(0.0043565, abs=1e-6)
    # 0 in every band: nodata (3 pixels); a 0 in one band only: 1 DN, the pixel stays valid
    assert np.isnan(values).all(axis=0).sum() == 3 and not np.isnan(values[:, 6, 3]).any()
    assert values[2, 6, 3] == pytest.approx(1 / 65535)


def test_open_product_picks_the_prisma_reader(product_zip, tmp_path):
    layer = open_product(product_zip, str(tmp_path / "work"))
    assert layer is not None and layer.family == "PRISMA L2D"


def test_renamed_product_keeps_its_name_and_date(tmp_path):
    layer = prisma.read(fx.make_prisma_he5(tmp_path, name="potsdam_hyperspectral"), str(tmp_path / "w"))
    assert layer.name == "potsdam_hyperspectral" and layer.date == fx.DATE


def test_blocks_are_tile_rows_within_the_memory_budget():
    rows = prisma._block_rows(1200, 1213, 66 + 173)  # a real L2D: ~1200 x 1200 px, 239 bands
    assert rows % 16 == 0 and 16 <= rows <= 256
    assert rows * 1213 * 239 * 2 * 2 <= prisma.BLOCK_MEMORY
    assert prisma._block_rows(12, 10, 12) == 256


def test_rows_are_read_in_blocks(he5, tmp_path, monkeypatch):
    monkeypatch.setattr(prisma, "_block_rows", lambda rows, cols, bands: 5)  # 12 rows: 5 + 5 + 2
    layer = prisma.read(he5, str(tmp_path / "w"), ["cloud", "negative"])
    np.testing.assert_allclose(physical(layer.stack_path), fx.reflectance(), rtol=1e-6, equal_nan=True)
    hits = flagged(layer)
    np.testing.assert_array_equal(hits["cloud"], fx.mask("cloud"))
    np.testing.assert_array_equal(hits["negative"], fx.mask("negative"))


# ---- quality ------------------------------------------------------------------------------------


def test_default_quality_flags_exactly_the_cloudy_pixels(product_zip, tmp_path):
    layer = prisma.read(product_zip, str(tmp_path / "work"))
    q = layer.quality
    assert q is not None and q.rule.kind == "bits" and q.rule.classes == {0: "cloud"}
    assert q.path == os.path.join(str(tmp_path / "work"), f"{fx.PRODUCT_ID}_quality.tif")
    hits = flagged(layer)
    assert list(hits) == ["cloud"]
    np.testing.assert_array_equal(hits["cloud"], fx.mask("cloud"))
    assert hits["cloud"].sum() == 4  # Cloud_Mask 1 only: 10 (unclassified) and 255 (error) are not clouds
    assert not hits["cloud"][fx.UNCLASSIFIED_PX] and not hits["cloud"][fx.ERROR_PX]
    q_ds = gdal.Open(q.path)
    assert q_ds.GetGeoTransform() == gdal.Open(layer.stack_path).GetGeoTransform()


def test_error_matrix_classes_flag_kept_bands_only(he5, tmp_path):
    layer = prisma.read(he5, str(tmp_path / "w"), ["Cloud", "invalid", "negative", "saturated"])
    assert layer.quality.rule.classes == {0: "cloud", 1: "invalid", 2: "negative", 3: "saturated"}
    hits = flagged(layer)
    for name in ("cloud", "invalid", "negative", "saturated"):
        np.testing.assert_array_equal(hits[name], fx.mask(name), err_msg=name)
    union = np.any(list(hits.values()), axis=0)
    assert union.sum() == 4 + 3
    assert not union[7, 1] and not union[1, 1]  # flags in the dropped overlap and zero bands


def test_classes_choose_what_is_masked(he5, tmp_path):
    layer = prisma.read(he5, str(tmp_path / "w1"), ["saturated"])
    assert layer.quality.rule.classes == {3: "saturated"}
    assert flagged(layer)["saturated"].sum() == 1 and flagged(layer)["saturated"][10, 3]
    assert prisma.read(he5, str(tmp_path / "w2"), []).quality is None
    assert list(prisma.read(he5, str(tmp_path / "w3"), ["clouds", "cloud"]).quality.rule.classes.values()) == ["cloud"]


def test_unknown_class_names_the_valid_ones(he5, tmp_path):
    with pytest.raises(ProductError, match="cloud, invalid, negative, saturated") as e:
        prisma.read(he5, str(tmp_path / "w"), ["cloud", "cloud_shadow"])
    assert "'cloud_shadow'" in str(e.value)


def test_without_a_cloud_mask_the_default_masks_nothing_and_asking_for_cloud_fails(tmp_path):
    he5 = fx.make_prisma_he5(tmp_path / "in", cloud_mask_present=False)  # as real L2D files
    layer = prisma.read(he5, str(tmp_path / "w1"))
    assert layer.quality is None
    assert "no Cloud_Mask" in gdal.Open(layer.stack_path).GetMetadataItem("QUALITY_NOTE")
    with pytest.raises(ProductError, match="has no Cloud_Mask.*leave cloud out of MASK_CLASSES"):
        prisma.read(he5, str(tmp_path / "w2"), ["cloud"])
    invalid = prisma.read(he5, str(tmp_path / "w3"), ["invalid"])
    np.testing.assert_array_equal(flagged(invalid)["invalid"], fx.mask("invalid"))


# ---- broken products and other levels -------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "level", "shown"),
    [(L2C_ID, "2C", "level L2C"), ("PRS_L1_STD_OFFL_20200612102345_20200612102350_0001", "1", "level L1")],
)
def test_other_levels_are_refused_with_the_fix(name, level, shown, tmp_path):
    path = fx.make_prisma_he5(tmp_path, name=name, level=level)
    with pytest.raises(ProductError, match=f"{shown}: only L2D is read.*not geocoded.*Order the L2D product"):
        prisma.read(path, str(tmp_path / "w"))


@pytest.mark.parametrize(
    ("omit", "message"),
    [
        (("List_Cw_Swir",), "no List_Cw_Swir / List_Fwhm_Swir root attribute.*wavelengths are unknown"),
        (("List_Fwhm_Vnir",), "no List_Cw_Vnir / List_Fwhm_Vnir"),
        (("L2ScaleVnirMax",), "no numeric root attribute L2ScaleVnirMax .the reflectance scaling"),
        (("Epsg_Code",), "no numeric root attribute Epsg_Code"),
        (("Product_LRcorner_northing",), "Product_LRcorner_northing"),
        (("SWIR_Cube",), "no /HDFEOS/SWATHS/PRS_L2D_HCO/Data Fields/SWIR_Cube"),
    ],
)
def test_missing_fields_say_what_and_how_to_fix(omit, message, tmp_path):
    path = fx.make_prisma_he5(tmp_path, omit=omit)
    with pytest.raises(ProductError, match=message):
        prisma.read(path, str(tmp_path / "w"))


def test_missing_error_matrix_only_matters_when_its_classes_are_asked_for(tmp_path):
    path = fx.make_prisma_he5(tmp_path, omit=("VNIR_PIXEL_L2_ERR_MATRIX",))
    assert prisma.read(path, str(tmp_path / "w1")).quality.rule.classes == {0: "cloud"}
    with pytest.raises(ProductError, match="VNIR_PIXEL_L2_ERR_MATRIX"):
        prisma.read(path, str(tmp_path / "w2"), ["invalid"])


def test_date_from_the_name_when_the_start_time_is_missing(tmp_path):
    layer = prisma.read(fx.make_prisma_he5(tmp_path / "a", start_time=None), str(tmp_path / "w1"))
    assert layer.date == "2020-06-12"
    renamed = fx.make_prisma_he5(tmp_path / "b", name="scene", start_time=None)
    with pytest.raises(ProductError, match="DATES"):
        prisma.read(renamed, str(tmp_path / "w2"))


def test_corners_that_disagree_with_the_cubes(tmp_path):
    path = fx.make_prisma_he5(tmp_path, shape=(40, 10), cloud_mask_present=False)
    with pytest.raises(ProductError, match="corner attributes span 12 rows of 30 m but its cubes have 40"):
        prisma.read(path, str(tmp_path / "w"), [])


def test_unreadable_file_and_zip_without_he5(tmp_path):
    broken = tmp_path / f"{fx.PRODUCT_ID}.he5"
    broken.write_bytes(b"\x89HDF\r\n\x1a\n")
    assert prisma.recognise(str(broken))  # by its name
    with pytest.raises(ProductError, match="cannot be read by GDAL's HDF5 driver"):
        prisma.read(str(broken), str(tmp_path / "w"))
    empty_zip = tmp_path / f"{fx.PRODUCT_ID}.zip"
    with zipfile.ZipFile(empty_zip, "w") as z:
        z.writestr("readme.txt", "nothing")
    assert not prisma.recognise(str(empty_zip))
    with pytest.raises(ProductError, match="holds 0 PRISMA .he5 files"):
        prisma.read(str(empty_zip), str(tmp_path / "w"))
