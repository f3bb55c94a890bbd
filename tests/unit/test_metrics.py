"""Accuracy metrics against values worked out by hand on tiny arrays (and SSIM against
scikit-image where it is importable)."""

import numpy as np
import pytest

from stsfusion.model.core.callbacks import Callbacks, Canceled
from stsfusion.model.evaluation.metrics import MetricsError, assess, ssim_band


def test_cc_by_hand():
    f = np.array([[[1.0, 2.0, 3.0]], [[1.0, 2.0, 3.0]]])
    r = np.array([[[1.0, 3.0, 2.0]], [[2.0, 4.0, 6.0]]])
    res = assess(f, r)
    # band 1: deviations (-1,0,1)·(-1,1,0) = 1 over sqrt(2·2) -> 0.5; band 2: exactly linear -> 1
    assert res["bands"][0]["CC"] == pytest.approx(0.5)
    assert res["bands"][1]["CC"] == pytest.approx(1.0)
    assert res["overall"]["CC"] == pytest.approx(0.75)


def test_sam_degrees_by_hand():
    # pixel 1: (1,0) vs (1,1) -> 45°; pixel 2: (0,1) vs (0,2) -> 0°
    f = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])
    r = np.array([[[1.0, 0.0]], [[1.0, 2.0]]])
    assert assess(f, r)["overall"]["SAM"] == pytest.approx(22.5)


def test_psnr_ergas_rmse_by_hand():
    r = np.array([[[1.0, 2.0], [3.0, 4.0]], [[5.0, 5.0], [5.0, 5.0]]])
    f = r.copy()
    f[0] += [[1.0, 0.0], [0.0, -1.0]]  # band 1: MSE 0.5; band 2 exact
    res = assess(f, r, ratio=3)
    assert res["bands"][0]["PSNR"] == pytest.approx(10 * np.log10(16 / 0.5))  # peak = 4
    assert res["bands"][1]["PSNR"] == float("inf")
    assert res["bands"][0]["RMSE"] == pytest.approx(np.sqrt(0.5))
    # ERGAS = 100/3 * sqrt(mean(0.5/2.5², 0)) = 100/3 * 0.2
    assert res["overall"]["ERGAS"] == pytest.approx(100 / 3 * 0.2)
    assert res["overall"]["RMSE"] == pytest.approx(0.5)  # sqrt(2 / 8)


def test_only_pixels_valid_in_both_count():
    rng = np.random.default_rng(1)
    r = rng.random((3, 4, 5))
    f = r + rng.normal(0, 0.1, r.shape)
    f_nan, r_nan = f.copy(), r.copy()
    f_nan[1, 0, 0] = np.nan  # one band invalid: the whole pixel leaves every metric
    r_nan[:, 3, 4] = np.nan
    res = assess(f_nan, r_nan)
    keep = np.ones((4, 5), bool)
    keep[0, 0] = keep[3, 4] = False
    ref = assess(f[:, keep][:, None], r[:, keep][:, None])
    assert res["valid_pixels"] == 18
    for m in ("CC", "SAM", "PSNR", "ERGAS", "RMSE"):
        assert res["overall"][m] == pytest.approx(ref["overall"][m])
    with pytest.raises(MetricsError, match="No pixel is valid"):
        assess(np.full((1, 2, 2), np.nan), r[:1, :2, :2])
    with pytest.raises(MetricsError, match="differ in shape"):
        assess(f, r[:2])


def test_ssim_one_window_by_hand():
    # 11x11: exactly one full window. x = column index, y = 2x: μy = 2μx, σy² = 4σx², σxy = 2σx²
    x = np.tile(np.arange(11.0), (11, 1))
    y = 2 * x
    w = np.exp(-0.5 * (np.arange(-5, 6) / 1.5) ** 2)
    w /= w.sum()
    mu, var = 5.0, float((w * (np.arange(11) - 5.0) ** 2).sum())
    L = 20.0  # data range of the reference y
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    expect = (4 * mu * mu + c1) * (4 * var + c2) / ((5 * mu * mu + c1) * (5 * var + c2))
    assert ssim_band(x, y, np.ones_like(x, bool), L) == pytest.approx(expect)
    assert assess(x, y)["overall"]["SSIM"] == pytest.approx(expect)
    assert assess(y, y)["overall"]["SSIM"] == pytest.approx(1.0)
    # a window touching an invalid pixel is left out: none remains -> NaN
    valid = np.ones_like(x, bool)
    valid[0, 0] = False
    assert np.isnan(ssim_band(x, y, valid, L))


