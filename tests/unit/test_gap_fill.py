"""The dense MS's gaps on a date filled from how the rest of that date changed (model/core/gap_fill.py)."""

import numpy as np
import pytest

from stsfusion.model.core.calendar import fill_in_time
from stsfusion.model.core.gap_fill import MIN_PIXELS, GapFill, fit_gap_fill, gap_features, nearest_others

DAYS = [100, 125, 150, 175, 200]


def _series(size=40, seed=0):
    """(values (T, 4, H, W), valid (T, H, W), cloud (H, W)): three kinds of field, each with its own
    curve in time (one greens up and is cut, one stays, one dries), a cloud on date 2."""
    rng = np.random.default_rng(seed)
    kind = np.kron(rng.integers(0, 3, (size // 5, size // 5)), np.ones((5, 5), int))
    base = rng.uniform(0.05, 0.3, (3, 4))
    t = (np.asarray(DAYS) - 100) / 100.0
    curves = np.stack([np.sin(np.pi * t) ** 2, np.zeros_like(t), -0.6 * t**2])  # (kind, T): not straight lines
    shape = np.array([[-0.3, -0.2, -0.5, 1.0], [0, 0, 0, 0], [0.4, 0.3, 0.4, 0.2]])  # each kind's change per band
    values = np.stack(
        [
            base[kind].transpose(2, 0, 1) + curves[kind][..., i][None] * shape[kind].transpose(2, 0, 1) * 0.2
            for i in range(5)
        ]
    )
    values = (values + rng.normal(0, 0.002, values.shape)).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    cloud = (yy - 20) ** 2 + (xx - 14) ** 2 < 9**2
    valid = np.ones((5, size, size), bool)
    valid[2] = ~cloud
    values[2][:, cloud] = np.nan
    return values, valid, cloud, kind


def test_nearest_others():
    assert nearest_others(DAYS, 150, k=2) == [1, 3]
    assert nearest_others(DAYS, 150, k=3) == [0, 1, 3]  # a tie goes to the earlier date
    assert nearest_others(DAYS, 100, k=10) == [1, 2, 3, 4]


def test_a_cloud_is_filled_from_how_fields_like_it_changed():
    values, valid, cloud, kind = _series()
    gap = fit_gap_fill(values, valid, DAYS, 150)
    assert isinstance(gap, GapFill) and gap.feature_days == (100, 125, 175, 200)
    filled, ok = gap.apply(values, valid, DAYS)
    plain, ok_plain = fill_in_time(values, valid, DAYS, 150)
    assert np.array_equal(ok, ok_plain) and ok.all()
    # Observed pixels stay as observed, bit for bit.
    np.testing.assert_array_equal(filled[:, ~cloud], values[2][:, ~cloud])
    # Under the cloud: the date's value of each kind of field (the truth is the clear pixels' mean of that kind).
    observed = values[2]
    errors = {}
    for name, v in (("regression", filled), ("interpolation", plain)):
        err = []
        for k in range(3):
            inside, outside = cloud & (kind == k), ~cloud & (kind == k)
            if inside.any() and outside.any():
                err.append(v[:, inside].mean(axis=1) - observed[:, outside].mean(axis=1))
        errors[name] = float(np.sqrt(np.mean(np.square(err))))
    assert errors["regression"] < 0.2 * errors["interpolation"], errors  # measured 0.0001 against 0.034


def test_without_a_fit_or_features_the_plain_interpolation_stays():
    values, valid, cloud, _ = _series()
    assert fit_gap_fill(values, valid, DAYS, 160) is None  # no image that day
    assert fit_gap_fill(values[:1], valid[:1], DAYS[:1], 100) is None  # no other date
    few = valid.copy()
    few[2] = False
    few[2, 0, : MIN_PIXELS // 2] = True
    assert fit_gap_fill(values, few, DAYS, 150) is None  # too few observed pixels on the date
    gap = fit_gap_fill(values, valid, DAYS, 150)
    # A pixel observed on no other date keeps what the interpolation gives (here: nothing valid).
    lonely = valid.copy()
    lonely[:, 20, 14] = False
    filled, ok = gap.apply(values, lonely, DAYS)
    plain, ok_plain = fill_in_time(values, lonely, DAYS, 150)
    assert not ok[20, 14] and np.array_equal(ok, ok_plain)
    np.testing.assert_array_equal(filled[:, ~cloud], plain[:, ~cloud])
    # Another MDD's dates: the map does not apply.
    other, _ = gap.apply(values, valid, [d + 1 for d in DAYS])
    np.testing.assert_array_equal(other, fill_in_time(values, valid, [d + 1 for d in DAYS], 150)[0])


def test_a_fill_depends_on_the_pixel_alone_so_tiles_agree():
    values, valid, _, _ = _series()
    gap = fit_gap_fill(values, valid, DAYS, 150)
    whole, _ = gap.apply(values, valid, DAYS)
    part = (slice(7, 31), slice(3, 22))
    cut, _ = gap.apply(values[..., part[0], part[1]], valid[..., part[0], part[1]], DAYS)
    np.testing.assert_array_equal(cut, whole[:, part[0], part[1]])
    f = gap_features(values, valid, DAYS, 150, nearest_others(DAYS, 150))
    assert f.shape == (4 * 4,) + values.shape[-2:] and np.isfinite(f).all()


@pytest.mark.slow
def test_fusion_fills_the_cloud_of_a_dense_image_from_the_rest_of_it(trained_tiny, monkeypatch):
    from stsfusion.model.mdd.format import MDD, read_values
    from stsfusion.model.nn import predictor
    from stsfusion.model.nn.predictor import load_predictor

    manifest, model = trained_tiny
    p = load_predictor(model, "cpu")
    logs = []
    mdd = p.prepare(MDD.open(manifest), logs.append)
    assert any(line.startswith("Gaps (clouds) of a date's dense MS: filled from") for line in logs)
    dates = mdd.roles["dense_ms"].dates
    cloudy = dates[1]  # helpers.mdd: a nodata disc in the dense MS of the second date
    window = (0, 0, mdd.grid.width, mdd.grid.height)
    values = read_values(mdd, "dense_ms", window=window)
    valid = mdd.read_mask("dense_ms", window=window) & np.isfinite(values).any(axis=1)
    assert (~valid[1]).any()
    # A window without gaps on its date fits nothing (cloud-free series do not pay for the fill).
    p._read(mdd, "dense_ms", dates[0], window, (values, valid))
    assert valid[0].all() and not p._gap_fills
    gap = p._gap_fill(mdd, cloudy)
    assert gap is not None and p._gap_fill(mdd, dates[0]) is not None
    assert p._gap_fill(mdd, "2022-01-01") is None  # not a dense MS date: interpolation in time alone
    d, vd = p._read(mdd, "dense_ms", cloudy, window, (values, valid))
    monkeypatch.setattr(predictor, "DENSE_GAP_FILL", False)
    plain = load_predictor(model, "cpu")
    logs = []
    plain.prepare(MDD.open(manifest), logs.append)
    assert not any(line.startswith("Gaps (clouds)") for line in logs)
    assert plain._gap_fill(mdd, cloudy) is None
    d0, vd0 = plain._read(mdd, "dense_ms", cloudy, window, (values, valid))
    assert np.array_equal(vd, vd0)
    same = np.broadcast_to(valid[1], d.shape)
    np.testing.assert_array_equal(d[same], d0[same])  # observed pixels as they were
    assert not np.allclose(d[~same], d0[~same])  # the cloud filled otherwise


@pytest.mark.slow
def test_a_cloud_on_a_fine_ms_date_is_filled_from_that_dates_fine_ms_without_seams(trained_tiny, tmp_path, monkeypatch):
    import torch
    from helpers.mdd import make_tiny_mdd
    from osgeo import gdal

    from stsfusion.model.fusion.fuse import fuse_time_series
    from stsfusion.model.mdd.format import MDD, read_values
    from stsfusion.model.nn import predictor
    from stsfusion.model.nn.predictor import load_predictor

    _, model = trained_tiny
    # The tiny series with a fine MS on date 1 too, the date whose dense MS has the cloud.
    manifest = make_tiny_mdd(str(tmp_path / "mdd"), fine_dates=(0, 1, 2, 3, 5))
    p = load_predictor(model, "cpu")
    mdd = p.prepare(MDD.open(manifest))
    date = mdd.roles["dense_ms"].dates[1]
    window = (0, 0, mdd.grid.width, mdd.grid.height)
    x, dense = p._ms_inputs(mdd, window, date)
    cloud = ~dense[1][1]
    assert cloud.any() and bool((x["va"][0, 0] > 0).all())
    module = p._dense_fit(mdd)
    with torch.no_grad():
        seen, _ = module.seen_as_dense(x["a"], x["va"])
    # Under the cloud the date's dense MS is its fine MS as the dense sensor sees it; elsewhere, observed.
    torch.testing.assert_close(x["d"][0][:, torch.from_numpy(cloud)], seen[0][:, torch.from_numpy(cloud)])
    monkeypatch.setattr(predictor, "DENSE_FROM_FINE", False)
    plain, _ = load_predictor(model, "cpu")._ms_inputs(mdd, window, date)
    monkeypatch.setattr(predictor, "DENSE_FROM_FINE", True)
    keep = torch.from_numpy(~cloud)
    torch.testing.assert_close(x["d"][0][:, keep], plain["d"][0][:, keep], rtol=0, atol=0)
    assert not torch.allclose(x["d"][0][:, ~keep], plain["d"][0][:, ~keep])
    values = read_values(mdd, "dense_ms")
    assert np.isnan(values[1][:, cloud]).all()  # the MDD itself is as it was
    # Tiles of 24 px give the output of one tile, on that date and on the next (date 1 its nearest
    # source, the earlier on a tie); on a grid larger than a tile with its halo, so the halo counts.
    big = make_tiny_mdd(str(tmp_path / "big"), size=132, fine_dates=(0, 1, 2, 3, 5))
    nxt = mdd.roles["dense_ms"].dates[2]
    from stsfusion.model.core.vocabulary import day_number, nearest_date

    assert nearest_date([d for d in mdd.roles["fine_ms"].dates if d != nxt], day_number(nxt)) == date
    assert 24 + 2 * p.halo < 132
    dates = f"{date},{nxt}"
    one = fuse_time_series(big, model, str(tmp_path / "one"), dates, tile_size=132, device="cpu")
    tiled = fuse_time_series(big, model, str(tmp_path / "tiled"), dates, tile_size=24, device="cpu")
    for a, b in zip(one, tiled):
        np.testing.assert_allclose(gdal.Open(b).ReadAsArray(), gdal.Open(a).ReadAsArray(), rtol=0, atol=1e-5)
