"""Real acquisition calendars: the pairing rule, the dense MS in time, the edge calendars (one fine
MS date, one HS date, cloudy fine MS, dense MS missing on dates, an HS date with no fine MS near it,
sensors days apart), bad bands (B3), Wald's reduction (B4) and the self-check."""

import json
import os

import numpy as np
import pytest
import torch
from helpers.mdd import make_tiny_mdd, truth_path
from osgeo import gdal

from stsfusion.model.core.calendar import (
    MAX_DAYS_APART,
    CalendarError,
    check_max_days,
    date_sources,
    fill_in_time,
    fine_for,
    interpolation_note,
    paired_date,
    stand_ins,
    temporal_sources,
)
from stsfusion.model.core.callbacks import Callbacks
from stsfusion.model.evaluation.metrics import assess
from stsfusion.model.evaluation.report import write_training_report
from stsfusion.model.fusion.fuse import fuse_time_series
from stsfusion.model.fusion.self_check import choose_holdout, train_with_self_check
from stsfusion.model.mdd.format import MDD, NODATA
from stsfusion.model.nn.model_file import load_model
from stsfusion.model.nn.network import FusionNetwork
from stsfusion.model.nn.samples import TrainingSet
from stsfusion.model.nn.training import init_linear_priors, train_fusion_model

SIZE = 36  # a multiple of the HS (3) and dense (2) ratios


# ---- the rule itself -------------------------------------------------------------------------


def test_pairing_takes_the_nearest_within_the_tolerance_and_the_earlier_on_a_tie():
    dates = ["2022-05-01", "2022-05-09", "2022-06-01"]
    assert paired_date(dates, "2022-05-05") == "2022-05-01"  # 4 days either side: the earlier
    assert paired_date(dates, "2022-05-07") == "2022-05-09"
    assert paired_date(dates, "2022-05-20", max_days=10) is None  # 11 and 12 days away
    assert paired_date(dates, "2022-05-20", max_days=12) == "2022-05-09"
    assert paired_date([], "2022-05-20") is None
    assert MAX_DAYS_APART == 10
    with pytest.raises(CalendarError, match="MAX_DAYS_APART"):
        check_max_days(-1)


def test_fine_for_pairs_hs_dates_only():
    fine, hs = ["2022-05-01", "2022-06-01"], ["2022-05-03"]
    assert fine_for(fine, "2022-06-01", hs) == "2022-06-01"  # its own image
    assert fine_for(fine, "2022-05-03", hs) == "2022-05-01"  # an HS date: the paired fine MS
    assert fine_for(fine, "2022-05-04", hs) is None  # any other date: predicted, not copied
    assert fine_for(fine, "2022-05-03", hs, max_days=1) is None


def test_interpolation_in_time_and_its_note():
    values = np.array([1.0, 2.0, 4.0], np.float32)[:, None, None, None] * np.ones((3, 1, 2, 2), np.float32)
    valid = np.ones((3, 2, 2), bool)
    valid[1, 0, 0] = False  # a cloud on the middle date
    out, ok = fill_in_time(values, valid, [0, 10, 20], 15)
    # the clouded pixel interpolates between its own valid dates 0 and 20: 1 + 15/20 * 3
    assert ok.all() and out[0, 0, 0] == pytest.approx(3.25) and out[0, 1, 1] == pytest.approx(3.0)
    out, _ = fill_in_time(values, valid, [0, 10, 20], 10)
    assert out[0, 0, 0] == pytest.approx(2.5) and out[0, 1, 1] == 2.0  # the gap is filled, the rest kept
    dates = ["2022-05-01", "2022-05-21"]
    assert "between 2022-05-01 (4 days before) and 2022-05-21 (16 days after)" in interpolation_note(
        dates, "2022-05-05"
    )
    assert "2022-05-21 (10 days before), the only side" in interpolation_note(dates, "2022-05-31")


