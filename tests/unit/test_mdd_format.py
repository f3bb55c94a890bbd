"""The MDD on-disk format: round trip, windowed reads, masks, manifest errors."""

import json

import numpy as np
import pytest
from osgeo import gdal, osr

from stsfusion.model.mdd.format import MDD, NODATA, Grid, MDDError, write_mdd_from_arrays
from stsfusion.model.mdd.resample import role_grid, storage_ratio


def _grid(w=7, h=5, px=10.0):
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    return Grid(srs.ExportToWkt(), (500000.0, px, 0.0, 5800000.0, 0.0, -px), w, h)


def test_round_trip_window_and_mask(tmp_path):
    rng = np.random.default_rng(0)
    hs = rng.random((2, 3, 5, 7), dtype=np.float32)
    hs[1, :, 2, 3] = np.nan
    mdd = write_mdd_from_arrays(
        str(tmp_path / "m.json"),
        _grid(),
        {
            "hs": dict(
                dates=["2022-01-01", "2022-03-01"], values=hs, wavelengths=[450, 550, 650], native_pixel_size=30.0
            )
        },
    )
    assert mdd.dates == ["2022-01-01", "2022-03-01"]
    assert mdd.scale_ratio("hs") == pytest.approx(3.0)
    out = mdd.read("hs", window=(2, 1, 4, 3))
    assert out.shape == (2, 3, 3, 4)
    np.testing.assert_allclose(out[0], hs[0, :, 1:4, 2:6])
    assert np.isnan(out[1, :, 1, 1]).all()
    mask = mdd.read_mask("hs", dates=["2022-03-01"])
    assert mask.shape == (1, 5, 7) and mask.sum() == 34 and not mask[0, 2, 3]
    ds = gdal.Open(mdd.roles["hs"].path)
    assert ds.RasterCount == 6
    assert ds.GetRasterBand(5).GetDescription() == "2022-03-01 550 nm"
    assert ds.GetRasterBand(5).GetMetadataItem("wavelength") == "550"
    assert ds.GetRasterBand(5).GetNoDataValue() == NODATA
    assert ds.GetRasterBand(5).ReadAsArray()[2, 3] == NODATA
    assert not list(tmp_path.glob("*.part*"))


def test_foreign_and_old_manifests_are_refused(tmp_path):
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(MDDError, match="not an STS Fusion MDD"):
        MDD.open(str(p))
    p.write_text(json.dumps({"format": "sts-fusion-mdd", "format_version": 99}))
    with pytest.raises(MDDError, match="format version 99"):
        MDD.open(str(p))
    p.write_text("{truncated")
    with pytest.raises(MDDError, match="not readable JSON"):
        MDD.open(str(p))
    p.write_text(json.dumps({"format": "sts-fusion-mdd", "format_version": 1, "roles": {}}))
    with pytest.raises(MDDError, match="0.2 or earlier.*own pixel size.*rebuild it with 'Build MDD stack'"):
        MDD.open(str(p))


def _gdal_bilinear(coarse: np.ndarray, grid: Grid, ratio: float) -> np.ndarray:
    """What Build MDD stack did before: GDAL's bilinear warp of the coarse raster onto the fine grid."""
    stored = role_grid(grid, ratio)
    drv = gdal.GetDriverByName("MEM")
    src = drv.Create("", stored.width, stored.height, coarse.shape[0], gdal.GDT_Float32)
    src.SetGeoTransform(stored.geotransform)
    src.SetProjection(grid.crs_wkt)
    for b in range(coarse.shape[0]):
        src.GetRasterBand(b + 1).WriteArray(coarse[b])
    x0, y1 = grid.geotransform[0], grid.geotransform[3]
    out = gdal.Warp(
        "",
        src,
        format="MEM",
        outputBounds=(x0, y1 - grid.height * grid.pixel_size, x0 + grid.width * grid.pixel_size, y1),
        width=grid.width,
        height=grid.height,
        resampleAlg="bilinear",
    )
    return out.ReadAsArray().reshape(coarse.shape[0], grid.height, grid.width)


