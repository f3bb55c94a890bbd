"""The bundled demo sample (resources/sample): size budget, dates, wavelengths, determinism."""

import glob
import importlib.util
import json
import os
import re

import numpy as np
import pytest
from osgeo import gdal

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLE = os.path.join(ROOT, "resources", "sample")
BUDGET_BYTES = 2_000_000


def _make_sample():
    path = os.path.join(ROOT, "scripts", "make_sample.py")
    spec = importlib.util.spec_from_file_location("make_sample", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def manifest():
    with open(os.path.join(SAMPLE, "sample.json"), encoding="utf-8") as f:
        return json.load(f)


def test_sample_is_small_and_complete(manifest):
    files = sorted(os.listdir(SAMPLE))
    total = sum(os.path.getsize(os.path.join(SAMPLE, f)) for f in files)
    assert total < BUDGET_BYTES, f"resources/sample is {total} bytes, over the {BUDGET_BYTES} budget"
    tifs = [f for f in files if f.endswith(".tif")]
    assert len(tifs) == 4 + 7 + 4 and "README.md" in files
    assert not any(f.startswith("truth") for f in files)  # the truth is regenerated, not committed
    dates = manifest["dates"]
    assert len(dates) == 7 and dates == sorted(dates)
    roles = manifest["roles"]
    assert roles["dense_ms"]["dates"] == dates
    assert roles["fine_ms"]["dates"] == roles["hs"]["dates"] and len(roles["hs"]["dates"]) == 4
    assert len(manifest["no_hs_dates"]) == 3


@pytest.mark.parametrize(
    "role,bands,size,pixel", [("fine_ms", 4, 96, 10.0), ("dense_ms", 8, 48, 20.0), ("hs", 80, 32, 30.0)]
)
def test_sample_files_carry_dates_and_wavelengths(manifest, role, bands, size, pixel):
    paths = sorted(glob.glob(os.path.join(SAMPLE, f"{role}_*.tif")))
    assert [re.search(r"(\d{4}-\d\d-\d\d)", p).group(1) for p in paths] == manifest["roles"][role]["dates"]
    for p in paths:
        ds = gdal.Open(p)
        date = re.search(r"(\d{4}-\d\d-\d\d)", os.path.basename(p)).group(1)
        assert ds.GetMetadataItem("ACQUISITION_DATE") == date
        assert (ds.RasterCount, ds.RasterXSize, ds.RasterYSize) == (bands, size, size)
        assert ds.GetGeoTransform()[1] == pixel and ds.GetSpatialRef().GetAuthorityCode(None) == "32650"
        assert ds.GetMetadataItem("COMPRESSION", "IMAGE_STRUCTURE") == "DEFLATE"
        wl = [float(ds.GetRasterBand(b + 1).GetMetadataItem("wavelength")) for b in range(bands)]
        np.testing.assert_allclose(wl, manifest["roles"][role]["wavelengths_nm"], atol=0.01)
        band = ds.GetRasterBand(1)
        assert band.GetScale() == pytest.approx(1e-4) and band.GetNoDataValue() == -32768
        assert band.DataType == gdal.GDT_Int16
    if role == "hs":
        assert wl[0] >= 400 and wl[-1] <= 2500
        bbl = [ds.GetRasterBand(b + 1).GetMetadataItem("bbl") for b in range(bands)]
        assert bbl.count("0") >= 6  # water-vapour bands kept, flagged


def test_sample_has_cloud_holes_somewhere(manifest):
    clouds = [v for r in manifest["roles"].values() for v in r["cloud_fraction"].values()]
    assert max(clouds) > 0.02 and min(clouds) == 0.0


def test_sample_regenerates_identically_with_its_truth(tmp_path):
    mod = _make_sample()
    out, truth = str(tmp_path / "sample"), str(tmp_path / "truth")
    assert mod.main(["--out", out, "--truth", truth]) == 0
    for p in sorted(glob.glob(os.path.join(SAMPLE, "*.tif"))):
        committed = gdal.Open(p).ReadAsArray().astype(np.int32)
        again = gdal.Open(os.path.join(out, os.path.basename(p))).ReadAsArray().astype(np.int32)
        # Identical up to a rare 1-DN rounding difference between machines' float arithmetic.
        stale = f"{p} differs from what scripts/make_sample.py makes now: rerun it and commit"
        assert np.abs(committed - again).max() <= 1, stale
        assert (committed != again).mean() < 1e-3, stale
    truths = sorted(os.listdir(truth))
    assert len(truths) == 7 and all(t.startswith("truth_hs_") for t in truths)
    ds = gdal.Open(os.path.join(truth, truths[3]))
    assert (ds.RasterCount, ds.RasterXSize, ds.RasterYSize) == (80, 96, 96)
    assert ds.GetMetadataItem("ACQUISITION_DATE") == truths[3][9:19]
    assert not np.any(ds.ReadAsArray() == -32768)  # no clouds and no holes in the truth
    # --truth alone checks the regenerated truth against the statistics in sample.json.
    assert mod.main(["--truth", str(tmp_path / "truth2")]) == 0
