"""The two baselines on tiny MDDs: values worked out by hand, tile independence, outputs."""

import os

import numpy as np
import pytest
from helpers.assess import utm_grid
from osgeo import gdal

from stsfusion.model.core.callbacks import Callbacks, Canceled
from stsfusion.model.fusion.baselines import BaselineError, run_baseline
from stsfusion.model.mdd.format import NODATA, write_mdd_from_arrays

DATES = ["2022-05-01", "2022-05-11", "2022-05-31", "2022-06-20"]
WL = [450.0, 550.0, 650.0, 850.0, 1650.0]


def _read(path):
    a = gdal.Open(path).ReadAsArray().astype(np.float64)
    a[a == NODATA] = np.nan
    return a


def _blocks(values, f):
    """Coarse (…, h, w) repeated f×f: what an MDD holds for a coarse role warped with nearest."""
    return np.repeat(np.repeat(values, f, axis=-2), f, axis=-1)


def test_interpolation_nearest_date_and_fallback(tmp_path):
    grid = utm_grid(24, 24)
    hs = np.stack([np.full((5, 8, 8), 1.0), np.full((5, 8, 8), 3.0)]).astype(np.float32)
    hs[1, :, 2, 2] = np.nan  # cloud on the second HS date: falls back to the first
    mdd = write_mdd_from_arrays(
        str(tmp_path / "m.json"),
        grid,
        {
            "hs": dict(dates=[DATES[0], DATES[3]], values=_blocks(hs, 3), wavelengths=WL, native_pixel_size=30.0),
            "dense_ms": dict(
                dates=DATES, values=np.ones((4, 2, 24, 24), np.float32), wavelengths=[550, 850], native_pixel_size=20.0
            ),
        },
    )
    assert mdd.scale_ratio("hs") == 3
    out = tmp_path / "o"
    paths = run_baseline(mdd.path, "interpolation", str(out), tile_size=16)
    assert [os.path.basename(p) for p in paths] == [f"interpolation_{d}.tif" for d in DATES]
    v = [_read(p) for p in paths]
    np.testing.assert_allclose(v[0], 1.0)
    np.testing.assert_allclose(v[1], 1.0)  # 10 days from the first HS date, 40 from the second
    assert np.allclose(v[3][:, :3, :3], 3.0) and np.allclose(v[3][:, 6:9, 6:9], 1.0)
    ds = gdal.Open(paths[0])
    assert ds.GetRasterBand(4).GetMetadataItem("wavelength") == "850"
    assert ds.GetRasterBand(1).GetNoDataValue() == NODATA
    assert ds.GetMetadataItem("STSFUSION_BASELINE") == "interpolation"
    assert gdal.Info(paths[0], format="json")["bands"][0]["block"] == [256, 256]


def test_interpolation_is_bicubic_and_tile_independent(tmp_path):
    rng = np.random.default_rng(0)
    grid = utm_grid(30, 30)
    coarse = rng.random((1, 2, 10, 10)).astype(np.float32)
    mdd = write_mdd_from_arrays(
        str(tmp_path / "m.json"),
        grid,
        {"hs": dict(dates=[DATES[0]], values=_blocks(coarse, 3), wavelengths=[500, 600], native_pixel_size=30.0)},
    )
    from stsfusion.model.core.degrade import upsample

    a = _read(run_baseline(mdd.path, "interpolation", str(tmp_path / "a"), tile_size=9)[0])
    b = _read(run_baseline(mdd.path, "interpolation", str(tmp_path / "b"), tile_size=256)[0])
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(b, upsample(coarse[0], 3, (30, 30), "bicubic"), atol=1e-6)


