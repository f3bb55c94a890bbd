"""build_mdd_stack on tiny rasters in three CRSs: grid, dates, wavelengths, masks, values, cancel."""

import json

import numpy as np
import pytest
from helpers.rasters import FINE_ORIGIN, WL_MS, crs_wkt, make_raster, ramp
from helpers.rasters import make_three_role_inputs as make_inputs
from osgeo import gdal, osr

from stsfusion.model.core.callbacks import Callbacks, Canceled
from stsfusion.model.mdd.build import BuildMddError, build_mdd_stack, parse_dates_override
from stsfusion.model.mdd.format import NODATA, read_values
from stsfusion.model.mdd.raster_io import same_crs


def source_pixel_of_centres(grid, epsg, origin, px):
    """(row, col) of the source pixel (north-up, square px, in EPSG ``epsg``) under each grid
    pixel centre."""
    src = osr.SpatialReference()
    src.ImportFromWkt(grid.crs_wkt)
    dst = osr.SpatialReference()
    dst.ImportFromEPSG(epsg)
    for srs in (src, dst):
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    ct = osr.CoordinateTransformation(src, dst)
    x0, dx, _, y0, _, dy = grid.geotransform
    rows, cols = np.mgrid[0 : grid.height, 0 : grid.width]
    pts = ct.TransformPoints([(x0 + (c + 0.5) * dx, y0 + (r + 0.5) * dy) for r, c in zip(rows.ravel(), cols.ravel())])
    xy = np.array(pts)[:, :2].reshape(grid.height, grid.width, 2)
    return np.floor((origin[1] - xy[..., 1]) / px), np.floor((xy[..., 0] - origin[0]) / px)


