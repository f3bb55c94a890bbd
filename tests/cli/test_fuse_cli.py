"""`qgis_process.bin run stsfusion:fuse`: the batch call of the README, its JSON results and errors."""

import os

import pytest
from helpers.predictor import trained_tiny_model
from helpers.qgis_process import run_qgis_process, run_qgis_process_json
from osgeo import gdal


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    return trained_tiny_model(tmp_path_factory.mktemp("fuse_cli"))


def test_help_lists_every_parameter():
    proc = run_qgis_process("help", "stsfusion:fuse")
    assert proc.returncode == 0, proc.stderr
    for key in ("MDD", "MODEL", "DATES", "TILE_SIZE", "DEVICE", "OUTPUT_FOLDER", "OUTPUT_LAYERS"):
        assert key in proc.stdout


@pytest.mark.slow
def test_run_writes_the_requested_dates(real, tmp_path):
    manifest, model = real
    out = tmp_path / "fused"
    result = run_qgis_process_json(
        "stsfusion:fuse",
        [f"MDD={manifest}", f"MODEL={model}", "DATES=2022-05-15", "TILE_SIZE=32", "DEVICE=cpu", f"OUTPUT_FOLDER={out}"],
    )
    path = str(out / "fused_2022-05-15.tif")
    assert result["results"]["OUTPUT_LAYERS"] == [path]
    assert result["results"]["OUTPUT_FOLDER"] == str(out)
    ds = gdal.Open(path)
    assert (ds.RasterXSize, ds.RasterYSize, ds.RasterCount) == (48, 48, 40)
    assert ds.GetRasterBand(3).GetMetadataItem("wavelength_units") == "nm"
    assert sorted(os.listdir(out)) == ["fused_2022-05-15.qml", "fused_2022-05-15.tif"]  # the GeoTIFF and its style


@pytest.mark.slow
def test_an_unknown_date_fails_with_the_fix_and_writes_nothing(real, tmp_path):
    manifest, model = real
    out = tmp_path / "fused"
    proc = run_qgis_process(
        "run",
        "stsfusion:fuse",
        "--",
        f"MDD={manifest}",
        f"MODEL={model}",
        "DATES=2021-01-01",
        "DEVICE=cpu",
        f"OUTPUT_FOLDER={out}",
    )
    assert proc.returncode != 0
    assert "The MDD has no date 2021-01-01" in proc.stdout + proc.stderr
    assert not out.exists() or os.listdir(out) == []
