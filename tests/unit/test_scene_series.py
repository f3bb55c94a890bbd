"""The time-series simulator: unmixing, per-parcel change, sensor effects, GeoTIFF output."""

import os

import numpy as np
import pytest
from osgeo import gdal

from stsfusion.model.core.grid import Grid
from stsfusion.model.core.vocabulary import ROLES
from stsfusion.model.simulation import sensors as sim_sensors
from stsfusion.model.simulation import truth as sim_truth
from stsfusion.model.simulation import writing as sim_writing
from stsfusion.model.simulation.srf import sensor_preset
from stsfusion.model.simulation.synthetic_scene import library_spectrum, synthetic_scene

DATES = sim_truth.season_dates("2022-04-10", 7, 25)


@pytest.fixture(scope="module")
def scene():
    return synthetic_scene(48, 48, seed=11, mean_parcel_area_px=60.0)


@pytest.fixture(scope="module")
def truth(scene):
    return sim_truth.simulate_truth(
        scene.hs, scene.wavelengths, DATES, seed=3, parcels=scene.parcels, unmixing=sim_truth.unmixing_from_scene(scene)
    )


def _sensors(scene, **overrides):
    sensors = sim_sensors.default_sensors(scene.wavelengths, scene.fwhm)
    for role, kw in overrides.items():
        for k, v in kw.items():
            setattr(sensors[role], k, v)
    return sensors


def test_season_dates():
    assert DATES[0] == "2022-04-10" and DATES[1] == "2022-05-05" and len(DATES) == 7


def test_unmix_finds_roles_and_explains_the_image():
    wl = np.arange(400.0, 2500.0, 20.0)
    names = ("green_vegetation", "soil", "concrete", "water")
    E = np.stack([library_spectrum(n, wl) for n in names])
    rng = np.random.default_rng(0)
    A = rng.dirichlet(np.ones(4), size=(30, 30)).transpose(2, 0, 1)
    A[:, 0, :4] = np.eye(4)  # pure pixels exist, as ATGP assumes
    hs = np.tensordot(E, A, axes=(0, 0)).astype(np.float32)
    hs[:, 20:, 25:] = np.nan  # a hole stays a hole
    u = sim_truth.unmix(hs, wl, n_endmembers=4)
    assert np.nanmax(np.abs(u.residual)) < 0.01
    assert np.all(np.isnan(u.residual[:, 20:, 25:]))
    green = u.endmembers[u.roles["green"][0]]
    np.testing.assert_allclose(green, E[0], atol=1e-4)
    np.testing.assert_allclose(u.endmembers[u.roles["soil"][0]], E[1], atol=1e-4)
    np.testing.assert_allclose(u.endmembers[u.roles["water"][0]], E[3], atol=1e-4)
    assert u.roles["dry"][0] >= 4  # not in the image: taken from the library
    np.testing.assert_allclose(u.reconstruct()[:, :20], hs[:, :20], atol=1e-5)


def test_truth_is_deterministic_and_seed_dependent(scene, truth):
    again = sim_truth.simulate_truth(
        scene.hs, scene.wavelengths, DATES, seed=3, parcels=scene.parcels, unmixing=sim_truth.unmixing_from_scene(scene)
    )
    np.testing.assert_array_equal(truth.values, again.values)
    other = sim_truth.simulate_truth(
        scene.hs, scene.wavelengths, DATES, seed=4, parcels=scene.parcels, unmixing=sim_truth.unmixing_from_scene(scene)
    )
    assert not np.array_equal(truth.values, other.values)
    assert truth.values.shape == (7, scene.wavelengths.size, 48, 48)
    assert np.all(np.isfinite(truth.values))