def test_three_crs_grid_dates_wavelengths_masks_values(tmp_path):
    fine, dense, hs = make_inputs(tmp_path)
    out = str(tmp_path / "out" / "m.json")
    (tmp_path / "out").mkdir()
    messages = []
    mdd = build_mdd_stack(out, fine, dense, hs, callbacks=Callbacks(progress=lambda f, m: messages.append((f, m))))
    g = mdd.grid
    assert (g.width, g.height) == (32, 32)
    assert g.geotransform == (500000.0, 10.0, 0.0, 5800000.0, 0.0, -10.0)
    assert same_crs(g.crs_wkt, gdal.Open(fine[0]).GetProjection())
    assert mdd.roles["fine_ms"].dates == ["2022-07-01", "2022-08-01"]  # TIFFTAG_DATETIME; S2 name
    assert mdd.roles["fine_ms"].layers == ["fine_b", fine[0].rsplit("/", 1)[1][:-4]]
    assert mdd.roles["dense_ms"].dates == ["2022-07-01", "2022-07-15", "2022-08-01"]
    assert mdd.roles["hs"].dates == ["2022-07-01", "2022-08-01"]
    assert mdd.roles["fine_ms"].wavelengths == WL_MS
    assert mdd.roles["hs"].wavelengths == pytest.approx([500, 600, 700, 800, 900])
    assert mdd.roles["dense_ms"].wavelengths is None
    assert mdd.roles["dense_ms"].band_names == ["band 1", "band 2", "band 3"]
    # Native pixel sizes in metres on the UTM grid: 50 m of Web Mercator at 52.35 N is ~30.5 m;
    # a 0.001 deg pixel is ~68 m x 111 m, sqrt(area) ~ 87 m.
    assert mdd.roles["fine_ms"].native_pixel_size == pytest.approx(10.0)
    assert mdd.roles["dense_ms"].native_pixel_size == pytest.approx(30.5, abs=0.3)
    assert mdd.roles["hs"].native_pixel_size == pytest.approx(87.0, abs=1.5)
    assert mdd.scale_ratio("dense_ms") == pytest.approx(3.05, abs=0.03)

    # Fine MS is on its own grid: values copied exactly, later date first in the file order.
    fm = mdd.read("fine_ms")
    np.testing.assert_allclose(fm[0], ramp(32, 32, 4), atol=1e-5)
    np.testing.assert_allclose(fm[1], ramp(32, 32, 4) + 1, atol=1e-5)
    assert mdd.read_mask("fine_ms").all()

    # Dense MS: physical values (scale 1e-4) where valid; the cloud is masked on every date.
    dm, dmask = mdd.read("dense_ms"), mdd.read_mask("dense_ms")
    for k in range(3):
        for b in range(3):
            v = dm[k, b][dmask[k]]
            np.testing.assert_allclose(v, 0.3 + 0.01 * b + 0.001 * k, atol=1e-6)
    # Stored at its own pixel size (3.05 x the grid's, within 2 % of 3: an integer ratio), 11 x 11 px.
    stored = mdd.roles["dense_ms"].stored_grid(mdd.grid)
    assert mdd.roles["dense_ms"].pixel_ratio == 3 and mdd.roles["hs"].pixel_ratio == pytest.approx(8.7, abs=0.15)
    assert (stored.width, stored.height) == (11, 11) and stored.geotransform[:2] == (500000.0, 30.0)
    assert gdal.Open(mdd.roles["dense_ms"].path).RasterXSize == 11 and mdd.roles["fine_ms"].pixel_ratio == 1
    # The cloud keeps its outline: a stored pixel is masked exactly when its centre falls in a cloudy
    # source pixel (rows and columns 4..6 of the 3857 raster), and a grid pixel reads the stored pixel
    # under its centre.
    in_cloud = source_pixel_of_centres(stored, 3857, (1669700.0, 6863800.0), 50.0)
    coarse = ~(((in_cloud[0] >= 4) & (in_cloud[0] <= 6)) & ((in_cloud[1] >= 4) & (in_cloud[1] <= 6)))
    under = (np.arange(32) + 0.5) // 3
    expected = coarse[under.astype(int)][:, under.astype(int)]
    assert 60 < (~expected).sum() < 110
    for k in range(3):
        np.testing.assert_array_equal(dmask[k], expected)

    # HS: wavelengths in nm, scale applied, its nodata pixel (upper-left) masked.
    hv, hmask = mdd.read("hs"), mdd.read_mask("hs")
    np.testing.assert_allclose(hv[0][:, hmask[0]], 0.2, atol=1e-6)
    np.testing.assert_allclose(hv[1][:, hmask[1]], 0.25, atol=1e-6)
    stored = mdd.roles["hs"].stored_grid(mdd.grid)  # a rational ratio: 87 m pixels on the 10 m grid
    in_nodata = source_pixel_of_centres(stored, 4326, (14.998, 52.3515), 0.001)
    coarse = ~((in_nodata[0] == 1) & (in_nodata[1] == 2))
    under = np.minimum(np.floor((np.arange(32) + 0.5) / mdd.roles["hs"].pixel_ratio).astype(int), stored.width - 1)
    expected = coarse[under][:, under]
    assert 20 < (~expected).sum() <= 81  # the nodata pixel covers the grid's upper-left corner (9 x 9 at most)
    np.testing.assert_array_equal(hmask[0], expected)
    np.testing.assert_array_equal(hmask[1], expected)

    # The stack on disk: NODATA where the mask is 0, band descriptions, manifest provenance.
    ds = gdal.Open(mdd.roles["hs"].path)
    assert ds.RasterCount == 10 and ds.GetRasterBand(1).GetDescription() == "2022-07-01 500 nm"
    assert ds.GetRasterBand(1).ReadAsArray()[0, 0] == NODATA
    manifest = json.load(open(out))
    assert manifest["inputs"]["dense_ms"][0]["resampling"] == "bilinear"
    assert manifest["inputs"]["fine_ms"][0]["date_source"] == "metadata TIFFTAG_DATETIME"
    assert manifest["inputs"]["fine_ms"][1]["date_source"] == "file name"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        ["m.json"] + [f"m_{r}{s}.tif" for r in ("fine_ms", "dense_ms", "hs") for s in ("", "_mask")]
    )
    assert messages[-1][0] == 1.0 and any("bilinear" in m for _, m in messages)


def test_ramps_through_average_and_bilinear(tmp_path):
    """A linear ramp survives both resamplings: area average (finer source) gives the ramp at the
    target pixel centre; bilinear (coarser source) interpolates it exactly inside the footprint."""
    fine = [make_raster(tmp_path / "f_20220701.tif", ramp(30, 30, 2), 32633, FINE_ORIGIN, 10, wavelengths=[500, 600])]
    # Dense MS at 60 m covering the same 300 m: ramp in its own pixel coordinates.
    dense = [make_raster(tmp_path / "d_20220701.tif", ramp(5, 5, 2), 32633, FINE_ORIGIN, 60)]
    hs = [
        make_raster(tmp_path / "h_20220701.tif", ramp(10, 10, 3), 32633, FINE_ORIGIN, 30, wavelengths=[500, 600, 700])
    ]
    mdd = build_mdd_stack(str(tmp_path / "m.json"), fine, dense, hs, pixel_size=20.0, block=4)
    assert (mdd.grid.width, mdd.grid.height, mdd.grid.pixel_size) == (15, 15, 20.0)
    inputs = json.load(open(tmp_path / "m.json"))["inputs"]
    assert [inputs[r][0]["resampling"] for r in ("fine_ms", "dense_ms", "hs")] == ["average", "bilinear", "bilinear"]
    rows, cols = np.mgrid[0:15, 0:15].astype(np.float64)
    # Target pixel (r, c) has its centre at (20c + 10, 20r + 10) m from the origin.
    f = mdd.read("fine_ms")[0]
    np.testing.assert_allclose(f[1], 1 + 0.5 * (2 * cols + 0.5) + 0.25 * (2 * rows + 0.5) + 10, atol=1e-4)
    inner = (slice(2, 13), slice(2, 13))  # at least half a source pixel from the footprint edge
    d = mdd.read("dense_ms")[0, 0]
    expect = 1 + 0.5 * ((20 * cols + 10) / 60 - 0.5) + 0.25 * ((20 * rows + 10) / 60 - 0.5)
    np.testing.assert_allclose(d[inner], expect[inner], atol=1e-4)
    h = mdd.read("hs")[0, 2]
    expect = 1 + 0.5 * ((20 * cols + 10) / 30 - 0.5) + 0.25 * ((20 * rows + 10) / 30 - 0.5) + 20
    np.testing.assert_allclose(h[1:14, 1:14], expect[1:14, 1:14], atol=1e-4)
    assert mdd.read_mask("hs").all() and mdd.read_mask("dense_ms").all()


