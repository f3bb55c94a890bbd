"""Products straight into Build MDD stack through qgis_process.bin: each family's fixture (the real
folder layout, metadata and quality layer) builds into an MDD with the right date, wavelengths,
reflectance scaling and masked pixels; MASK_CLASSES and MASK_BUFFER change what is masked."""

import json
import os

import numpy as np
import pytest
from helpers import products_enmap as enmap
from helpers import products_landsat as landsat
from helpers import products_sentinel2 as s2
from helpers.qgis_process import run_qgis_process, run_qgis_process_json

from stsfusion.model.mdd.format import MDD, read_values

pytestmark = pytest.mark.slow


def _build(tmp_path, product, *extra):
    """The product in all three roles (one grid, so the pixels can be compared one to one)."""
    out = str(tmp_path / "mdd.json")
    params = [f"{role}_PRODUCTS={product}" for role in ("FINE_MS", "DENSE_MS", "HS")]
    result = run_qgis_process_json("stsfusion:buildmdd", [*params, *extra, f"OUTPUT={out}"])
    assert result["results"]["OUTPUT"] == out
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".stsfusion_products_")]  # VRTs removed
    return MDD.open(out)


def test_landsat_tar_builds_with_its_date_scaling_and_qa_pixel_mask(tmp_path):
    product = landsat.make_landsat_tar(tmp_path / "in")
    mdd = _build(tmp_path, product)
    stack = mdd.roles["dense_ms"]
    assert stack.dates == ["2022-07-24"]
    assert stack.wavelengths == pytest.approx([443.0, 482.0, 561.5, 654.5, 865.0, 1608.5, 2200.5])
    valid = mdd.read_mask("dense_ms")[0]
    expected = np.ones(valid.shape, bool)
    for r, c in landsat.CLOUD_PX + landsat.SHADOW_PX + landsat.FILL_PX + landsat.DILATED_PX:
        expected[r, c] = False
    np.testing.assert_array_equal(valid, expected)  # snow and water are not masked by default
    values = read_values(mdd, "dense_ms")[0]
    np.testing.assert_allclose(values[3][expected], landsat.reflectance(4)[expected], atol=1e-6)
    manifest = json.load(open(mdd.path))
    assert manifest["inputs"]["dense_ms"][0]["source"] == product  # the product, not a temporary VRT


def test_mask_classes_and_buffer_change_what_is_masked(tmp_path):
    product = landsat.make_landsat_product(tmp_path / "in")
    only_snow = _build(tmp_path / "a", product, "MASK_CLASSES=snow").read_mask("fine_ms")[0]
    expected = np.ones(only_snow.shape, bool)
    for r, c in landsat.SNOW_PX + landsat.FILL_PX:  # fill is nodata (DN 0) whatever the classes
        expected[r, c] = False
    np.testing.assert_array_equal(only_snow, expected)
    grown = _build(tmp_path / "b", product, "MASK_CLASSES=cloud", "MASK_BUFFER=1").read_mask("fine_ms")[0]
    # the cloud at (1, 2), (1, 3), (2, 2) grown by one pixel reaches (0, 2) and (2, 1), not (4, 6)
    assert not grown[0, 2] and not grown[2, 1] and grown[4, 6]
    proc = run_qgis_process(
        "run",
        "stsfusion:buildmdd",
        "--",
        *[f"{k}_PRODUCTS={product}" for k in ("FINE_MS", "DENSE_MS", "HS")],
        "MASK_CLASSES=clouds",
        f"OUTPUT={tmp_path / 'c.json'}",
    )
    assert proc.returncode != 0 and "clouds" in proc.stdout + proc.stderr and not os.path.exists(tmp_path / "c.json")


def test_enmap_zip_builds_with_gains_offsets_and_its_five_quality_masks(tmp_path):
    product = enmap.make_enmap_zip(tmp_path / "in")
    mdd = _build(tmp_path, product)
    stack = mdd.roles["hs"]
    assert stack.dates == [enmap.DATE] and stack.wavelengths == pytest.approx(enmap.WAVELENGTHS)
    assert stack.fwhm == pytest.approx(enmap.FWHM)
    valid = mdd.read_mask("hs")[0]
    expected = np.ones(valid.shape, bool)
    for pixels in list(enmap.MASKED.values()) + [enmap.NODATA_PIXELS]:
        for r, c in pixels:
            expected[r, c] = False
    np.testing.assert_array_equal(valid, expected)
    values = read_values(mdd, "hs")[0]
    np.testing.assert_allclose(values[:, expected], enmap.reflectance()[:, expected], atol=1e-5)