def test_change_happens_per_field_not_everywhere(scene, truth):
    static = ~truth.changing
    assert 0.05 < static.mean() < 0.6
    change = np.abs(truth.values[4] - truth.values[0]).mean(axis=0)  # per pixel
    assert change[static].max() == 0  # static parcels do not change at all
    moving = truth.changing & (np.isin(scene.cover, [0, 3]))  # crop/fallow parcels with a schedule
    assert np.median(change[moving]) > 0.01
    # Change is mostly a property of the parcel: parcel means explain most of its variance
    # (the rest is the smooth within-field variation, which must exist too).
    p = truth.parcels[truth.changing]
    c = change[truth.changing]
    means = np.bincount(p, c) / np.maximum(np.bincount(p), 1)
    within = ((c - means[p]) ** 2).sum()
    total = ((c - c.mean()) ** 2).sum()
    assert within / total < 0.3
    assert within > 0
    # Built-up endmembers do not change: roofs and roads hardly change.
    names = list(scene.endmember_names)
    built = scene.abundances[[names.index(n) for n in ("asphalt", "concrete", "roof_tile")]].sum(0)
    assert (built > 0.85).sum() > 20
    assert change[built > 0.85].max() < 0.2 * np.median(change[moving])


def test_schedules_follow_a_season():
    n = 200
    p = sim_truth.draw_schedules(n, np.random.default_rng(1))
    kind = np.full(n, sim_truth.SCHEDULES.index("winter_crop"))
    before = sim_truth.schedule_state(kind, p, np.full(n, 90.0))
    peak = sim_truth.schedule_state(kind, p, p["w_sen"] - 20)
    after = sim_truth.schedule_state(kind, p, p["w_harvest"] + 5)
    assert np.all(peak[0] > before[0])  # green-up
    assert np.all(after[0] < 0.1) and np.all(after[2] > 0.7)  # harvested: bare soil
    for state in (before, peak, after):
        np.testing.assert_allclose(sum(state), 1.0, atol=1e-6)
    kind[:] = sim_truth.SCHEDULES.index("flooding")
    wet = sim_truth.schedule_state(kind, p, (p["fl_start"] + p["fl_end"]) / 2)
    assert np.all(wet[3] > 0.5)


def test_inputs_shapes_dates_wavelengths(scene, truth):
    design = sim_sensors.SeriesDesign.paper(DATES)
    images = sim_sensors.simulate_inputs(truth, scene.wavelengths, scene.fwhm, design, _sensors(scene), seed=1)
    by_role = {r: [im for im in images if im.role == r] for r in ROLES}
    assert [im.date for im in by_role["hs"]] == [DATES[i] for i in (0, 2, 3, 6)]
    assert [im.date for im in by_role["fine_ms"]] == [im.date for im in by_role["hs"]]
    assert [im.date for im in by_role["dense_ms"]] == DATES
    assert by_role["fine_ms"][0].values.shape == (4, 48, 48)
    assert by_role["dense_ms"][0].values.shape == (8, 24, 24)
    assert by_role["hs"][0].values.shape == (scene.wavelengths.size, 16, 16)
    np.testing.assert_allclose(by_role["dense_ms"][0].wavelengths, sensor_preset("gf6_wfv").centres())
    np.testing.assert_allclose(by_role["hs"][0].wavelengths, scene.wavelengths)
    again = sim_sensors.simulate_inputs(truth, scene.wavelengths, scene.fwhm, design, _sensors(scene), seed=1)
    for a, b in zip(images, again):
        np.testing.assert_array_equal(a.values, b.values)
    # A per-date, per-band gain between sensors, and misregistration of the coarse ones only.
    gains = np.stack([im.gain for im in by_role["dense_ms"]])
    assert gains.std(axis=0).min() > 0.005 and gains.std(axis=1).min() > 0.005
    assert all(im.shift_px == (0.0, 0.0) for im in by_role["fine_ms"])
    assert all(max(map(abs, im.shift_px)) > 0 for im in by_role["dense_ms"] + by_role["hs"])


def test_hs_noise_larger_in_swir_and_water_vapour_bands(scene):
    flat = sim_truth.TruthSeries(
        ["2022-06-01"],
        np.full((1, scene.wavelengths.size, 60, 60), 0.3, np.float32),
        np.zeros((60, 60), int),
        np.zeros(1, int),
        None,
    )
    spec = _sensors(scene, hs=dict(cloud_probability=0.0, max_shift=0.0))["hs"]
    im = sim_sensors.observe(flat.values[0], scene.wavelengths, scene.fwhm, spec, np.random.default_rng(0))
    noise = np.nanstd(im.values, axis=(1, 2))
    wl = scene.wavelengths
    vnir = noise[(wl >= 500) & (wl <= 800)].mean()
    swir = noise[((wl >= 1500) & (wl <= 1750)) | ((wl >= 2000) & (wl <= 2300))].mean()
    assert swir > 1.5 * vnir
    assert noise[np.argmin(np.abs(wl - 1390))] > 5 * vnir
    assert noise[0] > 1.5 * vnir  # the blue band edge
    sigma = sim_sensors.hs_noise_sigma(wl)
    assert sigma[wl > 1000].min() > sigma[(wl > 500) & (wl < 800)].max()


