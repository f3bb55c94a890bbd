"""stsfusion:buildmdd through processing.run: a run on three CRSs, every bad input, real EnMAP tiles."""

import glob
import os

import numpy as np
import pytest
from helpers.rasters import FINE_ORIGIN, WL_MS, make_raster, make_three_role_inputs, ramp
from osgeo import gdal

ALG = "stsfusion:buildmdd"


def run(qgis_app, params):
    import processing

    return processing.run(ALG, params)


def params_for(d, out_dir, **extra):
    fine, dense, hs = make_three_role_inputs(d)
    p = {"FINE_MS": fine, "DENSE_MS": dense, "HS": hs, "OUTPUT": str(out_dir / "m.json")}
    p.update(extra)
    return p


@pytest.fixture
def dirs(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    return tmp_path / "in", out


def test_processing_run_three_crs(qgis_app, dirs):
    from stsfusion.model.mdd.format import MDD

    d, out = dirs
    result = run(qgis_app, params_for(d, out, DATES="hs_1=2022-08-02", PIXEL_SIZE=20.0))
    assert result["OUTPUT"] == str(out / "m.json")
    mdd = MDD.open(result["OUTPUT"])
    assert (mdd.grid.width, mdd.grid.height, mdd.grid.pixel_size) == (16, 16, 20.0)
    assert mdd.grid.geotransform[0] == FINE_ORIGIN[0] and mdd.grid.geotransform[3] == FINE_ORIGIN[1]
    assert mdd.roles["fine_ms"].dates == ["2022-07-01", "2022-08-01"]
    assert mdd.roles["dense_ms"].dates == ["2022-07-01", "2022-07-15", "2022-08-01"]
    assert mdd.roles["hs"].dates == ["2022-07-01", "2022-08-02"]
    assert mdd.roles["fine_ms"].wavelengths == WL_MS
    assert mdd.roles["hs"].wavelengths == pytest.approx([500, 600, 700, 800, 900])
    # Fine MS 10 m -> 20 m by area average: the ramp at the 20 m pixel centres.
    rows, cols = np.mgrid[0:16, 0:16]
    np.testing.assert_allclose(
        mdd.read("fine_ms")[0, 0], 1 + 0.5 * (2 * cols + 0.5) + 0.25 * (2 * rows + 0.5), atol=1e-4
    )
    dm = mdd.read_mask("dense_ms")
    assert 0 < dm.mean() < 1
    np.testing.assert_allclose(mdd.read("dense_ms")[2, 1][dm[2]], 0.312, atol=1e-6)
    hm = mdd.read_mask("hs")
    np.testing.assert_allclose(mdd.read("hs")[1, 4][hm[1]], 0.25, atol=1e-6)
    assert not hm[0, 0, 0] and hm[0, 15, 15]


def expect_failure(qgis_app, params, out, *fragments):
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException) as err:
        run(qgis_app, params)
    for fragment in fragments:
        assert fragment in str(err.value), str(err.value)
    assert list(out.iterdir()) == [], "a failed run left files behind"


def test_no_overlap(qgis_app, dirs):
    d, out = dirs
    p = params_for(d, out)
    p["DENSE_MS"] = p["DENSE_MS"] + [
        make_raster(d / "far_20220720.tif", np.ones((3, 8, 8), np.float32), 32633, (600000, 5900000), 30)
    ]
    expect_failure(qgis_app, p, out, "dense MS layer 'far_20220720' does not overlap", "same area")


def test_layer_without_crs(qgis_app, dirs):
    d, out = dirs
    p = params_for(d, out)
    p["HS"] = p["HS"] + [
        make_raster(
            d / "nocrs_20220901.tif",
            np.ones((5, 8, 8), np.float32),
            None,
            FINE_ORIGIN,
            30,
            wavelengths=[500, 600, 700, 800, 900],
        )
    ]
    expect_failure(qgis_app, p, out, "HS layer 'nocrs_20220901' has no CRS", "Assign Projection")


def test_role_without_layer(qgis_app, dirs):
    d, out = dirs
    p = params_for(d, out)
    p["DENSE_MS"] = []
    expect_failure(qgis_app, p, out, "No dense MS layer was given", "add at least one raster to DENSE_MS")