def _two_stage_mdd(tmp_path, seed=0):
    """HS of 3 latent components (so the 3 MS bands determine it), fine MS a linear mix of the HS,
    dense MS the fine MS ×2 coarser, and a change uniform in space."""
    rng = np.random.default_rng(seed)
    grid = utm_grid(24, 24)
    latent = rng.random((3, 24, 24)).astype(np.float32)
    base = np.einsum("bk,kyx->byx", rng.random((5, 3)).astype(np.float32) * 0.2, latent) + 0.1
    shift = np.array([0.0, 0.02, 0.05, 0.08], np.float32)  # uniform change per date
    truth = np.stack([base + s for s in shift])  # HS truth, (date, 5, 24, 24)
    mix = np.array([[0.6, 0.4, 0, 0, 0], [0, 0.5, 0.5, 0, 0], [0, 0, 0.2, 0.8, 0]], np.float32)
    fine = np.einsum("fb,tbyx->tfyx", mix, truth)

    def coarse(v, f):
        h = v.shape[-1] // f
        m = v.reshape(v.shape[:-2] + (h, f, h, f)).mean(axis=(-3, -1))
        return _blocks(m, f)

    roles = {
        "fine_ms": dict(dates=[DATES[0], DATES[3]], values=fine[[0, 3]], wavelengths=[500, 600, 800]),
        "dense_ms": dict(dates=DATES, values=coarse(fine, 2), wavelengths=[500, 600, 800], native_pixel_size=20.0),
        "hs": dict(dates=[DATES[0], DATES[3]], values=coarse(truth[[0, 3]], 3), wavelengths=WL, native_pixel_size=30.0),
    }
    return write_mdd_from_arrays(str(tmp_path / "m.json"), grid, roles), truth, fine


def test_two_stage_recovers_uniform_change(tmp_path):
    mdd, truth, fine = _two_stage_mdd(tmp_path)
    paths = run_baseline(mdd.path, "two_stage", str(tmp_path / "o"), dates=DATES[1:3], tile_size=12)
    assert [os.path.basename(p) for p in paths] == [f"two_stage_{d}.tif" for d in DATES[1:3]]
    for p, t in zip(paths, (1, 2)):
        v = _read(p)
        assert v.shape == (5, 24, 24) and np.isfinite(v).all()
        # the change is uniform and the HS linear in the MS: exact up to the ridge penalty, and
        # far better than the nearest HS date upsampled
        err = np.abs(v - truth[t]).mean()
        interp = _read(run_baseline(mdd.path, "interpolation", str(tmp_path / "i"), dates=[DATES[t]])[0])
        assert err < 4e-3 and err < 0.2 * np.abs(interp - truth[t]).mean(), err
    again = run_baseline(mdd.path, "two_stage", str(tmp_path / "p"), dates=DATES[1:3], tile_size=48)
    np.testing.assert_allclose(_read(again[0]), _read(paths[0]), atol=1e-5)


def test_baseline_errors_and_cancel_leave_nothing(tmp_path):
    mdd, _, _ = _two_stage_mdd(tmp_path)
    out = tmp_path / "o"
    with pytest.raises(BaselineError, match="Unknown baseline 'cnmf'"):
        run_baseline(mdd.path, "cnmf", str(out))
    with pytest.raises(BaselineError, match="no date 2021-01-01"):
        run_baseline(mdd.path, "interpolation", str(out), dates="2021-01-01")
    with pytest.raises(Canceled):
        run_baseline(mdd.path, "interpolation", str(out), callbacks=Callbacks(is_canceled=lambda: True))
    with pytest.raises(Canceled):
        run_baseline(mdd.path, "two_stage", str(out), callbacks=Callbacks(is_canceled=lambda: True))
    assert not out.exists() or os.listdir(out) == []