def test_the_sources_of_a_predicted_fine_ms_are_the_nearest_date_and_the_nearest_on_the_other_side():
    fine = ["2022-04-10", "2022-05-30", "2022-06-24", "2022-09-07"]
    assert temporal_sources(fine, "2022-08-13", None) == ("2022-09-07", "2022-06-24")
    assert temporal_sources(fine, "2022-05-05", None) == ("2022-04-10", "2022-05-30")  # a tie: the earlier first
    assert temporal_sources(fine, "2022-08-13", None, bracketing=False) == ("2022-09-07", None)
    assert temporal_sources(fine, "2022-10-01", None) == ("2022-09-07", None)  # beyond the last: one side
    # The fine MS that stands for the date is left out of its own sources.
    assert temporal_sources(fine, "2022-06-24", "2022-06-24") == ("2022-05-30", "2022-09-07")
    assert temporal_sources([], "2022-06-24", None) == (None, None)


def test_the_dates_that_stand_in_for_a_cloudy_source_lie_beyond_it_on_its_side():
    fine = ["2022-04-10", "2022-05-10", "2022-06-20", "2022-07-20", "2022-08-30"]
    assert stand_ins(fine, "2022-05-30", "2022-05-10") == ["2022-04-10"]
    assert stand_ins(fine, "2022-05-30", "2022-06-20") == ["2022-07-20", "2022-08-30"]  # nearest first
    assert stand_ins(fine, "2022-05-30", "2022-06-20", own="2022-07-20") == ["2022-08-30"]
    assert stand_ins(fine, "2022-05-30", "2022-04-10") == []  # nothing beyond the first date


def test_what_a_fused_date_rests_on_and_the_warning_for_a_date_with_nothing_observed_near_it():
    fine, dense = ["2022-04-10", "2022-06-24", "2022-09-07"], ["2022-04-10", "2022-05-05", "2022-08-13", "2022-09-07"]
    hs = ["2022-04-10", "2022-06-20", "2022-07-19"]
    own = date_sources(fine, dense, hs, "2022-04-10")
    assert own == {
        "fine_ms": "observed that day",
        "dense_ms": "acquired that day (gaps filled in time per pixel)",
        "hs": "observed that day",
        "warning": None,
    }
    paired = date_sources(fine, dense, hs, "2022-06-20")  # an HS date: the fine MS 4 days after stands for it
    assert paired["fine_ms"] == "observed on 2022-06-24 (4 days after), paired with the HS"
    assert paired["dense_ms"].startswith("interpolated in time between 2022-05-05 (46 days before)")
    assert paired["warning"] is None  # a fine MS of its own: observed
    predicted = date_sources(fine, dense, hs, "2022-08-13")
    assert predicted["fine_ms"] == (
        "predicted from 2022-09-07 (25 days after) and 2022-06-24 (50 days before) with the dense MS's change, "
        "under a cloud of one from the next clear date beyond it"  # 2022-04-10, beyond 2022-06-24
    )
    # No fine MS date beyond either source: nothing stands in under their clouds.
    assert date_sources(fine[1:], dense, hs, "2022-08-13")["fine_ms"] == (
        "predicted from 2022-09-07 (25 days after) and 2022-06-24 (50 days before) with the dense MS's change"
    )
    assert predicted["hs"] == "from 2022-07-19 (25 days before), the nearest HS date" and predicted["warning"] is None
    # An HS date with no fine MS within 10 days and no dense MS within 10 days: nothing observed near it.
    far = date_sources(fine, dense, hs, "2022-07-19")
    assert far["fine_ms"].startswith("predicted from 2022-06-24 (25 days before) and 2022-09-07")
    assert far["warning"].startswith(
        "2022-07-19: no fine MS and no dense MS image within 10 days (the nearest is 25 days"
    )
    assert date_sources(fine, dense, hs, "2022-07-19", max_days=30)["warning"] is None  # the model's own rule
    assert date_sources(fine, [], hs, "2022-07-19")["warning"].count("none at all") == 1
    # Clouds and gaps: each image's valid pixels against its role's clearest date (Build's manifest).
    valid = {"fine_ms": {"2022-06-24": 0.6, "2022-04-10": 1.0}, "dense_ms": {"2022-08-13": 0.4, "2022-05-05": 0.995}}
    cloudy = date_sources(fine, dense, hs, "2022-08-13", valid=valid)
    assert cloudy["dense_ms"] == "acquired that day, 40 % of the clearest date's valid pixels (gaps filled)"
    assert cloudy["warning"] == (
        "2022-08-13: no fine MS of its own, and its dense MS image has 40 % of the clearest date's valid pixels "
        "(clouds or gaps): most of its fused image comes from the other dates."
    )
    assert date_sources(fine, dense, hs, "2022-06-20", valid=valid)["fine_ms"] == (
        "observed on 2022-06-24 (4 days after), paired with the HS, 60 % of the clearest date's valid pixels "
        "(the rest predicted in time)"
    )
    # Nearly clear (99 % or more) says nothing; a date with its own fine MS gets no warning for its dense MS.
    assert date_sources(fine, dense, hs, "2022-05-05", valid=valid)["dense_ms"].startswith("acquired that day (")
    assert date_sources(fine, dense, hs, "2022-09-07", valid={"dense_ms": {"2022-09-07": 0.1}})["warning"] is None


