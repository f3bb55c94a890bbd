"""EnMAP L2A reader (model/mdd/products/enmap.py) on product-shaped fixtures (helpers/products_enmap.py)."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest
from helpers import products_enmap as fx
from helpers.rasters import make_raster
from osgeo import gdal

from stsfusion.model.mdd.products import (
    ProductError,
    QualityRule,
    enmap,
    family_classes,
    invalid_pixels,
    open_product,
    unknown_classes,
)
from stsfusion.model.mdd.raster_io import inspect_layer

gdal.UseExceptions()


@pytest.fixture
def product(tmp_path):
    return fx.make_enmap_product(tmp_path / "in")


@pytest.fixture
def product_zip(tmp_path):
    return fx.make_enmap_zip(tmp_path / "zipped")


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


def read_mask(path: str) -> np.ndarray:
    ds = gdal.Open(path)  # kept alive while its band is read
    return ds.GetRasterBand(1).ReadAsArray()


# ---- recognise --------------------------------------------------------------------------------


def test_recognises_folder_zip_and_its_files(product, product_zip, tmp_path):
    assert enmap.recognise(product)
    assert enmap.recognise(product_zip)
    assert enmap.recognise(os.path.join(product, f"{fx.PRODUCT_ID}-METADATA.XML"))
    assert enmap.recognise(os.path.join(product, f"{fx.PRODUCT_ID}-SPECTRAL_IMAGE.TIF"))
    assert enmap.recognise(str(tmp_path / "in"))  # the folder that holds the product folder


def test_recognises_renamed_product_from_its_metadata_level(tmp_path):
    folder = fx.make_enmap_product(tmp_path, product_id="potsdam_tile")
    assert enmap.recognise(folder)


def test_does_not_recognise_other_inputs(tmp_path):
    plain = make_raster(tmp_path / "plain" / "S2_20220724.tif", np.zeros((3, 4, 4), np.int16))
    assert not enmap.recognise(plain)
    assert not enmap.recognise(str(tmp_path / "plain"))
    (tmp_path / "empty").mkdir()
    assert not enmap.recognise(str(tmp_path / "empty"))
    assert not enmap.recognise(str(tmp_path / "missing"))
    # a quality layer of the product is no product
    folder = fx.make_enmap_product(tmp_path / "p")
    assert not enmap.recognise(os.path.join(folder, f"{fx.PRODUCT_ID}-QL_QUALITY_CLOUD.TIF"))
    # look-alikes of the other families
    landsat = tmp_path / "LC08_L2SP_193023_20220724_20220802_02_T1"
    make_raster(landsat / f"{landsat.name}_SR_B1.TIF", np.zeros((4, 4), np.uint16))
    (landsat / f"{landsat.name}_MTL.txt").write_text("GROUP = LANDSAT_METADATA_FILE\n")
    assert not enmap.recognise(str(landsat))
    assert not enmap.recognise(str(landsat / f"{landsat.name}_MTL.txt"))
    safe = tmp_path / "S2A_MSIL2A_20220724T101601_N0400_R065_T33UUU_20220724T165304.SAFE"
    safe.mkdir()
    (safe / "MTD_MSIL2A.xml").write_text("<n1:Level-2A_User_Product/>")
    assert not enmap.recognise(str(safe))
    he5 = tmp_path / "PRS_L2D_STD_20220724101012_20220724101016_0001.he5"
    he5.write_bytes(b"\x89HDF\r\n\x1a\n")
    assert not enmap.recognise(str(he5))
    other_zip = tmp_path / "other.zip"
    with zipfile.ZipFile(other_zip, "w") as z:
        z.write(plain, "S2_20220724.tif")
    assert not enmap.recognise(str(other_zip))


def test_does_not_recognise_other_enmap_levels(tmp_path):
    l1c_id = fx.PRODUCT_ID.replace("L2A", "L1C")
    xml = fx.metadata_xml([]).replace("L2A", "L1C")
    folder = fx.make_enmap_product(tmp_path, product_id=l1c_id, xml_text=xml)
    assert not enmap.recognise(folder)


# ---- read ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["folder", "zip", "metadata", "bsq"])
def test_read_gives_date_bands_scaling_nodata(kind, tmp_path):
    if kind == "zip":
        path = fx.make_enmap_zip(tmp_path / "z")
    elif kind == "bsq":
        path = fx.make_enmap_product(tmp_path / "b", spectral="BSQ")
    else:
        path = fx.make_enmap_product(tmp_path / "f")
        if kind == "metadata":
            path = os.path.join(path, f"{fx.PRODUCT_ID}-METADATA.XML")
    layer = enmap.read(path, str(tmp_path / "work"))
    assert layer.family == enmap.FAMILY == "EnMAP L2A"
    assert layer.name == fx.PRODUCT_ID
    assert layer.date == fx.DATE
    assert os.path.dirname(layer.stack_path) == str(tmp_path / "work")

    info = inspect_layer(layer.stack_path, layer.name)
    assert info.date == fx.DATE
    assert info.band_count == 6
    np.testing.assert_allclose(info.wavelengths, fx.WAVELENGTHS)
    np.testing.assert_allclose(info.fwhm, fx.FWHM)
    np.testing.assert_allclose(info.scale, fx.GAINS)
    np.testing.assert_allclose(info.offset, fx.OFFSETS)
    assert info.nodata == [fx.NODATA] * 6
    assert info.georeferenced and "32633" in info.crs_wkt
    assert info.geotransform == (fx.ORIGIN[0], fx.PIXEL, 0.0, fx.ORIGIN[1], 0.0, -fx.PIXEL)
    ds = gdal.Open(layer.stack_path)
    assert ds.GetRasterBand(1).GetMetadataItem("wavelength_units") == "nm"
    assert ds.GetMetadataItem("ACQUISITION_DATE") == fx.DATE
    np.testing.assert_allclose(physical(layer.stack_path), fx.reflectance(), equal_nan=True)


def test_open_product_picks_the_enmap_reader(product, tmp_path):
    layer = open_product(product, str(tmp_path / "work"))
    assert layer is not None and layer.family == "EnMAP L2A"


def test_quality_default_flags_exactly_the_masked_pixels(product_zip, tmp_path):
    layer = enmap.read(product_zip, str(tmp_path / "work"))
    q = layer.quality
    assert q is not None and q.path is None and q.rule.kind == "mask"
    assert list(q.sources) == ["cloud", "cirrus", "haze", "snow", "cloud_shadow"]
    union = np.zeros(fx.SHAPE, bool)
    for name, (src, rule) in enmap.source_rules(q).items():
        assert src.startswith("/vsizip/")
        flagged = invalid_pixels(rule, read_mask(src))
        assert list(flagged) == [name]
        np.testing.assert_array_equal(flagged[name], fx.mask(name))
        # the rule as Build MDD stack builds it from the source's name
        np.testing.assert_array_equal(
            invalid_pixels(QualityRule("mask", {1: name}), read_mask(src))[name], fx.mask(name)
        )
        union |= flagged[name]
    assert union.sum() == sum(len(v) for v in fx.MASKED.values())


def test_quality_classes_choose_the_sources(product, tmp_path):
    layer = enmap.read(product, str(tmp_path / "w1"), ["cloud", "Shadow"])
    assert list(layer.quality.sources) == ["cloud", "cloud_shadow"]
    assert layer.quality.sources["cloud_shadow"].endswith("-QL_QUALITY_CLOUDSHADOW.TIF")
    assert layer.quality.sources["cloud"].endswith("-QL_QUALITY_CLOUD.TIF")
    assert enmap.read(product, str(tmp_path / "w2"), []).quality is None


def test_unknown_class_names_the_valid_ones(product, tmp_path):
    with pytest.raises(ProductError, match="cloud, cirrus, haze, snow, cloud_shadow"):
        enmap.read(product, str(tmp_path / "w"), ["cloud", "saturated"])


def test_one_mask_classes_list_serves_every_family(product, tmp_path):
    # Sentinel-2's names are ignored by EnMAP, which takes the ones it knows ("Shadow" is its alias).
    names = ["cloud_high_probability", "Shadow", "fill"]
    assert family_classes(enmap, names) == ["Shadow"]
    layer = open_product(product, str(tmp_path / "w"), names)
    assert list(layer.quality.sources) == ["cloud_shadow"]
    assert open_product(product, str(tmp_path / "w2"), ["cloud_high_probability"]).quality is None
    assert unknown_classes(names) == [] and unknown_classes(["clouds", "smoke"]) == ["smoke"]
    assert unknown_classes(names, {"EnMAP L2A"}) == ["cloud_high_probability", "fill"]


def test_source_rules_carry_the_buffer(product, tmp_path):
    layer = enmap.read(product, str(tmp_path / "w"))
    layer.quality.rule.buffer_px = 2
    assert {rule.buffer_px for _, rule in enmap.source_rules(layer.quality).values()} == {2}


def test_date_from_the_name_when_metadata_has_none(tmp_path):
    folder = fx.make_enmap_product(tmp_path, start_time=None)
    assert enmap.read(folder, str(tmp_path / "w")).date == "2022-07-24"


# ---- broken products --------------------------------------------------------------------------


def test_missing_spectral_image(tmp_path):
    folder = fx.make_enmap_product(tmp_path, omit=("SPECTRAL_IMAGE",))
    assert enmap.recognise(folder)
    with pytest.raises(ProductError, match="SPECTRAL_IMAGE"):
        enmap.read(folder, str(tmp_path / "w"))


def test_missing_metadata(tmp_path):
    folder = fx.make_enmap_product(tmp_path, omit=("METADATA",))
    assert enmap.recognise(folder)
    with pytest.raises(ProductError, match="METADATA.XML"):
        enmap.read(folder, str(tmp_path / "w"))


def test_missing_quality_layer(tmp_path):
    folder = fx.make_enmap_product(tmp_path, omit=("QL_QUALITY_SNOW",))
    with pytest.raises(ProductError, match="QL_QUALITY_SNOW"):
        enmap.read(folder, str(tmp_path / "w"))
    assert list(enmap.read(folder, str(tmp_path / "w2"), ["cloud"]).quality.sources) == ["cloud"]


def test_unreadable_metadata(tmp_path):
    folder = fx.make_enmap_product(tmp_path, xml_text="<level_X><base>")
    with pytest.raises(ProductError, match="not readable XML"):
        enmap.read(folder, str(tmp_path / "w"))


def test_band_count_mismatch(tmp_path):
    folder = fx.make_enmap_product(tmp_path, xml_bands=5)
    with pytest.raises(ProductError, match="6 bands but METADATA.XML describes 5"):
        enmap.read(folder, str(tmp_path / "w"))


def test_does_not_recognise_the_other_families_fixtures(tmp_path):
    landsat = pytest.importorskip("helpers.products_landsat")
    sentinel2 = pytest.importorskip("helpers.products_sentinel2")
    folder = landsat.make_landsat_product(tmp_path / "l", mtl=("txt", "xml"))
    assert not enmap.recognise(folder)
    assert not enmap.recognise(landsat.make_landsat_tar(tmp_path / "lt", nested=True))
    for mtl in sorted(os.listdir(folder)):
        assert not enmap.recognise(os.path.join(folder, mtl))
    assert not enmap.recognise(sentinel2.make_s2_l2a(tmp_path / "s").path)
    assert not enmap.recognise(sentinel2.make_s2_l2a(tmp_path / "sz", as_zip=True).path)