def test_different_band_counts(qgis_app, dirs):
    d, out = dirs
    p = params_for(d, out)
    p["FINE_MS"] = p["FINE_MS"] + [make_raster(d / "fine3_20220901.tif", ramp(32, 32, 3), 32633, FINE_ORIGIN, 10)]
    expect_failure(qgis_app, p, out, "'fine3_20220901' has 3 bands", "4", "same bands")


def test_same_date_twice(qgis_app, dirs):
    d, out = dirs
    p = params_for(d, out)
    p["DENSE_MS"] = p["DENSE_MS"] + [
        make_raster(d / "again_2022_07_15.tif", np.ones((3, 8, 8), np.float32), 32633, FINE_ORIGIN, 40)
    ]
    expect_failure(qgis_app, p, out, "'again_2022_07_15'", "same date 2022-07-15", "DATES")


def test_hs_without_wavelengths(qgis_app, dirs):
    d, out = dirs
    p = params_for(d, out)
    p["HS"] = [make_raster(d / "hs_nowl_20220701.tif", np.ones((5, 8, 8), np.float32), 32633, FINE_ORIGIN, 30)]
    expect_failure(qgis_app, p, out, "HS layer 'hs_nowl_20220701' has no band wavelengths", "wavelength_units")


@pytest.mark.parametrize("size", [0, -10])
def test_pixel_size_not_positive(qgis_app, dirs, size):
    d, out = dirs
    expect_failure(
        qgis_app,
        params_for(d, out, PIXEL_SIZE=size),
        out,
        f"PIXEL_SIZE must be a positive number in target CRS units, not {float(size)}",
    )


def test_extent_without_valid_pixel(qgis_app, dirs):
    d, out = dirs
    # Inside every footprint, but the dense MS is all cloud (nodata) there.
    nodata = np.full((3, 14, 14), -1, np.int16)
    p = params_for(d, out)
    p["DENSE_MS"] = [make_raster(d / "cloudy_20220705.tif", nodata, 3857, (1669700.0, 6863800.0), 50.0, nodata=-1)]
    expect_failure(qgis_app, p, out, "Layer 'cloudy_20220705' has no valid pixel", "TARGET_EXTENT")


def test_extent_outside_the_inputs(qgis_app, dirs):
    d, out = dirs
    p = params_for(d, out, TARGET_EXTENT="400000,400100,5700000,5700100 [EPSG:32633]")
    expect_failure(qgis_app, p, out, "has no pixel inside TARGET_EXTENT", "choose an extent")


def enmap_mosaic(path, tiles):
    """A VRT mosaic of EnMAP tiles; gdalbuildvrt drops band metadata, so copy it (wavelengths)."""
    vrt = gdal.BuildVRT(str(path), tiles)
    src = gdal.Open(tiles[0])
    for i in range(src.RasterCount):
        vrt.GetRasterBand(i + 1).SetMetadata(src.GetRasterBand(i + 1).GetMetadata())
        vrt.GetRasterBand(i + 1).SetScale(src.GetRasterBand(i + 1).GetScale())
    vrt = None
    return str(path)