def test_ssim_matches_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(2)
    r = rng.random((2, 24, 30)) * 1000
    f = r + rng.normal(0, 80, r.shape)
    res = assess(f, r)
    for b in range(2):
        sk = metrics.structural_similarity(
            f[b],
            r[b],
            data_range=r[b].max() - r[b].min(),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        assert res["bands"][b]["SSIM"] == pytest.approx(sk, rel=1e-9)


def test_band_invalid_everywhere_is_skipped():
    rng = np.random.default_rng(3)
    r = rng.random((3, 12, 12))
    f = r * 1.1
    f2, r2 = f.copy(), r.copy()
    r2[1] = np.nan  # e.g. a water-vapour band that is nodata in the reference
    res = assess(f2, r2)
    ref = assess(f[[0, 2]], r[[0, 2]])
    assert res["skipped_bands"] == [2] and [b["band"] for b in res["bands"]] == [1, 3]
    assert res["overall"] == pytest.approx(ref["overall"])


def test_assess_rasters_scale_alignment_and_outputs(tmp_path):
    from helpers.assess import utm_grid
    from osgeo import gdal

    from stsfusion.model.evaluation.metrics import assess_rasters
    from stsfusion.model.mdd.geotiff import spectral_band_metadata, write_geotiff

    rng = np.random.default_rng(5)
    ref = (rng.random((3, 16, 16)) * 0.5 + 0.1).astype(np.float32)
    fused = ref * np.float32(1.05)
    grid = utm_grid(16, 16)
    md = spectral_band_metadata([500, 600, 700])
    # reference as int16 x 1e4 with scale 1e-4: assessed in reflectance
    write_geotiff(
        str(tmp_path / "ref.tif"), np.round(ref * 1e4).astype(np.int16), grid, nodata=-32768, band_metadata=md
    )
    ds = gdal.Open(str(tmp_path / "ref.tif"), gdal.GA_Update)
    for b in range(3):
        ds.GetRasterBand(b + 1).SetScale(1e-4)
    ds = None
    ref_q = np.round(ref * 1e4) * 1e-4
    # fused: a 4 px wider grid starting 2 px further west and north (same pixel size)
    big = np.full((3, 20, 20), -9999.0, np.float32)
    big[:, 2:18, 2:18] = fused
    big_grid = utm_grid(20, 20, x0=500000.0 - 20, y0=5800000.0 + 20)
    write_geotiff(str(tmp_path / "fused.tif"), big, big_grid, nodata=-9999.0, band_metadata=md)
    logs = []
    res = assess_rasters(
        str(tmp_path / "fused.tif"),
        str(tmp_path / "ref.tif"),
        3.0,
        str(tmp_path / "t.csv"),
        str(tmp_path / "r.html"),
        callbacks=Callbacks(log=logs.append),
    )
    assert any("warping" in m for m in logs)
    expect = assess(fused, ref_q, ratio=3.0)
    assert res["valid_pixels"] == 256
    for m in ("CC", "SAM", "PSNR", "SSIM", "ERGAS", "RMSE"):
        assert res["overall"][m] == pytest.approx(expect["overall"][m], rel=1e-5)
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert lines[0].startswith("band,wavelength_nm,CC,SAM_deg,PSNR_dB,SSIM,ERGAS,RMSE")
    assert lines[2].startswith("2,600,") and lines[-1].startswith("overall,,")
    assert float(lines[-1].split(",")[6]) == pytest.approx(expect["overall"]["ERGAS"], rel=1e-5)
    page = (tmp_path / "r.html").read_text()
    assert "data:image/png;base64,iVBOR" in page and "SSIM" in page
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fused.tif", "r.html", "ref.tif", "t.csv"]


def test_assess_rasters_errors_leave_nothing(tmp_path):
    from helpers.assess import utm_grid

    from stsfusion.model.evaluation.metrics import assess_rasters
    from stsfusion.model.mdd.geotiff import write_geotiff

    grid = utm_grid(12, 12)
    write_geotiff(str(tmp_path / "a.tif"), np.ones((2, 12, 12), np.float32), grid)
    write_geotiff(str(tmp_path / "b.tif"), np.ones((3, 12, 12), np.float32), grid)
    with pytest.raises(MetricsError, match="has 2 bands and the reference 3"):
        assess_rasters(str(tmp_path / "a.tif"), str(tmp_path / "b.tif"), 3, str(tmp_path / "t.csv"))
    far = utm_grid(12, 12, x0=600000.0)
    write_geotiff(str(tmp_path / "c.tif"), np.ones((2, 12, 12), np.float32), far, nodata=-9999.0)
    with pytest.raises(MetricsError, match="No pixel is valid"):
        assess_rasters(str(tmp_path / "c.tif"), str(tmp_path / "a.tif"), 3, str(tmp_path / "t.csv"))
    assert not (tmp_path / "t.csv").exists()


def test_cancel_raises_canceled_and_writes_nothing(tmp_path):
    from helpers.assess import utm_grid

    from stsfusion.model.evaluation.metrics import assess_bands, assess_rasters
    from stsfusion.model.mdd.geotiff import write_geotiff

    rng = np.random.default_rng(4)
    f, r = rng.random((3, 8, 8)), rng.random((3, 8, 8))
    calls = []
    with pytest.raises(Canceled):
        assess_bands(
            3,
            lambda b: (f[b], r[b]),
            3.0,
            Callbacks(progress=lambda p, m: calls.append(p), is_canceled=lambda: len(calls) >= 2),
        )
    assert len(calls) == 2
    grid = utm_grid(8, 8)
    write_geotiff(str(tmp_path / "f.tif"), f.astype(np.float32), grid)
    write_geotiff(str(tmp_path / "r.tif"), r.astype(np.float32), grid)
    with pytest.raises(Canceled):
        assess_rasters(
            str(tmp_path / "f.tif"),
            str(tmp_path / "r.tif"),
            3.0,
            str(tmp_path / "t.csv"),
            str(tmp_path / "r.html"),
            callbacks=Callbacks(is_canceled=lambda: True),
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.tif", "r.tif"]