# ---- training on real calendars --------------------------------------------------------------


def _train_and_fuse(folder, epochs=6, **kwargs):
    manifest = make_tiny_mdd(folder, size=SIZE, **kwargs)
    logs, warnings = [], []
    model = os.path.join(folder, "m.pt")
    summary = train_fusion_model(
        manifest, model, epochs=epochs, patch_size=16, device="cpu", callbacks=Callbacks(log=logs.append)
    )
    paths = fuse_time_series(
        manifest, model, os.path.join(folder, "fused"), device="cpu", callbacks=Callbacks(warn=warnings.append)
    )
    return manifest, model, summary, "\n".join(logs), paths


def _cc_on_dense_only_dates(manifest, paths, indices=(1, 4)):
    """CC against the truth on the dates with only a dense MS image (indices into the truth dates)."""
    mdd = MDD.open(manifest)
    truth = np.load(truth_path(manifest))
    dense = mdd.roles["dense_ms"].dates
    out = []
    for i in indices:
        path = next(p for p in paths if dense[i] in os.path.basename(p))
        fused = gdal.Open(path).ReadAsArray().astype(np.float32)
        fused[fused == NODATA] = np.nan
        out.append(assess(fused, truth[i])["overall"]["CC"])
    return out


@pytest.mark.slow
def test_sensors_days_apart_train_every_task_and_fuse_as_well_as_same_day(tmp_path):
    """The calendar of the bug report: dense MS two days before the fine MS dates, HS a day after.
    Before the calendar rule both MS tasks were skipped and the dates without HS came out as noise
    (CC ~ 0); now every task trains and they score as the same-day series does."""
    same = _cc_on_dense_only_dates(*_train_and_fuse(tmp_path / "same")[::4])
    manifest, _, summary, log, paths = _train_and_fuse(tmp_path / "apart", shift_days={"dense_ms": -2, "hs": 1})
    assert summary["info"]["tasks"] == ["spatial", "temporal", "spectral", "fusion"]
    assert "HS 2022-03-02 paired with fine MS 2022-03-01 (1 days apart)" in log
    assert "Dense MS 2022-03-01: interpolated in time between" in log
    apart = _cc_on_dense_only_dates(manifest, paths)
    assert min(apart) > 0.95 and np.mean(apart) > np.mean(same) - 0.02, (apart, same)


@pytest.mark.slow
def test_one_fine_date_starts_the_temporal_branch_from_the_band_map(tmp_path):
    manifest = make_tiny_mdd(tmp_path, size=SIZE, fine_dates=(2,))
    logs = []
    data = TrainingSet(MDD.open(manifest), 12, 16, 0, logs.append)
    assert data.tasks == ["spatial", "spectral", "fusion"] and not data.pairs
    assert any("Only one fine MS date" in line for line in logs)
    torch.manual_seed(0)
    net = FusionNetwork(data.n_fine_bands, data.n_dense_bands, data.pca.n_components, "1")
    init_linear_priors(net, data, np.random.default_rng(0))
    # B1: no random weights left in the temporal prior: it is the fitted dense -> fine band map
    torch.testing.assert_close(net.temporal.change.weight, net.spatial.linear.weight)
    assert float(net.temporal.change.bias.detach().abs().max()) == 0.0
    run_manifest, _, _, _, paths = _train_and_fuse(tmp_path / "run", fine_dates=(2,))
    assert min(_cc_on_dense_only_dates(run_manifest, paths)) > 0.95


