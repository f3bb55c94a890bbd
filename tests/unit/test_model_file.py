"""The model file: round trip, and clear ModelErrors for corrupt, truncated, foreign or other-version files."""

import json
import os
import pickle

import numpy as np
import pytest
import torch
from helpers.mdd import make_tiny_mdd, make_tiny_model

from stsfusion.model.mdd.format import MDD
from stsfusion.model.nn.model_file import FORMAT_VERSION, load_model, save_model
from stsfusion.model.nn.predictor import ModelError, load_predictor

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("model"), epochs=1)


@pytest.mark.slow
def test_round_trip_holds_everything_fusion_needs(trained):
    manifest, path, summary = trained
    meta, arrays, state = load_model(path)
    assert meta["format_version"] == FORMAT_VERSION and meta["kernels"] == "1"
    assert meta["roles"]["hs"]["band_count"] == 40 and len(meta["roles"]["hs"]["wavelengths"]) == 40
    assert meta["roles"]["fine_ms"]["wavelengths"] == [490.0, 560.0, 665.0, 842.0]
    assert meta["roles"]["hs"]["scale_ratio"] == 3.0 and meta["roles"]["dense_ms"]["scale_ratio"] == 2.0
    assert meta["training_dates"] == MDD.open(manifest).dates
    assert arrays["pca_components"].shape == (12, 40)
    for k in ("fine_mean", "fine_std", "dense_mean", "dense_std", "pca_mean", "pca_band_weight"):
        assert k in arrays
    p = load_predictor(path, "cpu", subpixel_change=False)
    # Each HS date's own spectral map is saved; fusion's detail step on HS dates needs the HS PSF's
    # radius of context beyond the network's halo (16 px), which the dense MS's steps on the temporal
    # path (nn/dense_consistency.py: 2 x (2 blurs of 5 px + the guided change's 3)) make 33, and a dense
    # MS made from its date's fine MS through that blur (predictor._dense_from_fine) 5 more: 38 (the same
    # with the change below the dense pixel, on by default, which reads less beside them:
    # test_subpixel_change.py).
    assert arrays["date_maps"].shape == (len(meta["roles"]["hs"]["dates"]), 12, 5)
    assert meta["halo"] == 16 and p.net_halo == 38
    assert p.kernels == "1" and p.device == "cpu" and p.halo == p.net_halo + p.detail_blur.radius == 42
    assert p.hs_wavelengths == meta["roles"]["hs"]["wavelengths"]
    p.check_compatible(MDD.open(manifest))
    assert not [f for f in os.listdir(os.path.dirname(path)) if f.endswith(".part")]


def _expect(path, pattern):
    with pytest.raises(ModelError, match=pattern):
        load_predictor(str(path), "cpu")