def test_clouds_are_nodata_in_inputs_only(scene, truth):
    sensors = _sensors(
        scene, fine_ms=dict(cloud_probability=1.0), dense_ms=dict(cloud_probability=1.0), hs=dict(cloud_probability=1.0)
    )
    images = sim_sensors.simulate_inputs(
        truth, scene.wavelengths, scene.fwhm, sim_sensors.SeriesDesign.paper(DATES), sensors, seed=2
    )
    for im in images:
        holes = np.isnan(im.values)
        assert 0.02 < holes[0].mean() < 0.5 and im.cloud_fraction == pytest.approx(holes[0].mean())
        assert np.array_equal(holes, np.broadcast_to(holes[0], holes.shape))  # all bands alike
    assert np.all(np.isfinite(truth.values))


def test_covered_response_drops_bands_outside_the_hs_range():
    wl = np.arange(418.0, 2446.0, 10.0)
    r = sim_sensors.covered_response(sensor_preset("gf6_wfv"), wl, np.full(wl.size, 8.0))
    assert r.n_bands == 7 and not any("violet" in n for n in r.names)


def test_subpixel_shift_integer_and_nan():
    img = np.random.default_rng(0).random((2, 10, 10)).astype(np.float32)
    out = sim_sensors.subpixel_shift(img, 1.0, -2.0)
    np.testing.assert_allclose(out[:, 1:, :-2], img[:, :-1, 2:], atol=1e-6)
    img[:, 5, 5] = np.nan
    out = sim_sensors.subpixel_shift(img, 0.3, 0.0)  # the hole moves with the content
    assert np.isnan(out[0, 5, 5]) and np.isfinite(out[0, 6, 5]) and np.isfinite(out[0, 4, 5])
    assert np.isnan(out).sum() == 2


def test_write_reflectance_round_trip(tmp_path):
    from osgeo import osr

    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    grid = Grid(srs.ExportToWkt(), (500000.0, 10.0, 0.0, 5800000.0, 0.0, -10.0), 8, 6)
    values = np.random.default_rng(0).uniform(0, 0.5, (3, 6, 8)).astype(np.float32)
    values[:, 0, 0] = np.nan
    path = str(tmp_path / "fine_ms_2022-05-01.tif")
    sim_writing.write_reflectance(
        path, values, grid, "2022-05-01", [490, 560, 665], [60, 70, 50], ["B1", "B2", "B3"], {"SENSOR": "x"}
    )
    assert sorted(os.listdir(tmp_path)) == ["fine_ms_2022-05-01.tif"]
    ds = gdal.Open(path)
    assert ds.GetMetadataItem("ACQUISITION_DATE") == "2022-05-01"
    b = ds.GetRasterBand(2)
    assert b.GetScale() == pytest.approx(1e-4) and b.GetNoDataValue() == sim_writing.INT_NODATA
    assert float(b.GetMetadataItem("wavelength")) == 560 and b.GetMetadataItem("wavelength_units") == "nm"
    dn = ds.ReadAsArray()
    assert dn.dtype == np.int16 and np.all(dn[:, 0, 0] == sim_writing.INT_NODATA)
    np.testing.assert_allclose(dn[:, 1:] * 1e-4, values[:, 1:], atol=0.6e-4)


SHARED = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))), "shared", "data"
)


