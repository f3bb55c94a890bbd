"""Sensor simulation: fine MS / dense MS / coarse HS files from fine HS layers."""

import os

import numpy as np
import pytest
from helpers.assess import HS_WAVELENGTHS, hs_cube, read_physical, utm_grid, write_hs_int16
from osgeo import gdal

from stsfusion.model.core.callbacks import Callbacks, Canceled
from stsfusion.model.core.degrade import degrade
from stsfusion.model.simulation.simulate import SimulateError, simulate_sensors
from stsfusion.model.simulation.srf import sensor_preset, spectral_resample, subset


@pytest.fixture
def two_dates(tmp_path):
    grid = utm_grid()
    cubes = [hs_cube(0), hs_cube(1)]
    cubes[1][:, 0, 0] = np.nan
    bbl = [1] * len(HS_WAVELENGTHS)
    bbl[30] = 0  # a bad band, all nodata: must not spoil the MS bands
    cubes[0][30] = np.nan
    paths = [
        write_hs_int16(str(tmp_path / "enmap_20220601.tif"), cubes[0], grid, bbl=bbl),
        write_hs_int16(str(tmp_path / "scene_b.tif"), cubes[1], grid, date="2022-07-01"),
    ]
    return paths, [np.round(c * 1e4) * 1e-4 for c in cubes], grid


def test_simulate_all_roles(two_dates, tmp_path):
    paths, cubes, grid = two_dates
    out = tmp_path / "out"
    logs = []
    files = simulate_sensors(
        paths, str(out), fine_ms_dates=["2022-06-01"], hs_dates=["2022-06-01"], callbacks=Callbacks(log=logs.append)
    )
    assert sorted(os.listdir(out)) == [
        "dense_ms_2022-06-01.tif",
        "dense_ms_2022-07-01.tif",
        "fine_ms_2022-06-01.tif",
        "hs_2022-06-01.tif",
    ]
    assert any("B7 violet" in m for m in logs)  # 400-450 nm is not covered by a 420 nm first band
    good = [b for b in range(59) if b != 30]
    wl = HS_WAVELENGTHS[good]
    zy = sensor_preset("zy1_02d_vnic")
    fine = read_physical(files["fine_ms"][0])
    np.testing.assert_allclose(fine, spectral_resample(cubes[0][good], wl, zy), rtol=1e-5)
    gf6 = sensor_preset("gf6_wfv")
    gf6 = subset(gf6, [n for n in gf6.names if n != "B7 violet"])
    dense = read_physical(files["dense_ms"][1])
    assert dense.shape == (7, 6, 6)
    np.testing.assert_allclose(dense, degrade(spectral_resample(cubes[1], HS_WAVELENGTHS, gf6), 2), rtol=1e-5)
    hs = read_physical(files["hs"][0])
    assert hs.shape == (59, 4, 4) and np.isnan(hs[30]).all()
    np.testing.assert_allclose(hs[good], degrade(cubes[0][good], 3), rtol=1e-5)
    ds = gdal.Open(files["hs"][0])
    assert ds.GetGeoTransform()[1] == 30.0 and ds.GetMetadataItem("ACQUISITION_DATE") == "2022-06-01"
    assert ds.GetRasterBand(2).GetMetadataItem("wavelength") == "430"
    assert ds.GetRasterBand(31).GetMetadataItem("bbl") == "0"
    ds = gdal.Open(files["fine_ms"][0])
    assert abs(float(ds.GetRasterBand(4).GetMetadataItem("wavelength")) - 835.5) < 0.01
    assert ds.GetRasterBand(1).GetNoDataValue() == -9999.0
    assert ds.GetMetadata()["SENSOR"].startswith("ZY1-02D")


def test_simulate_with_srf_file_and_psf(shared_data, two_dates, tmp_path):
    paths, cubes, _ = two_dates
    files = simulate_sensors(
        paths[1:],
        str(tmp_path / "o"),
        fine_ms_dates=[],
        hs_dates=[],
        dense_ms_sensor=os.path.join(shared_data, "srf", "GF6_WFV.txt"),
        dense_factor=3,
        psf_sigma=0,
    )
    dense = read_physical(files["dense_ms"][0])
    assert dense.shape[1:] == (4, 4)
    assert np.isfinite(dense).all()  # a block mean of 9 px survives one NaN pixel


def test_simulate_errors_leave_nothing(two_dates, tmp_path):
    paths, _, grid = two_dates
    out = tmp_path / "o"
    with pytest.raises(SimulateError, match="No HS layer is dated 2022-01-01"):
        simulate_sensors(paths, str(out), hs_dates=["2022-01-01"])
    with pytest.raises(SimulateError, match="neither a spectral response file nor a sensor preset"):
        simulate_sensors(paths, str(out), fine_ms_sensor="nope")
    with pytest.raises(SimulateError, match="share the date"):
        simulate_sensors(paths, str(out), dates=["2022-06-01", "2022-06-01"])
    with pytest.raises(SimulateError, match="whole number"):
        simulate_sensors(paths, str(out), hs_factor=0)
    with pytest.raises(Canceled):
        simulate_sensors(paths, str(out), callbacks=Callbacks(is_canceled=lambda: True))
    calls = []
    with pytest.raises(Canceled):
        simulate_sensors(
            paths,
            str(out),
            callbacks=Callbacks(is_canceled=lambda: len(calls) > 2, progress=lambda f, m: calls.append(f)),
        )
    assert not out.exists() or os.listdir(out) == []