def test_block_size_does_not_change_the_result(tmp_path):
    fine, dense, hs = make_inputs(tmp_path)
    a = build_mdd_stack(str(tmp_path / "a.json"), fine, dense, hs)
    b = build_mdd_stack(str(tmp_path / "b.json"), fine, dense, hs, block=3, block_memory_mb=0)
    for role in ("fine_ms", "dense_ms", "hs"):
        np.testing.assert_array_equal(np.nan_to_num(a.read(role), nan=-1), np.nan_to_num(b.read(role), nan=-1))
        np.testing.assert_array_equal(a.read_mask(role), b.read_mask(role))


def test_stacks_are_stored_in_small_tiles_and_windows_stop_growing_at_512_px(tmp_path):
    """The stacks' tiles cover 64 px of the fine grid (a fusion tile's window decompresses about
    1.5² times its pixels, not 3²), compressed at ZSTD level 3 (or DEFLATE's); Build's windows are at
    most 256 rows by 512 columns of the fine grid on every role, so a 512 px grid already has the
    largest windows of a 2048 px one."""
    from stsfusion.model.core.grid import Grid
    from stsfusion.model.mdd.build import MAX_WINDOW_COLUMNS, WINDOW_ROWS, _windows
    from stsfusion.model.mdd.format import MDD_COMPRESSION_LEVEL, RoleStack

    fine, dense, hs = make_inputs(tmp_path)
    mdd = build_mdd_stack(str(tmp_path / "m.json"), fine, dense, hs)
    for role in ("fine_ms", "dense_ms", "hs"):
        stack = mdd.roles[role]
        ds = gdal.Open(stack.path)
        assert ds.GetRasterBand(1).GetBlockSize() == [stack.block, stack.block]
        structure = ds.GetMetadata("IMAGE_STRUCTURE")
        assert structure["COMPRESSION"] in ("ZSTD", "DEFLATE") and structure["PREDICTOR"] == "3"
    assert MDD_COMPRESSION_LEVEL == 3

    def stack(ratio):
        return RoleStack(role="hs", path="x", mask_path="y", dates=[], wavelengths=[], pixel_ratio=ratio)

    assert [stack(r).block for r in (1, 1.5, 2, 3, 6)] == [64, 48, 32, 32, 32]
    assert [stack(r).stored_px(256) for r in (1, 2, 3)] == [256, 128, 96]
    assert [stack(r).stored_px(512, within=True) for r in (1, 2, 3, 20)] == [512, 256, 160, 32]
    for ratio in (1, 2, 3):
        s = stack(ratio)
        sizes = []
        for side in (512, 2048):
            n = -(-side // ratio)
            stored = Grid("", (0, 10.0 * ratio, 0, 0, 0, -10.0 * ratio), n, n)
            rows = s.stored_px(WINDOW_ROWS) if ratio > 1 else 256
            wins = list(_windows(stored, 128, rows, 256, s.stored_px(MAX_WINDOW_COLUMNS, within=True)))
            sizes.append(max(w[2] * w[3] for w in wins))
            assert all(w[2] % s.block == 0 or w[0] + w[2] == stored.width for w in wins)
        assert sizes[1] == sizes[0], (ratio, sizes)


def test_cancel_leaves_nothing(tmp_path):
    fine, dense, hs = make_inputs(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    calls = []

    def is_canceled():
        calls.append(1)
        return len(calls) > 16  # cancel in the second fine MS layer (16 windows of 8 x 8 each)

    with pytest.raises(Canceled):
        build_mdd_stack(
            str(out / "m.json"),
            fine,
            dense,
            hs,
            callbacks=Callbacks(is_canceled=is_canceled),
            block=8,
            block_memory_mb=0,
        )
    assert len(calls) == 17
    assert list(out.iterdir()) == []


def test_target_crs_extent_and_dates_override(tmp_path):
    fine, dense, hs = make_inputs(tmp_path)
    # A user extent in UTM, target grid in Web Mercator at 20 m: snapped outward to whole pixels.
    mdd = build_mdd_stack(
        str(tmp_path / "m.json"),
        fine,
        dense,
        hs,
        target_crs="EPSG:3857",
        pixel_size=20.0,
        target_extent=(500050, 5799750, 500250, 5799950),
        extent_crs="EPSG:32633",
        dates="hs_1=2022-09-01; fine_b=2022-06-30",
    )
    g = mdd.grid
    assert same_crs(g.crs_wkt, crs_wkt(3857))
    x0, _, _, y1, _, _ = g.geotransform
    assert x0 % 20 == 0 and y1 % 20 == 0  # aligned to multiples of the pixel size in 3857
    assert 15 <= g.width <= 18 and 15 <= g.height <= 18  # 200 m x 1.64 (Mercator scale) / 20 m
    assert mdd.roles["hs"].dates == ["2022-07-01", "2022-09-01"]
    assert mdd.roles["fine_ms"].dates == ["2022-06-30", "2022-08-01"]
    assert mdd.roles["fine_ms"].native_pixel_size == pytest.approx(16.4, abs=0.2)
    # Fine MS ramps (values 1..40 + band) survive, and every fine pixel inside the extent is valid.
    assert mdd.read_mask("fine_ms").all()
    assert np.nanmax(mdd.read("fine_ms")) < 1 + 0.5 * 31 + 0.25 * 31 + 30 + 1 + 1e-3


def test_parse_dates_override():
    assert parse_dates_override("a=2022-07-24; b = 2022-08-01;") == {"a": "2022-07-24", "b": "2022-08-01"}
    with pytest.raises(BuildMddError, match="not layer_name=YYYY-MM-DD"):
        parse_dates_override("a=24.07.2022")
    with pytest.raises(BuildMddError, match="two dates"):
        parse_dates_override("a=2022-07-24;a=2022-07-25")


def test_dates_naming_an_unknown_layer_is_refused(tmp_path):
    fine, dense, hs = make_inputs(tmp_path)
    with pytest.raises(BuildMddError, match="DATES names nope"):
        build_mdd_stack(str(tmp_path / "m.json"), fine, dense, hs, dates="nope=2022-01-01")
    assert not (tmp_path / "m.json").exists()


def test_bad_bands_do_not_blank_the_mask(tmp_path):
    """Like EnMAP's water-vapour bands: one HS band nodata everywhere. Flagged bbl=0 it is ignored
    for validity and written as nodata (B3: never as a 0 that looks like data); unflagged it leaves no
    valid pixel and the error says why."""
    fine = [make_raster(tmp_path / "f_20220701.tif", ramp(16, 16, 2), 32633, FINE_ORIGIN, 10, wavelengths=[500, 600])]
    v = np.full((3, 6, 6), 0.2, np.float32)
    v[1] = -32768
    bad = [{"bbl": "1"}, {"bbl": "0"}, {"bbl": "1"}]
    hs = [
        make_raster(
            tmp_path / "h_20220701.tif",
            v,
            32633,
            FINE_ORIGIN,
            30,
            nodata=-32768,
            wavelengths=[500, 1400, 2000],
            band_metadata=bad,
        )
    ]
    mdd = build_mdd_stack(str(tmp_path / "m.json"), fine, fine, hs)
    assert mdd.roles["hs"].bbl == [1, 0, 1] and mdd.read_mask("hs").all()
    h = mdd.read("hs")[0]
    np.testing.assert_allclose(h[0], 0.2)
    np.testing.assert_array_equal(h[1], NODATA)  # nodata inside valid pixels ...
    assert np.isnan(read_values(mdd, "hs")[0, 1]).all()  # ... which readers see as NaN
    assert gdal.Open(mdd.roles["hs"].path).GetRasterBand(2).GetMetadataItem("bbl") == "0"
    unflagged = [
        make_raster(
            tmp_path / "u_20220701.tif", v, 32633, FINE_ORIGIN, 30, nodata=-32768, wavelengths=[500, 1400, 2000]
        )
    ]
    with pytest.raises(BuildMddError, match=r"bands 2 are nodata everywhere; mark such bands bad"):
        build_mdd_stack(str(tmp_path / "out.json"), fine, fine, unflagged)
    assert not list(tmp_path.glob("out*"))