@pytest.mark.parametrize("ratio", [3.0, 1.6])
def test_a_role_at_its_own_pixel_size_reads_as_gdal_bilinear_on_the_grid(tmp_path, ratio):
    grid = _grid(w=40, h=31)
    stored = role_grid(grid, ratio)
    assert (stored.width, stored.height) == ((14, 11) if ratio == 3 else (25, 20))
    rng = np.random.default_rng(1)
    coarse = rng.random((2, 4, stored.height, stored.width), dtype=np.float32)
    mdd = write_mdd_from_arrays(
        str(tmp_path / "m.json"),
        grid,
        {"hs": dict(dates=["2022-01-01", "2022-03-01"], values=coarse, wavelengths=[1, 2, 3, 4], pixel_ratio=ratio)},
    )
    assert gdal.Open(mdd.roles["hs"].path).RasterXSize == stored.width  # ratio² times fewer pixels on disk
    whole = mdd.read("hs")
    assert whole.shape == (2, 4, 31, 40) and np.isfinite(whole).all()
    reference = _gdal_bilinear(coarse[1], grid, ratio)
    np.testing.assert_allclose(whole[1], reference, atol=2e-6)
    # Any window reads what the whole grid reads (no seam), and its mask is the stored pixel's.
    window = (13, 7, 17, 11)
    part = mdd.read("hs", window)
    np.testing.assert_array_equal(part, whole[:, :, 7:18, 13:30])


def test_invalid_coarse_pixels_are_left_out_and_masks_keep_their_outline(tmp_path):
    grid = _grid(w=12, h=9)
    coarse = np.full((1, 2, 3, 4), 0.5, np.float32)
    coarse[0, :, 1, 1] = np.nan  # a cloud: one stored pixel, 3 x 3 grid pixels
    coarse[0, 1, 0, 3] = 0.9
    mdd = write_mdd_from_arrays(
        str(tmp_path / "m.json"),
        grid,
        {"hs": dict(dates=["2022-01-01"], values=coarse, wavelengths=[1, 2], pixel_ratio=3)},
    )
    valid = mdd.read_mask("hs")[0]
    expected = np.ones((9, 12), bool)
    expected[3:6, 3:6] = False
    np.testing.assert_array_equal(valid, expected)
    v = mdd.read("hs")[0]
    assert np.isnan(v[:, 3:6, 3:6]).all()
    # The cloud's neighbours are not pulled towards a fill value: a uniform field stays exactly uniform.
    assert (v[0][valid] == np.float32(0.5)).all()
    assert v[1, 1, 10] == np.float32(0.9) and 0.5 < v[1, 1, 8] < 0.9  # bilinear towards the bright pixel


def test_storage_ratio_rounds_near_integers_and_keeps_fine_roles_on_the_grid():
    assert storage_ratio(10.0, 10.0) == 1 and storage_ratio(14.0, 10.0) == 1
    assert storage_ratio(30.0, 10.0) == 3 and storage_ratio(30.5, 10.0) == 3
    assert storage_ratio(16.0, 10.0) == pytest.approx(1.6) and storage_ratio(87.0, 10.0) == pytest.approx(8.7)


@pytest.mark.parametrize("ratio", [1.0, 3.0, 1.6])
def test_projecting_the_stored_pixels_equals_projecting_the_grid_values(tmp_path, ratio):
    """read_projected (an affine map of the bands on the stored pixels, then brought to the grid) gives
    the map of what read() brings to the grid: same validity (clouds and hidden windows included),
    values within float32 rounding, 0 where invalid."""
    grid = _grid(w=40, h=31)
    stored = role_grid(grid, ratio)
    rng = np.random.default_rng(3)
    coarse = rng.random((2, 5, stored.height, stored.width), dtype=np.float32)
    cy, cx = int(12 / ratio), int(20 / ratio)
    coarse[1, :, cy : cy + 2, cx : cx + 2] = np.nan  # a cloud on the second date, within the window
    mdd = write_mdd_from_arrays(
        str(tmp_path / "m.json"),
        grid,
        {"hs": dict(dates=["2022-01-01", "2022-03-01"], values=coarse, wavelengths=[1, 2, 3, 4, 5], pixel_ratio=ratio)},
    )
    matrix = rng.normal(size=(3, 5)).astype(np.float32)
    offset = np.array([0.5, -1.0, 2.0], np.float32)

    def project(values):  # (time, band, row, col) -> (time, 3, row, col)
        return np.einsum("kb,tbrc->tkrc", matrix, np.nan_to_num(values)) + offset[:, None, None]

    hidden = mdd.hiding("hs", "2022-03-01", (20, 20, 5, 4))
    for view in (mdd, hidden):
        window = (13, 7, 17, 20)
        scores, valid = view.read_projected("hs", project, window)
        values = view.read("hs", window)
        np.testing.assert_array_equal(valid, view.read_mask("hs", window))
        assert (~valid).any() and scores.shape == (2, 3, 20, 17)
        expected = project(values)
        np.testing.assert_allclose(scores[:, :, valid[1]][1], expected[:, :, valid[1]][1], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(scores[0], expected[0], rtol=1e-5, atol=1e-5)
        assert (scores[1][:, ~valid[1]] == 0).all()
