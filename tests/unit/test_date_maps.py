"""Date-specific spectral maps: each HS date's own map, blended in time between them, used by the
network in training and fusion alike."""

import numpy as np
import pytest
import torch
from helpers.mdd import make_tiny_mdd

from stsfusion.model.core.vocabulary import day_number
from stsfusion.model.mdd.format import MDD
from stsfusion.model.nn import training
from stsfusion.model.nn.date_maps import map_for
from stsfusion.model.nn.predictor import load_predictor

torch.set_num_threads(1)


def test_a_date_takes_its_own_map_or_the_blend_of_its_neighbours():
    days = np.array([0.0, 30.0, 90.0])
    maps = np.stack([np.full((2, 3), v) for v in (1.0, 2.0, 5.0)]).astype(np.float32)
    assert (map_for(days, maps, 32.0, 10) == 2.0).all()  # its own HS date, 2 days away
    assert (map_for(days, maps, 45.0, 10) == 2.75).all()  # a quarter of the way from 30 to 90
    assert (map_for(days, maps, 120.0, 10) == 5.0).all()  # after the last HS date: the last map
    np.testing.assert_allclose(
        map_for(days, maps, 30.0, 10, exclude=1), 1 + 4 / 3, rtol=1e-6
    )  # left out: 0 and 90 blended
    maps[2] = np.nan  # a date without a map (too few pixels) is skipped
    assert (map_for(days, maps, 45.0, 10) == 2.0).all()
    with pytest.raises(ValueError, match="No HS date has a spectral map"):
        map_for(days, np.full_like(maps, np.nan), 45.0, 10)


@pytest.mark.slow
def test_date_maps_are_fitted_saved_and_used_in_fusion(tmp_path, monkeypatch):
    manifest = make_tiny_mdd(tmp_path, size=24)
    monkeypatch.setattr(training, "NETWORK_OPTIONS", dict(training.NETWORK_OPTIONS, date_maps=True))
    path = str(tmp_path / "m.pt")
    training.train_fusion_model(manifest, path, epochs=1, patch_size=12, batch_size=2, device="cpu", seed=3)
    p = load_predictor(path, "cpu")
    mdd = MDD.open(manifest)
    hs_dates = mdd.roles["hs"].dates
    assert p.net.date_maps and p.date_maps.shape == (
        len(hs_dates),
        p.pca.n_components,
        mdd.roles["fine_ms"].n_bands + 1,
    )
    assert np.isfinite(p.date_maps).all()
    assert not np.allclose(p.date_maps[0], p.date_maps[-1])  # one map per date, not one for all
    # An HS date uses its own map; a date between two HS dates the blend of theirs.
    np.testing.assert_array_equal(p._date_map(hs_dates[0])[0], p.date_maps[0])
    between = [d for d in mdd.dates if hs_dates[0] < d < hs_dates[1] and d not in hs_dates][0]
    w = (day_number(between) - day_number(hs_dates[0])) / (day_number(hs_dates[1]) - day_number(hs_dates[0]))
    np.testing.assert_allclose(p._date_map(between)[0], (1 - w) * p.date_maps[0] + w * p.date_maps[1], rtol=1e-5)
    out = p.predict(mdd, (0, 0, 24, 24), between)
    assert out.shape[1:] == (24, 24) and np.isfinite(out[p.pca.usable]).all()
    # The map matters: fusing with another date's map changes the output.
    p.hs_maps = p.date_maps = p.date_maps[::-1].copy()
    assert not np.allclose(p.predict(mdd, (0, 0, 24, 24), between), out, equal_nan=True)