@pytest.mark.slow
def test_missing_corrupt_truncated_and_foreign_files(trained, tmp_path):
    _, path, _ = trained
    _expect(tmp_path / "nope.pt", "does not exist")
    blob = open(path, "rb").read()
    (tmp_path / "trunc.pt").write_bytes(blob[: len(blob) // 2])
    _expect(tmp_path / "trunc.pt", "corrupt, truncated")
    (tmp_path / "noise.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    _expect(tmp_path / "noise.pt", "not a readable STS Fusion model")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    _expect(tmp_path / "foreign.pt", "not an STS Fusion model file")
    (tmp_path / "text.pt").write_text(json.dumps({"format": "sts-fusion-model"}))
    _expect(tmp_path / "text.pt", "not a readable STS Fusion model")


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/stsfusion-model-was-executed",))


def test_a_pickle_with_code_is_refused_without_running_it(tmp_path):
    marker = "/tmp/stsfusion-model-was-executed"
    if os.path.exists(marker):
        os.remove(marker)
    torch.save({"meta_json": "{}", "payload": _Evil()}, tmp_path / "evil.pt", pickle_module=pickle)
    _expect(tmp_path / "evil.pt", "not a readable STS Fusion model")
    assert not os.path.exists(marker)


@pytest.mark.slow
def test_other_version_and_mismatched_weights(trained, tmp_path):
    _, path, _ = trained
    meta, arrays, state = load_model(path)
    save_model(str(tmp_path / "v.pt"), dict(meta), arrays, state)
    payload = torch.load(tmp_path / "v.pt", weights_only=True)
    m = json.loads(payload["meta_json"])
    m["format_version"] = FORMAT_VERSION + 1
    payload["meta_json"] = json.dumps(m)
    torch.save(payload, tmp_path / "v2.pt")
    _expect(tmp_path / "v2.pt", f"format version {FORMAT_VERSION + 1}")
    # The file says kernel set 1/3 but holds the weights of a kernel-1 network.
    m = dict(meta, kernels="1/3", network=dict(meta["network"], kernels="1/3"))
    save_model(str(tmp_path / "k.pt"), m, arrays, state)
    _expect(tmp_path / "k.pt", "do not match the declared kernel set 1/3")


@pytest.mark.slow
def test_check_compatible_names_what_differs(trained, tmp_path):
    _, path, _ = trained
    p = load_predictor(path, "cpu")
    other = make_tiny_mdd(tmp_path / "a", size=24, n_hs=30)
    with pytest.raises(ModelError, match="HS has 30 bands, the model was trained on 40"):
        p.check_compatible(MDD.open(other))
    no_dense = make_tiny_mdd(tmp_path / "b", size=24, drop_roles=("dense_ms",))
    with pytest.raises(ModelError, match="no dense MS role"):
        p.check_compatible(MDD.open(no_dense))


def test_fill_in_time_interpolates_each_pixel_between_its_nearest_valid_dates():
    from stsfusion.model.core.calendar import fill_in_time

    values = np.repeat(np.array([1.0, 2.0, 4.0, 8.0], np.float32).reshape(4, 1, 1, 1), 3, axis=3)
    valid = np.ones((4, 1, 3), bool)
    valid[1, 0, 0] = False  # pixel 0: gap at day 10 between days 0 (1.0) and 20 (4.0)
    valid[2:, 0, 1] = False  # pixel 1: nothing after day 10 -> the nearest before
    valid[:, 0, 2] = False  # pixel 2: never valid
    out, ok = fill_in_time(values, valid, [0, 10, 20, 30], 10)
    np.testing.assert_allclose(out[0, 0, :2], [2.5, 2.0])  # 1 + (4 - 1) * 10 / 20; observed kept
    assert ok[0].tolist() == [True, True, False] and np.isnan(out[0, 0, 2])
    out, ok = fill_in_time(values, valid, [0, 10, 20, 30], 25)  # a date between images: 4 -> 8
    np.testing.assert_allclose(out[0, 0, :2], [6.0, 2.0])


@pytest.mark.slow
def test_a_cloud_in_the_dense_ms_of_a_date_without_fine_ms_is_filled(trained):
    manifest, path, _ = trained
    mdd = MDD.open(manifest)
    date = mdd.dates[1]  # no fine MS; its dense MS has a nodata disc (helpers.mdd)
    assert date not in mdd.roles["fine_ms"].dates and not mdd.read_mask("dense_ms", dates=[date])[0].all()
    hs = load_predictor(path, "cpu").predict(mdd, (0, 0, mdd.grid.width, mdd.grid.height), date)
    assert np.isfinite(hs).all()  # was NaN under the cloud before gaps were filled in time
    from helpers.mdd import truth_path

    truth = np.load(truth_path(manifest))[1]
    cloud = ~mdd.read_mask("dense_ms", dates=[date])[0]
    assert np.sqrt(np.mean((hs[:, cloud] - truth[:, cloud]) ** 2)) < 0.2 * truth.mean()


@pytest.mark.slow
def test_an_hs_date_uses_its_own_hs_first_and_a_date_between_fine_ms_dates_both_sources(trained):
    manifest, path, _ = trained
    mdd = MDD.open(manifest)
    p = load_predictor(path, "cpu")
    window = (0, 0, mdd.grid.width, mdd.grid.height)
    hs_date = mdd.roles["hs"].dates[1]
    x = p._inputs(mdd, window, hs_date)
    assert float(x["refs"][0]["gap"]) == 0.0 and 1 <= len(x["refs"]) <= len(mdd.roles["hs"].dates)
    gaps = [float(r["gap"]) for r in x["refs"]]
    assert gaps == sorted(gaps)  # nearest first; farther ones only where the nearer leave pixels uncovered
    covered = torch.stack([r["vrho"] for r in x["refs"]]).amax(0)
    assert len(x["refs"]) == len(mdd.roles["hs"].dates) or bool((covered >= 1).all())
    assert len(x["refs"]) == 1 or bool((x["refs"][0]["vrho"] < 1).any())
    own = mdd.read("hs", window, [hs_date])[0]
    ok = np.isfinite(own).all(0)
    np.testing.assert_allclose(p.pca.inverse(x["refs"][0]["h"][0].numpy())[:, ok], own[:, ok], atol=0.05)
    date = mdd.dates[1]  # between the fine MS dates 0 and 2
    x = p._inputs(mdd, window, date)
    wq = x["wq"].numpy()
    assert "fq2" in x and wq.shape == (1, 1, 24, 24) and (wq > 0).all() and (wq < 1).all()
    m1, m2 = ((x["d"] - x[k]).abs().mean(1, keepdim=True).numpy() for k in ("dq", "dq2"))
    np.testing.assert_allclose(wq, (m2 + 0.05) / (m1 + m2 + 0.1), rtol=1e-5)  # less change, more weight
    p.bracketing = False
    assert "fq2" not in p._inputs(mdd, window, date)


@pytest.mark.slow
def test_reference_residuals_are_computed_once_per_tile_and_give_the_same_fusion(trained, monkeypatch):
    from stsfusion.model.fusion.tiling import TileReadCache

    manifest, path, _ = trained
    mdd = MDD.open(manifest)
    p = load_predictor(path, "cpu")
    window = (0, 0, mdd.grid.width, mdd.grid.height)
    calls = []
    original = p.net.reference_residual

    def counting(*args):
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(p.net, "reference_residual", counting)
    cache = TileReadCache(mdd)
    shared = [p.predict(cache, window, d) for d in mdd.dates]
    once = len(calls)
    assert once <= len(mdd.roles["hs"].dates)  # each reference date at most once for the whole tile
    calls.clear()
    alone = [p.predict(mdd, window, d) for d in mdd.dates]  # no memo: recomputed for every date
    assert len(calls) > once
    for a, b in zip(shared, alone):
        np.testing.assert_array_equal(a, b)
