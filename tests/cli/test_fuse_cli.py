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
    for key in (
        "MDD",
        "MODEL",
        "DATES",
        "TILE_SIZE",
        "DEVICE",
        "OUTPUT_TYPE",
        "COMPRESSION",
        "SKIP_EXISTING",
        "OUTPUT_FOLDER",
    ):
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


@pytest.mark.slow
def test_int16_output_and_skip_existing_through_qgis_process(real, tmp_path):
    manifest, model = real
    out = tmp_path / "fused"
    common = [f"MDD={manifest}", f"MODEL={model}", "TILE_SIZE=32", "DEVICE=cpu", f"OUTPUT_FOLDER={out}"]
    run_qgis_process_json("stsfusion:fuse", common + ["DATES=2022-05-15"])
    reference = gdal.Open(str(out / "fused_2022-05-15.tif")).ReadAsArray()
    os.rename(out / "fused_2022-05-15.tif", tmp_path / "float.tif")
    (out / "fused_2022-05-15.tif.part.tif").write_bytes(b"left by a killed run")
    run_qgis_process_json("stsfusion:fuse", common + ["DATES=2022-05-15", "OUTPUT_TYPE=1", "COMPRESSION=1"])
    ds = gdal.Open(str(out / "fused_2022-05-15.tif"))
    band = ds.GetRasterBand(1)
    assert band.DataType == gdal.GDT_Int16 and band.GetScale() == pytest.approx(1e-4)
    assert ds.GetMetadataItem("COMPRESSION", "IMAGE_STRUCTURE") == "ZSTD"
    raw = ds.ReadAsArray()
    valid = raw != -32768
    assert valid.mean() > 0.5 and ((reference == -9999) == ~valid).all()
    assert abs(raw[valid] * 1e-4 - reference[valid]).max() <= 0.5e-4 + 1e-6
    assert not (out / "fused_2022-05-15.tif.part.tif").exists()
    stamp = os.stat(out / "fused_2022-05-15.tif").st_mtime_ns
    result = run_qgis_process_json(
        "stsfusion:fuse", common + ["DATES=2022-05-15,2022-06-09", "OUTPUT_TYPE=1", "SKIP_EXISTING=true"]
    )
    assert os.stat(out / "fused_2022-05-15.tif").st_mtime_ns == stamp  # kept, not fused again
    assert result["results"]["OUTPUT_LAYERS"] == [str(out / "fused_2022-05-15.tif"), str(out / "fused_2022-06-09.tif")]
    assert gdal.Open(str(out / "fused_2022-06-09.tif")).GetRasterBand(1).DataType == gdal.GDT_Int16


@pytest.mark.slow
def test_dask_scheduler_fuses_on_a_local_cluster_with_the_same_bytes(real, tmp_path):
    """DASK_SCHEDULER=tcp://... of a LocalCluster started here: its 2 worker processes (spawned, so
    with this process's sys.path: the plugin folder and tests/) fuse the dates that qgis_process asks
    for, into the folder it names; the files are those of an in-process run with the same threads."""
    from distributed import LocalCluster

    from stsfusion.model.fusion.fuse import fuse_time_series

    manifest, model = real
    dates = "2022-03-26,2022-05-15,2022-06-09"
    reference = fuse_time_series(
        manifest, model, str(tmp_path / "loop"), dates, tile_size=32, device="cpu", threads=1, scheduler="none"
    )
    assert "DASK_SCHEDULER" in run_qgis_process("help", "stsfusion:fuse").stdout
    out = tmp_path / "fused"
    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},  # its HTTP server: not port 8787
    ) as cluster:
        address = cluster.scheduler_address
        proc = run_qgis_process(
            "run",
            "stsfusion:fuse",
            "--",
            f"MDD={manifest}",
            f"MODEL={model}",
            f"DATES={dates}",
            "TILE_SIZE=32",
            "DEVICE=cpu",
            "THREADS=1",
            f"DASK_SCHEDULER={address}",
            f"OUTPUT_FOLDER={out}",
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"Dask cluster {address}: 2 worker(s), 2 thread(s) in all; 2 task(s)" in proc.stdout
    assert sorted(n for n in os.listdir(out) if n.endswith(".tif")) == [os.path.basename(p) for p in reference]
    for path in reference:
        with open(path, "rb") as a, open(out / os.path.basename(path), "rb") as b:
            assert a.read() == b.read()