def _make_dataset(tmp_path, *args) -> tuple:
    """(out folder, dataset.json) of benchmarks/make_dataset.py on 3 of the real EnMAP tiles (a
    mosaic with a hole)."""
    import importlib.util
    import json
    import shutil

    data = tmp_path / "data"
    (data / "enmap_potsdam").mkdir(parents=True)
    for name in ("enmap_potsdam_tile_160_128.tif", "enmap_potsdam_tile_192_128.tif", "enmap_potsdam_tile_192_160.tif"):
        os.symlink(os.path.join(SHARED, "enmap_potsdam", name), data / "enmap_potsdam" / name)
    shutil.copytree(os.path.join(SHARED, "srf"), data / "srf")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = os.path.join(root, "benchmarks", "make_dataset.py")
    spec = importlib.util.spec_from_file_location("make_dataset", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "out"
    assert mod.main(["--data", str(data), "--out", str(out), *args]) == 0
    return out, json.loads((out / "dataset.json").read_text())


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, "enmap_potsdam")), reason="needs ../shared/data")
def test_benchmark_dataset_from_real_tiles(tmp_path):
    """benchmarks/make_dataset.py on 3 of the real EnMAP tiles (a mosaic with a hole)."""
    out, d = _make_dataset(tmp_path)
    assert len(d["dates"]) == 7 and d["dense_ms_dates"] == d["dates"]
    assert d["hs_dates"] == d["fine_ms_dates"] and len(d["hs_dates"]) == 4
    assert set(d["held_out_dates"]) < set(d["no_hs_dates"]) and len(d["held_out_dates"]) == 2
    assert not set(d["tuning_dates"]) & set(d["held_out_dates"])
    truth = gdal.Open(str(out / "truth" / f"truth_hs_{d['dates'][1]}.tif"))
    # 64 x 64 px padded to 66 x 66, a multiple of both the x2 and the x3 factor.
    assert truth.RasterCount == 218 and (truth.RasterXSize, truth.RasterYSize) == (66, 66)
    assert truth.GetMetadataItem("ACQUISITION_DATE") == d["dates"][1]
    t = truth.GetRasterBand(1).ReadAsArray()
    assert (t == sim_writing.INT_NODATA).mean() == pytest.approx(1 - 3 * 32 * 32 / 66**2)  # hole + padding
    hs = gdal.Open(str(out / f"hs_{d['hs_dates'][0]}.tif"))
    assert (hs.RasterCount, hs.RasterXSize, hs.RasterYSize, hs.GetGeoTransform()[1]) == (218, 22, 22, 90.0)
    dense = gdal.Open(str(out / f"dense_ms_{d['dates'][1]}.tif"))
    assert (dense.RasterCount, dense.RasterXSize, dense.GetGeoTransform()[1]) == (7, 33, 60.0)


def test_degrade_to_a_ratio_that_is_not_an_integer():
    """A sensor 1.6 times the grid (16 m on 10 m): its PSF sampled at each sensor pixel's centre."""
    from stsfusion.model.core.degrade import degrade
    from stsfusion.model.core.grid import coarse_size

    rng = np.random.default_rng(5)
    image = rng.random((2, 48, 40)).astype(np.float32)
    np.testing.assert_array_equal(sim_sensors.degrade_to(image, 3), degrade(image, 3))  # integers: unchanged
    out = sim_sensors.degrade_to(image, 1.6)
    assert out.shape == (2, 30, 25) and coarse_size(168, 1.6) == 105  # not 168 // 1.6 == 104
    np.testing.assert_allclose(sim_sensors.degrade_to(np.full((1, 48, 40), 0.3, np.float32), 1.6), 0.3, atol=1e-6)
    # A linear ramp is read at the sensor pixels' centres, fine coordinate (i + 0.5) * 1.6 - 0.5.
    ramp = np.broadcast_to(0.01 * np.arange(40, dtype=np.float32), (1, 48, 40))
    centres = (np.arange(25) + 0.5) * 1.6 - 0.5
    np.testing.assert_allclose(sim_sensors.degrade_to(ramp, 1.6)[0, 10, 3:-3], 0.01 * centres[3:-3], atol=1e-5)
    # NaN where the valid pixels carry less than half of the PSF, values elsewhere.
    holed = image.copy()
    holed[:, 10:26, 10:26] = np.nan
    out = sim_sensors.degrade_to(holed, 1.6)
    assert (
        np.isnan(out[0, 10, 10]) and np.isfinite(out[0, 2, 2]) and np.isnan(out).any(axis=0).sum() == 10 * 10
    )  # 16 px: 10 sensor pixels a side