@pytest.mark.slow
def test_one_hs_date_trains_the_head_without_the_fine_ms_and_without_the_gap(tmp_path):
    manifest, model, summary, log, paths = _train_and_fuse(tmp_path, hs_dates=(2,))
    meta, _, _ = load_model(model)
    assert meta["network"]["reference_gap"] is False  # B2: never trained on a gap, so not used
    assert "Only one HS date" in log
    data = TrainingSet(MDD.open(manifest), 12, 16, 0, lambda m: None)
    batch = data.fusion_batch(np.random.default_rng(0), 32)
    dropped = (batch["va"].flatten(1).amax(1) == 0).sum()
    assert 0 < int(dropped) < 32  # B2: the head also learns the dates without their own fine MS
    assert min(_cc_on_dense_only_dates(manifest, paths)) > 0.95


@pytest.mark.slow
@pytest.mark.parametrize(
    "case, kwargs, expected",
    [
        ("cloudy fine MS", dict(fine_dates=(0, 2, 3, 5)), "Tasks: spatial, temporal, spectral, fusion."),
        ("dense MS missing on dates", dict(dense_dates=(0, 1, 3, 4)), "interpolated in time between"),
        ("HS with no fine MS near it", dict(shift_days={"hs": 20}), "no fine MS within 10 days"),
    ],
)
def test_edge_calendars_train_or_say_what_is_missing(tmp_path, case, kwargs, expected):
    manifest = make_tiny_mdd(tmp_path, size=SIZE, **kwargs)
    if case == "cloudy fine MS":  # a cloud in every fine MS image
        mdd = MDD.open(manifest)
        ds = gdal.Open(mdd.roles["fine_ms"].mask_path, gdal.GA_Update)
        for b in range(ds.RasterCount):
            m = ds.GetRasterBand(b + 1).ReadAsArray()
            m[5 + 4 * b : 15 + 4 * b, 10:25] = 0
            ds.GetRasterBand(b + 1).WriteArray(m)
        ds = None
    logs = []
    s = train_fusion_model(
        manifest, str(tmp_path / "m.pt"), epochs=1, patch_size=16, device="cpu", callbacks=Callbacks(log=logs.append)
    )
    assert os.path.isfile(s["model_path"]) and "fusion" in s["info"]["tasks"]
    assert any(expected in line for line in logs), (case, logs)


def test_a_missing_role_stops_with_a_message_naming_it(tmp_path):
    from stsfusion.model.nn.preprocessing import TrainingDataError

    manifest = make_tiny_mdd(tmp_path, size=SIZE, drop_roles=("fine_ms",))
    with pytest.raises(TrainingDataError, match="no fine MS date"):
        train_fusion_model(manifest, str(tmp_path / "m.pt"), epochs=1, patch_size=16, device="cpu")
    assert not os.path.exists(tmp_path / "m.pt")


# ---- bad bands (B3) and Wald's reduction (B4) --------------------------------------------------


@pytest.mark.slow
def test_bad_bands_stay_out_of_the_pca_and_are_nodata_in_fused_files(tmp_path):
    bbl = [1] * 40
    bbl[7] = bbl[30] = 0  # flagged bad, although they hold values
    manifest, model, _, _, paths = _train_and_fuse(tmp_path, epochs=1, bbl=bbl)
    data = TrainingSet(MDD.open(manifest), 12, 16, 0, lambda m: None)
    assert not data.pca.usable[7] and not data.pca.usable[30] and data.pca.usable.sum() == 38
    ds = gdal.Open(paths[0])
    for b in (8, 31):  # 1-based
        band = ds.GetRasterBand(b)
        assert (band.ReadAsArray() == NODATA).all()
        assert band.GetMetadataItem("wavelength") is not None  # the wavelength is kept
    assert (ds.GetRasterBand(1).ReadAsArray() != NODATA).any()