def test_sentinel2_safe_zip_builds_with_the_baseline_offset_and_the_scl(tmp_path):
    fx = s2.make_s2_l2a(tmp_path / "in", as_zip=True)
    mdd = _build(tmp_path, fx.path)
    stack = mdd.roles["fine_ms"]
    assert stack.dates == [fx.date] and len(stack.wavelengths) == 10
    valid = mdd.read_mask("fine_ms")[0]
    expected = np.ones(valid.shape, bool)  # the 20 m SCL on the 10 m grid: 2 x 2 blocks
    for (r, c), cls in s2.SCL_PIXELS.items():
        if cls in (0, 1, 3, 8, 9, 10, 11):
            expected[2 * r : 2 * r + 2, 2 * c : 2 * c + 2] = False
    expected[11, 11] = False  # a nodata pixel in every band
    np.testing.assert_array_equal(valid, expected)
    values = read_values(mdd, "fine_ms")[0]
    np.testing.assert_allclose(values[0][expected], s2.reflectance(fx, "B02")[expected], atol=1e-6)


def test_the_buffer_grows_the_clouds_not_the_no_data(tmp_path):
    # The SCL's no_data (20 m pixel (5, 5): grid rows and columns 10-11) is the footprint's own edge:
    # MASK_BUFFER=1 (two grid pixels) grows the saturated pixel (3, 3) and the clouds, not it.
    fx = s2.make_s2_l2a(tmp_path / "in")
    valid = _build(tmp_path, fx.path, "MASK_BUFFER=1").read_mask("fine_ms")[0]
    assert not valid[10:12, 10:12].any()  # the no_data itself
    assert valid[10, 8] and valid[8, 10]  # two grid pixels from it, farther from any other class
    assert not valid[9, 7] and not valid[4, 1]  # beside the saturated pixel, beside the cloud shadow


def test_prisma_l2d_zip_builds_with_ascending_bands_l2_scaling_and_its_cloud_mask(tmp_path):
    from helpers import products_prisma as prisma

    product = prisma.make_prisma_zip(tmp_path / "in")
    mdd = _build(tmp_path, product)
    stack = mdd.roles["hs"]
    assert stack.dates == ["2020-06-12"]
    # VNIR + SWIR ascending, without the zero-wavelength bands and the VNIR band in the SWIR range
    wavelengths = [452.1, 559.8, 660.3, 865.5, 948.1, 1020.9, 1240.4, 1650.7, 2195.3]
    assert stack.wavelengths == pytest.approx(wavelengths, abs=1e-3) and stack.wavelengths == sorted(stack.wavelengths)
    assert stack.fwhm == pytest.approx(prisma.FWHMS, abs=1e-4)
    valid = mdd.read_mask("hs")[0]
    expected = np.ones(valid.shape, bool)
    for r, c in prisma.CLOUD_PX + prisma.NODATA_PIXELS:  # Cloud_Mask 1, and 0 in every band
        expected[r, c] = False
    np.testing.assert_array_equal(valid, expected)
    assert (~valid).sum() == 7
    values = read_values(mdd, "hs")[0]
    assert np.isnan(values[:, ~expected]).all()  # masked pixels are nodata in the MDD
    np.testing.assert_allclose(values[:, expected], prisma.reflectance()[:, expected], atol=1e-6)
    assert values[0, 2, 3] == pytest.approx(11109 / 65535, abs=1e-6)  # VNIR: Min 0, Max 1
    assert values[8, 5, 5] == pytest.approx(-0.02 + 1735 * 0.92 / 65535, abs=1e-6)  # SWIR: Min -0.02, Max 0.9
    assert values[2, 6, 3] == pytest.approx(1 / 65535, abs=1e-7)  # a lone 0 DN is dark, not nodata