def test_real_enmap_tiles(qgis_app, shared_data, tmp_path):
    """Two real EnMAP L2A tiles (224 bands, scale 1e-4, nodata -32768, one date): HS as a 2x2-tile
    mosaic with holes on one date and a single tile on another (DATES), fine and dense MS made
    from the tiles (S2-like bands at 10 m in UTM, at 0.0005 deg in EPSG:4326)."""
    from stsfusion.model.mdd.format import MDD

    tiles = os.path.join(shared_data, "enmap_potsdam")
    a, b = (os.path.join(tiles, f"enmap_potsdam_tile_{n}.tif") for n in ("96_0", "128_32"))
    mosaic = enmap_mosaic(tmp_path / "enmap_mosaic.vrt", [a, b])  # 2 x 2 tiles: 2 tiles, 2 holes
    # Fine MS: bands near 490/560/665/865 nm, 10 m, from tile a; dense MS: same bands in EPSG:4326.
    src = gdal.Open(a)
    wl = [float(src.GetRasterBand(i + 1).GetMetadataItem("wavelength")) for i in range(src.RasterCount)]
    bands = [int(np.argmin(np.abs(np.array(wl) - w))) + 1 for w in (490, 560, 665, 865)]
    fine = str(tmp_path / "fine_20220724.tif")
    gdal.Translate(fine, mosaic, bandList=bands, xRes=10, yRes=10, resampleAlg="near")
    dense = str(tmp_path / "dense_20220724.tif")
    gdal.Warp(
        dense,
        gdal.Translate("", mosaic, format="VRT", bandList=bands),
        options=gdal.WarpOptions(dstSRS="EPSG:4326", xRes=0.0005, yRes=0.0005),
    )
    out = tmp_path / "out"
    out.mkdir()
    result = run(
        qgis_app,
        {
            "FINE_MS": [fine],
            "DENSE_MS": [dense],
            "HS": [a, mosaic],
            "DATES": "enmap_mosaic=2022-08-10",
            "PIXEL_SIZE": 30,
            "OUTPUT": str(out / "potsdam.json"),
        },
    )
    mdd = MDD.open(result["OUTPUT"])
    hs = mdd.roles["hs"]
    assert hs.dates == ["2022-07-24", "2022-08-10"]  # start_time metadata; DATES override
    assert len(hs.wavelengths) == 224
    np.testing.assert_allclose(hs.wavelengths, wl, rtol=1e-6)
    assert hs.wavelengths[0] == pytest.approx(418.24) and hs.fwhm[0] == pytest.approx(6.99561)
    assert hs.bbl is not None and sum(1 - v for v in hs.bbl) == 6  # EnMAP's bad bands
    assert mdd.grid.pixel_size == 30 and (mdd.grid.width, mdd.grid.height) == (32, 32)
    # The default extent is the overlap = tile a (96_0): tile a valid, and the mosaic's tile-a part.
    mask = mdd.read_mask("hs")
    assert mask[0].all()
    # Real reflectance: scale 1e-4 applied, values on the grid equal tile a's pixels x 1e-4.
    raw = src.GetRasterBand(50).ReadAsArray().astype(np.float64)
    np.testing.assert_allclose(mdd.read("hs", dates=["2022-07-24"])[0, 49], raw * 1e-4, rtol=1e-5, atol=1e-6)
    assert 0 < np.nanmean(mdd.read("hs")[0, :100]) < 0.6


def test_real_enmap_nodata_becomes_mask_zero(qgis_app, shared_data, tmp_path):
    """The mosaic's holes are EnMAP nodata (-32768): on a user extent over the whole mosaic they
    are mask 0 on the mosaic date, while the tiles' pixels are valid."""
    from stsfusion.model.mdd.format import MDD

    tiles = os.path.join(shared_data, "enmap_potsdam")
    a, b = (os.path.join(tiles, f"enmap_potsdam_tile_{n}.tif") for n in ("96_0", "128_32"))
    mosaic = enmap_mosaic(tmp_path / "mosaic.vrt", [a, b])
    assert gdal.Open(mosaic).GetRasterBand(1).GetNoDataValue() == -32768
    ms = str(tmp_path / "ms_20220724.tif")
    gdal.Translate(ms, mosaic, bandList=[20, 40, 60])
    out = tmp_path / "out"
    out.mkdir()
    x0, y0 = 365055.0, 5809965.0  # tile 96_0's upper-left corner; the mosaic is 64 x 64 px of 30 m
    result = run(
        qgis_app,
        {
            "FINE_MS": [ms],
            "DENSE_MS": [ms],
            "HS": [mosaic],
            "DATES": "mosaic=2022-07-24",
            "TARGET_EXTENT": f"{x0},{x0 + 1920},{y0 - 1920},{y0} [EPSG:32633]",
            "OUTPUT": str(out / "m.json"),
        },
    )
    mdd = MDD.open(result["OUTPUT"])
    assert (mdd.grid.width, mdd.grid.height) == (64, 64)
    m = mdd.read_mask("hs")[0]
    assert m[:32, :32].all() and m[32:, 32:].all()  # tiles 96_0 and 128_32
    assert not m[:32, 32:].any() and not m[32:, :32].any()  # the holes: nodata -32768
    ds = gdal.Open(mdd.roles["hs"].path)
    assert ds.RasterCount == 224
    assert ds.GetRasterBand(1).ReadAsArray()[0, 40] == -9999.0
    assert ds.GetRasterBand(224).GetDescription() == "2022-07-24 2445.53 nm"
    assert sorted(glob.glob(str(out / "*"))) == sorted(
        str(out / f)
        for f in ["m.json"] + [f"m_{r}{s}.tif" for r in ("fine_ms", "dense_ms", "hs") for s in ("", "_mask")]
    )


