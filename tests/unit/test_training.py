"""Training on a tiny synthetic MDD: losses fall, runs are reproducible, bad inputs are clear errors,
tiles are seamless, and the model beats upsampling the nearest HS date on dates without HS."""

import os

import numpy as np
import pytest
import torch
from helpers.mdd import make_tiny_mdd, make_tiny_model, truth_path

from stsfusion.model.core.callbacks import Callbacks, Canceled
from stsfusion.model.core.vocabulary import day_number
from stsfusion.model.mdd.format import MDD, MDDError
from stsfusion.model.nn.predictor import load_predictor
from stsfusion.model.nn.preprocessing import HSPCA, TrainingDataError
from stsfusion.model.nn.training import train_fusion_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("train"), epochs=8, size=24)


@pytest.mark.slow
def test_every_task_loss_falls_and_history_is_complete(trained):
    _, path, summary = trained
    history = summary["history"]
    assert "canceled" not in summary and summary["model_path"] == path  # a cancel raises Canceled instead
    assert [h["epoch"] for h in history] == list(range(1, 9))
    assert summary["info"]["tasks"] == ["spatial", "temporal", "spectral", "fusion"]
    for task in summary["info"]["tasks"]:
        first = np.mean([h["loss"][task] for h in history[:2]])
        last = np.mean([h["loss"][task] for h in history[-2:]])
        assert last < first, (task, first, last)
        assert all(h["c"][task] > 0 for h in history)
    assert any(abs(history[-1]["c"][t] - 1.0) > 1e-3 for t in history[-1]["c"])  # the weights moved
    info = summary["info"]
    assert info["device"] == "cpu" and info["peak_memory_mb"] > 10 and info["time_s"] > 0
    assert 0.9 < sum(info["pca_explained_variance"]) <= 1.0 + 1e-6
    assert os.path.isfile(path)


@pytest.mark.slow
def test_seeded_cpu_runs_are_identical(tmp_path):
    manifest = make_tiny_mdd(tmp_path, size=24)
    runs = []
    for name in ("a.pt", "b.pt"):
        s = train_fusion_model(
            manifest, str(tmp_path / name), epochs=1, patch_size=12, batch_size=2, device="cpu", seed=7
        )
        runs.append(s)
    a = torch.load(tmp_path / "a.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert runs[0]["history"][0]["loss"] == runs[1]["history"][0]["loss"]
    c = train_fusion_model(
        manifest, str(tmp_path / "c.pt"), epochs=1, patch_size=12, batch_size=2, device="cpu", seed=8
    )
    assert c["history"][0]["loss"] != runs[0]["history"][0]["loss"]


def _no_model(tmp_path):
    return not [f for f in os.listdir(tmp_path) if f.endswith(".pt") or f.endswith(".part")]


def test_bad_inputs_are_clear_errors_and_leave_no_file(tmp_path):
    out = str(tmp_path / "m.pt")
    no_hs = make_tiny_mdd(tmp_path / "nohs", size=24, drop_roles=("hs",))
    with pytest.raises(TrainingDataError, match="no HS date"):
        train_fusion_model(no_hs, out, epochs=1, patch_size=8)
    empty = make_tiny_mdd(tmp_path / "empty", size=24, invalid_roles=("hs",))
    with pytest.raises(TrainingDataError, match="HS of .* has no valid pixel"):
        train_fusion_model(empty, out, epochs=1, patch_size=8)
    ok = make_tiny_mdd(tmp_path / "ok", size=24)
    with pytest.raises(TrainingDataError, match=r"PATCH_SIZE 32 is larger than the MDD grid \(24x24"):
        train_fusion_model(ok, out, epochs=1, patch_size=32)
    os.remove(str(tmp_path / "ok" / "tiny_dense_ms.tif"))
    with pytest.raises(MDDError, match="dense MS stack file .* is missing"):
        train_fusion_model(ok, out, epochs=1, patch_size=8)
    with pytest.raises(MDDError, match="does not exist"):
        train_fusion_model(str(tmp_path / "none.json"), out, epochs=1, patch_size=8)
    assert _no_model(tmp_path)


def test_cancel_stops_and_writes_nothing(tmp_path):
    manifest = make_tiny_mdd(tmp_path, size=24)
    calls = []

    def canceled():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Canceled):
        train_fusion_model(
            manifest, str(tmp_path / "m.pt"), epochs=50, patch_size=8, callbacks=Callbacks(is_canceled=canceled)
        )
    assert len(calls) == 4
    assert _no_model(tmp_path)


@pytest.mark.slow
def test_tiles_equal_a_one_tile_run(tmp_path):
    manifest, path, _ = make_tiny_model(tmp_path, kernels="1/3", epochs=1, size=36)
    p = load_predictor(path, "cpu")
    mdd = MDD.open(manifest)
    date = mdd.dates[1]  # no fine MS, no HS: temporal branch + references
    full = p.predict(mdd, (0, 0, 36, 36), date)
    h = p.halo
    tiled = np.full_like(full, -1.0)
    for y0, x0 in ((0, 0), (0, 18), (18, 0), (18, 18)):
        wy0, wx0 = max(0, y0 - h), max(0, x0 - h)
        wy1, wx1 = min(36, y0 + 18 + h), min(36, x0 + 18 + h)
        out = p.predict(mdd, (wx0, wy0, wx1 - wx0, wy1 - wy0), date)
        tiled[:, y0 : y0 + 18, x0 : x0 + 18] = out[:, y0 - wy0 : y0 - wy0 + 18, x0 - wx0 : x0 - wx0 + 18]
    assert full.shape == (40, 36, 36) and full.dtype == np.float32
    np.testing.assert_allclose(tiled, full, atol=2e-5, equal_nan=True)