def test_two_stage_names_the_missing_role(tmp_path):
    grid = utm_grid(12, 12)
    mdd = write_mdd_from_arrays(
        str(tmp_path / "m.json"),
        grid,
        {
            "hs": dict(
                dates=[DATES[0]], values=np.ones((1, 5, 12, 12), np.float32), wavelengths=WL, native_pixel_size=30.0
            ),
            "dense_ms": dict(
                dates=DATES, values=np.ones((4, 2, 12, 12), np.float32), wavelengths=[550, 850], native_pixel_size=20.0
            ),
        },
    )
    out = tmp_path / "o"
    with pytest.raises(BaselineError, match="the MDD has no fine MS: rebuild it with all three roles"):
        run_baseline(mdd.path, "two_stage", str(out))
    assert not out.exists() or os.listdir(out) == []


def test_two_stage_temporal_stage_is_exact_for_uniform_change(tmp_path):
    from stsfusion.model.fusion.baselines import TwoStage

    mdd, _, fine = _two_stage_mdd(tmp_path)
    model = TwoStage(mdd, 12)
    np.testing.assert_allclose(model.band_map[:3], np.eye(3), atol=1e-4)  # dense = fine, coarser
    for t in (1, 2):
        np.testing.assert_allclose(model.predict_fine((0, 0, 24, 24), DATES[t]), fine[t], atol=1e-5)


def test_ridge_matches_scikit_learn():
    from sklearn.linear_model import Ridge

    from stsfusion.model.fusion.baselines import _solve

    rng = np.random.default_rng(3)
    x = rng.random((200, 3))
    y = x @ rng.random((3, 4)) + 0.1 * rng.standard_normal((200, 4)) + 2.0
    xa = np.c_[x, np.ones(200)]
    w = _solve(xa.T @ xa, xa.T @ y, 0.05)
    lam = 0.05 * np.trace(np.cov(x.T, bias=True) * 200) / 3
    sk = Ridge(alpha=lam).fit(x, y)
    np.testing.assert_allclose(w[:3], sk.coef_.T, rtol=1e-6)
    np.testing.assert_allclose(w[3], sk.intercept_, rtol=1e-6)


def test_per_date_regression_fits_each_hs_date_on_its_own(tmp_path):
    """Each HS date is its own linear map of that date's fine MS (another gain per date): the per-date
    regression recovers every date exactly at the fine scale, which one map for all dates cannot;
    it writes only those dates, and refuses a date without HS."""
    rng = np.random.default_rng(4)
    grid = utm_grid(24, 24)
    fine = rng.random((2, 3, 24, 24)).astype(np.float32)
    maps = [rng.normal(size=(5, 3)), rng.normal(size=(5, 3))]
    truth = np.stack([np.einsum("hb,byx->hyx", m, f) + 0.1 * (i + 1) for i, (m, f) in enumerate(zip(maps, fine))])
    hs = truth.reshape(2, 5, 8, 3, 8, 3).mean(axis=(3, 5)).astype(np.float32)  # 30 m block means
    mdd = write_mdd_from_arrays(
        str(tmp_path / "m.json"),
        grid,
        {
            "fine_ms": dict(dates=[DATES[0], DATES[2]], values=fine, wavelengths=[450, 650, 850]),
            "hs": dict(dates=[DATES[0], DATES[2]], values=_blocks(hs, 3), wavelengths=WL, native_pixel_size=30.0),
            "dense_ms": dict(dates=DATES[:3], values=np.ones((3, 2, 24, 24), np.float32), wavelengths=[550, 850]),
        },
    )
    paths = run_baseline(mdd.path, "per_date_regression", str(tmp_path / "o"), tile_size=16)
    assert [os.path.basename(p) for p in paths] == [f"per_date_regression_{d}.tif" for d in (DATES[0], DATES[2])]
    for p, t in zip(paths, truth):
        np.testing.assert_allclose(_read(p), t, atol=5e-3)  # the ridge penalty: not exactly 0
    with pytest.raises(BaselineError, match="only the dates with both an HS and a fine MS image.*not 2022-05-11"):
        run_baseline(mdd.path, "per_date_regression", str(tmp_path / "x"), dates=DATES[1])
    assert not (tmp_path / "x").exists() or not list((tmp_path / "x").iterdir())