def test_paths_are_read_with_gdal_and_the_layers_qgis_loaded_for_them_are_released(qgis_app, dirs):
    """qgis_process loads every path as a map layer into the run's temporary store before the run
    (memory growing with the raster); Build names a path as QGIS would (the file name up to its
    first dot), reads it with GDAL and releases such layers. A layer object given is left alone."""
    import processing
    from qgis.core import QgsProcessingContext, QgsProcessingFeedback, QgsRasterLayer

    from stsfusion.model.mdd.format import MDD

    d, out = dirs
    p = params_for(d, out)
    dotted = str(d / "hs_b.v2.tif")
    os.rename(p["HS"][1], dotted)
    p["HS"] = [p["HS"][0], dotted]
    p["DATES"] = "hs_b=2022-08-03"  # the name QGIS would give the file
    context = QgsProcessingContext()
    loaded = QgsRasterLayer(p["FINE_MS"][0], "as qgis_process loads it")
    context.temporaryLayerStore().addMapLayer(loaded)
    given = QgsRasterLayer(p["FINE_MS"][1], "a layer object")
    p["FINE_MS"] = [p["FINE_MS"][0], given]
    result = processing.run(ALG, p, context=context, feedback=QgsProcessingFeedback())
    mdd = MDD.open(result["OUTPUT"])
    assert mdd.roles["hs"].dates == ["2022-07-01", "2022-08-03"]
    assert mdd.roles["fine_ms"].dates == ["2022-07-01", "2022-08-01"]
    assert context.temporaryLayerStore().count() == 0  # the layer loaded for the path: released
    assert given.isValid() and given.width() == 32  # the layer object: untouched


def test_a_path_gdal_cannot_open(qgis_app, dirs):
    d, out = dirs
    p = params_for(d, out)
    bad = d / "notes_20220901.tif"
    bad.write_text("not a raster")
    p["DENSE_MS"] = p["DENSE_MS"] + [str(bad)]
    expect_failure(qgis_app, p, out, "DENSE_MS: GDAL cannot open", "notes_20220901.tif", "GeoTIFF")


def test_dask_scheduler_none_threads_and_the_environment_variable_build_the_same_mdd(qgis_app, dirs, monkeypatch):
    """DASK_SCHEDULER: empty (Dask in this process where installed), 'none' (the loop), and the
    environment variable DASK_SCHEDULER read when the parameter is empty; the values are the same."""
    import processing
    from qgis.core import QgsProcessingFeedback

    from stsfusion.model.mdd.format import MDD

    pytest.importorskip("distributed")
    d, out = dirs
    logs, mdds = {}, {}
    for name, value, env in (("default", "", None), ("none", "none", None), ("env", "", "none")):
        if env:
            monkeypatch.setenv("DASK_SCHEDULER", env)
        feedback = QgsProcessingFeedback()
        seen = []
        feedback.pushInfo = seen.append
        (out / name).mkdir()
        result = processing.run(ALG, params_for(d, out / name, DASK_SCHEDULER=value, PIXEL_SIZE=5.0), feedback=feedback)
        logs[name], mdds[name] = seen, MDD.open(result["OUTPUT"])
    assert "Warping as Dask tasks in this process." in logs["default"]
    assert "Warping in this process, one window after another." in logs["none"]
    assert "Warping in this process, one window after another." in logs["env"]
    for role in ("fine_ms", "dense_ms", "hs"):
        for other in ("none", "env"):
            np.testing.assert_array_equal(mdds["default"].read(role), mdds[other].read(role))
            np.testing.assert_array_equal(mdds["default"].read_mask(role), mdds[other].read_mask(role))


def test_an_unreachable_dask_scheduler_is_a_clear_error(qgis_app, dirs):
    pytest.importorskip("distributed")
    d, out = dirs
    expect_failure(
        qgis_app,
        params_for(d, out, DASK_SCHEDULER="tcp://127.0.0.1:9"),
        out,
        "Cannot reach the Dask scheduler at tcp://127.0.0.1:9",
        "leave DASK_SCHEDULER empty to run in this process",
    )
