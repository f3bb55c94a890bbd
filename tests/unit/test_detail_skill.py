"""The detail step's skill (model/nn/detail_skill.py): 1 where the HS's detail is a linear map of
the fine MS, 0 where the fine MS says nothing of it; saved in the model file and used as the detail
step's weight per PCA component (0: the network's output as it is; 1: the whole step)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers.mdd import make_tiny_model

from stsfusion.model.nn.detail_skill import detail_skill
from stsfusion.model.nn.model_file import load_model
from stsfusion.model.nn.predictor import load_predictor
from stsfusion.model.nn.preprocessing import gaussian_blur_stack


def _smooth_field(rng, shape, sigma=1.5):
    """Random fields with detail at a few pixels (channels, rows, cols), unit-ish variance."""
    noise = rng.standard_normal(shape).astype(np.float32)
    out, _ = gaussian_blur_stack(noise[None], np.ones((1,) + shape[1:], bool), sigma)
    return out[0] / out[0].std()


def _fake_data(linear_components, n_dates=2, size=120, ratio=3.0, seed=0):
    """A TrainingSet's fields the skill reads: component 0 a linear map of the fine MS (its detail
    predictable), component 1 a field of its own (independent of the fine MS)."""
    rng = np.random.default_rng(seed)
    n_fine, k = 3, 2
    x = np.stack([_smooth_field(rng, (n_fine, size, size)) for _ in range(n_dates)])
    y = np.empty((n_dates, k, size, size), np.float32)
    for t in range(n_dates):
        own = _smooth_field(rng, (1, size, size))[0]
        y[t, 0] = 0.7 * x[t, 0] - 0.4 * x[t, 2] + 0.1
        y[t, 1] = 0.8 * x[t, 1] + 0.2 if linear_components == 2 else own
    valid = np.ones((n_dates, size, size), bool)
    valid[:, :10, :10] = False  # a hole: its pixels and their neighbours do not count
    region = SimpleNamespace(fine_b=(x, valid), hs=SimpleNamespace(z=y, valid=valid))
    return SimpleNamespace(
        pca=SimpleNamespace(n_components=k),
        n_fine_bands=n_fine,
        hs_ratio=ratio,
        hs=SimpleNamespace(dates=[f"2022-0{t + 4}-01" for t in range(n_dates)]),
        hs_fine={t: t for t in range(n_dates)},
        regions=[region],
    )


def test_the_skill_is_one_for_a_linear_detail_and_zero_for_an_unrelated_one():
    skill = detail_skill(_fake_data(linear_components=1))
    assert skill.dtype == np.float32 and skill.shape == (2,)
    assert skill[0] > 0.95 and skill[1] < 0.05, skill
    assert (detail_skill(_fake_data(linear_components=2)) > 0.95).all()


def test_no_hs_date_with_its_fine_ms_or_too_few_pixels_give_no_skill():
    data = _fake_data(linear_components=1)
    data.hs_fine = {0: None, 1: None}
    assert detail_skill(data) is None
    assert detail_skill(_fake_data(linear_components=1, size=24)) is None  # 24² px at ratio 3: too few


@pytest.mark.slow
def test_a_model_whose_skill_cannot_be_measured_takes_the_whole_step_on_every_date(tmp_path):
    """Trained on 24 px (too few HS pixels to tell), the model file says NaN: fusion takes the
    detail step whole, on every date; a model file without the skill (older) on its HS dates only."""
    _, path, _ = make_tiny_model(tmp_path, epochs=1, size=24)
    _, arrays, _ = load_model(path)
    assert np.isnan(arrays["detail_skill"]).all() and arrays["detail_skill"].shape == (12,)
    p = load_predictor(path, "cpu")
    assert (p.detail_skill == 1.0).all() and p._detail_every_date
    no_hs = [d for d in p.meta["training_dates"] if d not in p.roles["hs"]["dates"]][0]
    assert p.halo_for(no_hs) == p.halo
    p.detail_skill = None  # as loaded from a file written before the skill
    assert not p._detail_every_date and p.halo_for(no_hs) == p.net_halo < p.halo


@pytest.mark.slow
def test_the_model_file_keeps_the_skill_and_fusion_weights_the_detail_step_by_it(tmp_path):
    manifest, path, _ = make_tiny_model(tmp_path, epochs=1, size=48)  # 24 px: too few for a skill
    _, arrays, _ = load_model(path)
    assert arrays["detail_skill"].shape == (12,)
    assert ((arrays["detail_skill"] >= 0) & (arrays["detail_skill"] <= 1)).all()
    p = load_predictor(path, "cpu")
    hs_date = p.roles["hs"]["dates"][0]
    rng = torch.Generator().manual_seed(0)
    scores = torch.randn(1, 12, 20, 20, generator=rng)
    x = {"a": torch.randn(1, 4, 20, 20, generator=rng), "va": torch.ones(1, 1, 20, 20)}
    p.detail_skill = np.zeros(12, np.float32)
    assert torch.equal(p._detail(scores, x, {}, hs_date), scores)  # no trust: the network's own
    p.detail_skill = None
    whole = p._detail(scores, x, {}, hs_date)
    p.detail_skill = np.ones(12, np.float32)
    torch.testing.assert_close(p._detail(scores, x, {}, hs_date), whole)
    half = np.zeros(12, np.float32)
    half[3] = 0.5
    p.detail_skill = half
    mixed = p._detail(scores, x, {}, hs_date)
    torch.testing.assert_close(mixed[:, 3], 0.5 * (scores[:, 3] + whole[:, 3]))
    assert torch.equal(mixed[:, 4], scores[:, 4])
