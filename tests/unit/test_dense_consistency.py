"""The fine MS predicted in time put back in line with the date's dense MS (model/nn/dense_consistency.py)."""

import numpy as np
import pytest
import torch

from stsfusion.model.mdd.registration import central_window, resampled_blur_sigma
from stsfusion.model.nn.dense_consistency import (
    DenseConsistency,
    date_gain,
    fit_dense_map,
    reach,
)
from stsfusion.model.nn.network import GaussianBlur

SIGMA = 1.2
M = np.array([[0.8, 0.3, 0.0], [0.1, 0.5, 0.6]], np.float32)  # 2 dense bands from 3 fine bands
B = np.array([0.2, -0.1], np.float32)


def _fields(seed=0, size=48):
    """3-band fine MS of sharp-edged 6 px fields (a constant spectrum each) and a change per field."""
    rng = np.random.default_rng(seed)
    labels = np.kron(rng.integers(0, 20, (size // 6, size // 6)), np.ones((6, 6), int))
    spectra, change = rng.normal(0, 1, (20, 3)), rng.normal(0, 0.6, (20, 3))
    before = np.moveaxis(spectra[labels], -1, 0).astype(np.float32)
    after = np.moveaxis((spectra + change)[labels], -1, 0).astype(np.float32)
    return before, after


def _as_dense(fine: np.ndarray, gain: float = 0.0) -> torch.Tensor:
    """The dense MS of a fine MS: blurred, mapped by M, plus B, with a gain of its date."""
    blur = GaussianBlur(SIGMA)
    f = torch.from_numpy(fine)[None]
    fb, _ = blur(f, torch.ones(1, 1, *fine.shape[1:]))
    return (1 + gain) * (torch.einsum("dc,bchw->bdhw", torch.from_numpy(M), fb) + torch.from_numpy(B).view(1, -1, 1, 1))


def _module():
    m = DenseConsistency(SIGMA, guided_radius=0, steps=2)
    m.set_map(M, B)
    return m


def _rmse(a, b, margin=6):
    return float(np.sqrt(((a - b)[:, margin:-margin, margin:-margin] ** 2).mean()))


def test_the_dense_map_is_fitted_from_pairs_of_the_same_date():
    before, after = _fields()
    valid = np.ones(before.shape[1:], bool)
    pairs = [(f, _as_dense(f)[0].numpy()) for f in (before, after)]
    w, b = fit_dense_map([(f, valid) for f, _ in pairs], [(d, valid) for _, d in pairs], SIGMA)
    np.testing.assert_allclose(w, M, atol=1e-3)
    np.testing.assert_allclose(b, B, atol=1e-3)
    assert fit_dense_map([(before, np.zeros_like(valid))], [(pairs[0][1], valid)], SIGMA) is None  # no valid pixel


def test_the_steps_bring_a_prediction_wrong_at_the_dense_scale_towards_the_truth():
    before, after = _fields()
    truth = torch.from_numpy(after)[None]
    blur = GaussianBlur(3.0)
    # What the change mapping gets wrong is smooth: a prediction off by a blurred field of errors.
    noise = torch.from_numpy(np.random.default_rng(1).normal(0, 1.0, truth.shape).astype(np.float32))
    predicted = truth + blur(noise, torch.ones(1, 1, 48, 48))[0]
    v = torch.ones(1, 1, 48, 48)
    to_fine = torch.from_numpy(np.linalg.pinv(M)).view(3, 2, 1, 1)
    d = _as_dense(after)
    corrected = _module()(predicted, v, d, torch.zeros(2, 2), to_fine, lambda c, vv: c)
    before_rmse = _rmse(predicted[0].numpy(), after)
    after_rmse = _rmse(corrected[0].numpy(), after)
    assert after_rmse < 0.75 * before_rmse  # measured 0.100 -> 0.055
    # Where the prediction is not valid it is left alone.
    v0 = torch.zeros_like(v)
    unchanged = _module()(predicted, v0, d, torch.zeros(2, 2), to_fine, lambda c, vv: c)
    assert torch.equal(unchanged, predicted)


def test_a_dense_image_with_its_own_gain_does_not_pass_it_on():
    before, after = _fields()
    truth = torch.from_numpy(after)[None]
    v = torch.ones(1, 1, 48, 48)
    d = _as_dense(after, gain=0.08)  # the date's calibration 8 % off
    module = _module()
    gain = date_gain(module, truth, v, d)
    # d - (M(B p) + b) = 0.08 (M(B p) + b): read as a gain of 0.08 and no offset
    np.testing.assert_allclose(gain[0], [0.08, 0.08], atol=1e-3)
    np.testing.assert_allclose(gain[1], [0.0, 0.0], atol=1e-3)
    to_fine = torch.from_numpy(np.linalg.pinv(M)).view(3, 2, 1, 1)
    kept = module(truth, v, d, torch.from_numpy(gain), to_fine, lambda c, vv: c)
    spoiled = module(truth, v, d, torch.zeros(2, 2), to_fine, lambda c, vv: c)
    assert _rmse(kept[0].numpy(), after) < 1e-3  # the truth stays the truth
    assert (
        _rmse(spoiled[0].numpy(), after) > 0.03
    )  # measured 0.062; without the gain, the date's calibration error moves it


def test_blur_reach_and_window():
    assert resampled_blur_sigma(1.0) == 0.0
    assert resampled_blur_sigma(2.0) == pytest.approx(1.10, abs=0.01)
    assert reach(1.27, 3, steps=2) == 2 * (2 * 4 + 3)
    assert central_window(1000, 200) == (372, 0, 256, 200)


@pytest.mark.slow
def test_fusion_puts_the_prediction_back_with_the_blur_training_measured(trained_tiny, monkeypatch):
    from stsfusion.model.mdd.format import MDD
    from stsfusion.model.nn import dense_consistency
    from stsfusion.model.nn.model_file import load_model
    from stsfusion.model.nn.predictor import load_predictor

    manifest, model = trained_tiny
    meta, _, _ = load_model(model)
    p = load_predictor(model, "cpu")
    mdd = p.prepare(MDD.open(manifest))
    # Training measured the dense MS's blur on the grid and kept it; fusion of that MDD uses it.
    assert meta["dense_blur"] == pytest.approx(dense_consistency.sigma_on_grid(mdd, 2.0))
    date = "2022-06-09"  # no fine MS, no HS: the fine MS is predicted in time (from 05-15 and 07-04)
    window = (0, 0, mdd.grid.width, mdd.grid.height)
    x = p._inputs(mdd, window, date)
    module, gain = x["consistency"], x["dense_gain"]
    assert module.blur.sigma == pytest.approx(meta["dense_blur"]) and module.steps == dense_consistency.STEPS == 2
    assert gain.shape == (2, mdd.roles["dense_ms"].n_bands) and bool(torch.isfinite(gain).all())
    with_steps = p.predict(mdd, window, date)
    # STEPS is read when a model is loaded: the steps taken and the halo follow it.
    monkeypatch.setattr(dense_consistency, "STEPS", 1)
    one = load_predictor(model, "cpu")
    assert one._inputs(mdd, window, date)["consistency"].steps == 1 and int(one.net.halo) < one.net_halo < p.net_halo
    # Without the steps: no consistency in the inputs, the network's halo alone, another prediction.
    monkeypatch.setattr(dense_consistency, "STEPS", 0)
    plain = load_predictor(model, "cpu")
    assert "consistency" not in plain._inputs(mdd, window, date)
    assert plain.net_halo == int(plain.net.halo) < p.net_halo
    without = plain.predict(plain.prepare(MDD.open(manifest)), window, date)
    assert np.isfinite(with_steps).any() and not np.allclose(with_steps, without, atol=1e-6)