def test_inputs_at_a_ratio_that_is_not_an_integer(scene, truth):
    sensors = _sensors(scene, dense_ms={"factor": 1.6})
    design = sim_sensors.SeriesDesign.paper(DATES)
    images = sim_sensors.simulate_inputs(truth, scene.wavelengths, scene.fwhm, design, sensors, seed=1)
    dense = [im for im in images if im.role == "dense_ms"]
    assert dense[0].values.shape == (8, 30, 30) and dense[0].factor == 1.6
    grid = Grid("", (0.0, 10.0, 0.0, 0.0, 0.0, -10.0), 48, 48)
    from stsfusion.model.core.grid import coarse_grid

    g = coarse_grid(grid, 1.6)
    assert (g.width, g.height, g.geotransform[1]) == (30, 30, 16.0)


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, "enmap_potsdam")), reason="needs ../shared/data")
def test_benchmark_dataset_prisma_ratio_1_6(tmp_path):
    """The scene with a PRISMA-like HS and a dense MS 1.6 times the grid: the truth in the HS's own
    bands (what the fused image is assessed against), the dense MS on 48 m pixels."""
    out, d = _make_dataset(tmp_path, "--scenario", "prisma_ratio_1_6")
    truth = gdal.Open(str(out / "truth" / f"truth_hs_{d['dates'][1]}.tif"))
    hs = gdal.Open(str(out / f"hs_{d['hs_dates'][0]}.tif"))
    assert 150 < hs.RasterCount < 239 and truth.RasterCount == hs.RasterCount == d["truth_bands"]
    for b in (1, hs.RasterCount // 2, hs.RasterCount):
        wl = float(hs.GetRasterBand(b).GetMetadataItem("wavelength"))
        assert float(truth.GetRasterBand(b).GetMetadataItem("wavelength")) == pytest.approx(wl, abs=0.01)
        assert float(hs.GetRasterBand(b).GetMetadataItem("fwhm")) == pytest.approx(11.0 if wl < 915 else 12.0, abs=0.2)
    # 64 x 64 px padded to 72 x 72 (a multiple of 24): 45 dense MS pixels of 48 m, 24 HS pixels of 90 m.
    assert (truth.RasterXSize, truth.RasterYSize) == (72, 72)
    assert (hs.RasterXSize, hs.GetGeoTransform()[1]) == (24, 90.0)
    dense = gdal.Open(str(out / f"dense_ms_{d['dates'][1]}.tif"))
    assert (dense.RasterXSize, dense.RasterYSize) == (45, 45) and dense.GetGeoTransform()[1] == pytest.approx(48.0)
    assert d["fine_ms_dates"] != d["hs_dates"]  # offset_1_3's calendar


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, "enmap_potsdam")), reason="needs ../shared/data")
def test_benchmark_dataset_landsat_ratio_3(tmp_path):
    """Sentinel-2, Landsat at 3 times the grid and EnMAP: the dense MS on 90 m pixels with Landsat 8
    OLI's seven bands, the fine MS with Sentinel-2's ten, on offset_1_3's calendar."""
    out, d = _make_dataset(tmp_path, "--scenario", "landsat_ratio_3")
    dense = gdal.Open(str(out / f"dense_ms_{d['dates'][1]}.tif"))
    assert (dense.RasterCount, dense.RasterXSize, dense.RasterYSize, dense.GetGeoTransform()[1]) == (7, 22, 22, 90.0)
    fine = gdal.Open(str(out / f"fine_ms_{d['fine_ms_dates'][0]}.tif"))
    assert (fine.RasterCount, fine.RasterXSize, fine.GetGeoTransform()[1]) == (10, 66, 30.0)
    wl = [float(fine.GetRasterBand(b).GetMetadataItem("wavelength")) for b in (1, 10)]
    assert wl[0] == pytest.approx(492, abs=3) and wl[1] == pytest.approx(2202, abs=5)  # B02 ... B12
    hs = gdal.Open(str(out / f"hs_{d['hs_dates'][0]}.tif"))
    assert (hs.RasterCount, hs.RasterXSize, hs.GetGeoTransform()[1]) == (218, 22, 90.0)
    assert d["fine_ms_dates"] != d["hs_dates"] and len(d["dense_ms_dates"]) == 7  # offset_1_3's calendar
    assert "Landsat 8" in d["calendar"] and d["held_out_dates"] == ["2022-05-05", "2022-08-13"]