def test_wald_reduction_is_never_degenerate(tmp_path):
    """B4: Wald's reduction must make the target coarser than the inputs; with the HS barely coarser
    than the grid round() gave a step of 1 (no reduction: the fusion task learned an identity)."""
    manifest = make_tiny_mdd(tmp_path, size=SIZE, hs_ratio=1)
    data = TrainingSet(MDD.open(manifest), 12, 16, 0, lambda m: None)
    assert data.hs_ratio == 1.0 and data.step == 2
    batch = data.fusion_batch(np.random.default_rng(0), 2)
    assert batch["y"].shape[-1] == min(16, SIZE // 2)  # patches of the reduced (x2) world


# ---- self-check ------------------------------------------------------------------------------


@pytest.mark.slow
def test_self_check_figures_are_in_the_log_the_model_file_and_the_report(tmp_path):
    manifest = make_tiny_mdd(tmp_path, size=SIZE)
    assert choose_holdout(MDD.open(manifest))["window"] is None  # several HS dates: a whole date
    logs, warnings = [], []
    model = str(tmp_path / "m.pt")
    summary = train_with_self_check(
        manifest,
        model,
        epochs=2,
        patch_size=16,
        device="cpu",
        callbacks=Callbacks(log=logs.append, warn=warnings.append),
    )
    check = summary["self_check"]
    assert check["date"] in MDD.open(manifest).roles["hs"].dates
    for who in ("network", "two_stage"):
        assert set(check[who]) == {"CC", "SAM", "PSNR", "SSIM"} and 0.5 < check[who]["CC"] <= 1.0
    assert any(line.startswith("Self-check (HS") for line in logs)
    worse = check["worse_than_baseline"]
    assert bool(worse) == any("worse than the two-stage baseline" in w for w in warnings)
    meta, _, _ = load_model(model)
    assert meta["info"]["self_check"]["network"] == check["network"]
    report = write_training_report(str(tmp_path / "r.html"), summary["history"], summary["info"])
    text = open(report, encoding="utf-8").read()
    assert "Self-check" in text and f"{check['network']['CC']:.4g}" in text
    fuse_logs = []
    fuse_time_series(
        manifest,
        model,
        str(tmp_path / "f"),
        dates="2022-03-01",
        device="cpu",
        callbacks=Callbacks(log=fuse_logs.append, warn=fuse_logs.append),
    )
    assert any(line.startswith("Self-check (HS") for line in fuse_logs)  # Fuse prints it
    assert json.loads(json.dumps(check)) == check  # plain JSON in the model file


@pytest.mark.slow
def test_self_check_with_one_hs_date_withholds_a_block(tmp_path):
    manifest = make_tiny_mdd(tmp_path, size=SIZE, hs_dates=(2,))
    holdout = choose_holdout(MDD.open(manifest))
    x, y, w, h = holdout["window"]
    assert w == h == SIZE // 2 - (SIZE // 2) % 3 and x % 3 == 0 and y % 3 == 0
    summary = train_with_self_check(manifest, str(tmp_path / "m.pt"), epochs=1, patch_size=16, device="cpu")
    assert "block" in summary["self_check"]["withheld"] and summary["self_check"]["network"]["CC"] > 0.5


@pytest.mark.slow
def test_a_self_checked_run_on_two_hs_dates_keeps_the_views_reference_gap(tmp_path):
    """With two HS dates the self-check's view has one: the head never learns a time to its reference,
    so the model keeps ``reference_gap`` off after the epochs on everything, as a one-date model."""
    manifest = make_tiny_mdd(tmp_path, size=SIZE, hs_dates=(0, 5))
    model = str(tmp_path / "m.pt")
    summary = train_with_self_check(manifest, model, epochs=1, patch_size=16, device="cpu")
    assert summary["self_check"]["network"]["CC"] > 0.5 and len(summary["history"]) == 2
    assert load_model(model)[0]["network"]["reference_gap"] is False
    both = train_with_self_check(manifest, str(tmp_path / "plain.pt"), self_check=False, epochs=1, patch_size=16)
    assert both["self_check"] is None and load_model(str(tmp_path / "plain.pt"))[0]["network"]["reference_gap"] is True


def _fill_one_pixel(series, ok, days, day):
    """The rule, pixel by pixel: the nearest valid date on each side (the target's own counts on
    both), linear between them, else the one side found."""
    before = [i for i in np.argsort(-np.asarray(days), kind="stable") if ok[i] and days[i] <= day][:1]
    after = [i for i in np.argsort(np.asarray(days), kind="stable") if ok[i] and days[i] >= day][:1]
    if before and after and days[after[0]] > days[before[0]]:
        w = (day - days[before[0]]) / (days[after[0]] - days[before[0]])
        return series[before[0]] + np.float32(w) * (series[after[0]] - series[before[0]]), True
    side = before or after
    return (series[side[0]], True) if side else (np.full(series.shape[1:], np.nan), False)


@pytest.mark.parametrize("clear", [(), (1,), (0, 3)])
def test_fill_in_time_is_the_rule_pixel_by_pixel_whichever_dates_are_clear(clear):
    rng = np.random.default_rng(len(clear))
    days = [40, 0, 25, 10, 60]  # not in order
    values = rng.random((5, 2, 6, 7)).astype(np.float32)
    valid = rng.random((5, 6, 7)) > 0.5
    valid[list(clear)] = True  # clear dates: the whole image at once, and the farther dates never read
    for day in (0, 12, 25, 33, 70):
        out, ok = fill_in_time(values, valid, days, day)
        for y in range(6):
            for x in range(7):
                expected, found = _fill_one_pixel(values[:, :, y, x], valid[:, y, x], days, day)
                assert ok[y, x] == found
                np.testing.assert_allclose(out[:, y, x], expected, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["none", "threads"])
def test_fusion_says_what_each_date_rests_on_in_its_log_and_its_file(trained_tiny, tmp_path, scheduler):
    from stsfusion.model.fusion.distributed import dask_available

    if scheduler == "threads" and not dask_available():
        pytest.skip("Dask is not installed")
    # Date 1 has an HS image only: no fine MS and no dense MS within 10 days of it (25 days each way).
    manifest = make_tiny_mdd(str(tmp_path / "mdd"), hs_dates=(0, 1, 2, 3, 5), dense_dates=(0, 2, 3, 4, 5))
    mdd = MDD.open(manifest)
    lonely, own = mdd.dates[1], mdd.dates[2]
    log, warnings = [], []
    callbacks = Callbacks(log=log.append, warn=warnings.append)
    paths = fuse_time_series(
        manifest,
        trained_tiny[1],
        str(tmp_path / "out"),
        [lonely, own],
        device="cpu",
        scheduler=scheduler,
        callbacks=callbacks,
    )
    assert (
        f"{own}: fine MS observed that day; dense MS acquired that day (gaps filled in time per pixel); HS observed that day."
        in log
    )
    line = next(m for m in log if m.startswith(f"{lonely}: fine MS predicted from "))
    assert "dense MS interpolated in time between" in line and line.endswith("HS observed that day.")
    assert [w for w in warnings if w.startswith(f"{lonely}: no fine MS and no dense MS image within 10 days")]
    assert not [w for w in warnings if w.startswith(own)]
    md = gdal.Open(paths[0]).GetMetadata()
    assert md["ACQUISITION_DATE"] == lonely and md["STSFUSION_HS"] == "observed that day"
    assert md["STSFUSION_FINE_MS"].startswith("predicted from ") and md["STSFUSION_DENSE_MS"].startswith("interpolated")
    assert gdal.Open(paths[1]).GetMetadata()["STSFUSION_FINE_MS"] == "observed that day"


def test_the_valid_pixels_come_from_the_manifest_build_wrote(tmp_path):
    from stsfusion.model.fusion.fuse import sources_metadata, sources_of

    manifest = make_tiny_mdd(str(tmp_path / "mdd"))
    mdd = MDD.open(manifest)
    date = mdd.dates[1]  # no fine MS, no HS: predicted in time
    assert sources_of(mdd, date, None)["dense_ms"] == "acquired that day (gaps filled in time per pixel)"
    with open(manifest, encoding="utf-8") as f:
        d = json.load(f)
    # As Build MDD stack records them: each layer's valid fraction of the grid (here 0.8 at most).
    d["inputs"] = {
        "dense_ms": [{"date": t, "valid_fraction": 0.8 if t != date else 0.2} for t in mdd.roles["dense_ms"].dates]
    }
    with open(manifest, "w", encoding="utf-8") as f:
        json.dump(d, f)
    mdd = MDD.open(manifest)
    sources = sources_of(mdd, date, None)
    assert sources["dense_ms"] == "acquired that day, 25 % of the clearest date's valid pixels (gaps filled)"
    assert sources["warning"].startswith(f"{date}: no fine MS of its own, and its dense MS image has 25 %")
    assert sources_metadata(mdd, date, None)["STSFUSION_DENSE_MS"] == sources["dense_ms"]