def test_pca_handles_bands_without_data_and_noisy_bands():
    rng = np.random.default_rng(0)
    wl = np.linspace(400, 2400, 30)
    smooth = np.stack([np.sin(wl / 500.0), np.cos(wl / 700.0), (wl - 400) / 2000.0])  # smooth spectra
    base = rng.normal(size=(3000, 3)) @ smooth * 0.05 + 0.3
    pixels = base.copy()
    pixels[:, 12:14] = np.nan  # absorption bands: no finite value anywhere
    pixels[:, 29] += rng.normal(0, 0.5, 3000)  # a very noisy edge band
    pca = HSPCA.fit(pixels, wl, 5, seed=0)
    assert not pca.usable[12] and not pca.usable[13] and pca.usable.sum() == 28
    assert pca.band_weight[29] < 0.5 * np.median(pca.band_weight[pca.usable])
    img = np.moveaxis(base[:100].reshape(10, 10, 30), -1, 0)
    rec = pca.inverse(pca.transform(img, np.ones((10, 10), bool)))
    assert np.isnan(rec[12:14]).all() and np.isfinite(np.delete(rec, [12, 13], 0)).all()
    good = [b for b in range(29) if b not in (12, 13)]
    assert np.abs(rec[good] - img[good]).max() < 0.02


def _rmse(a, b):
    ok = np.isfinite(a).all(0)
    return float(np.sqrt(np.mean((a[:, ok] - b[:, ok]) ** 2)))


@pytest.mark.slow
def test_model_beats_nearest_hs_date_on_dates_without_hs(tmp_path):
    manifest, path, _ = make_tiny_model(tmp_path, epochs=12, size=36)
    p = load_predictor(path, "cpu")
    mdd = MDD.open(manifest)
    truth = np.load(truth_path(manifest))
    hs_dates = mdd.roles["hs"].dates
    report = []
    for i, date in enumerate(mdd.dates):
        if date in hs_dates:
            continue
        fused = p.predict(mdd, (0, 0, 36, 36), date)
        day = day_number(date)
        r = min(hs_dates, key=lambda d: (abs(day_number(d) - day), d))
        nearest = mdd.read("hs", dates=[r])[0]
        report.append((date, _rmse(fused, truth[i]), _rmse(nearest, truth[i])))
    print("date, RMSE fused, RMSE nearest HS date:", report)
    for date, fused, nearest in report:
        assert fused < 0.6 * nearest, (date, fused, nearest)


@pytest.mark.slow
def test_hs_bands_without_data_train_and_come_out_nan(tmp_path):
    """EnMAP-like absorption bands: NODATA in every pixel of two bands, the pixels otherwise valid."""
    from stsfusion.model.mdd.format import NODATA, write_mdd_from_arrays

    m = MDD.open(make_tiny_mdd(tmp_path / "src", size=24, cloud=False))
    roles = {}
    for role, s in m.roles.items():
        v = m.read(role)
        if role == "hs":
            v[:, 10:12] = NODATA
        roles[role] = dict(
            dates=s.dates, values=v, wavelengths=s.wavelengths, fwhm=s.fwhm, native_pixel_size=s.native_pixel_size
        )
    manifest = str(tmp_path / "bad.json")
    mdd = write_mdd_from_arrays(manifest, m.grid, roles)
    assert mdd.read_mask("hs").all()
    s = train_fusion_model(manifest, str(tmp_path / "m.pt"), epochs=1, patch_size=8, device="cpu")
    out = load_predictor(s["model_path"], "cpu").predict(mdd, (0, 0, 24, 24), mdd.dates[1])
    assert np.isnan(out[10:12]).all() and np.isfinite(np.delete(out, [10, 11], 0)).all()


def test_the_dates_of_a_tile_share_the_guide_and_give_the_same_values(tmp_path):
    """Through the per-tile read cache the dates of a tile share the guided change's guide and its
    similarity (``FusionPredictor._guide``); every date's values are those of a prediction alone."""
    from stsfusion.model.fusion.tiling import TileReadCache

    manifest, path, _ = make_tiny_model(tmp_path, epochs=1, size=36)
    p = load_predictor(path, "cpu")
    assert p.net.multi_date_guide and p.net.temporal.guided is not None
    assert p.net.temporal.trunk is None  # the defaults: the temporal prediction is its guided prior
    mdd = MDD.open(manifest)
    cache = TileReadCache(mdd)
    window = (0, 0, 36, 36)
    for date in mdd.dates:
        np.testing.assert_array_equal(p.predict(cache, window, date), p.predict(mdd, window, date))
    assert any(k[0] == "guide" for k in cache.derived)
