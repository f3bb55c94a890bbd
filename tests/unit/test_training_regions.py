"""Training on a grid larger than one region: statistics from one pass over all regions, patches
from a pool of regions drawn anew each epoch; memory follows the region, not the grid."""

import numpy as np
import pytest
import torch
from helpers.mdd import make_tiny_mdd

from stsfusion.model.core.callbacks import Callbacks
from stsfusion.model.mdd.format import MDD, read_values
from stsfusion.model.nn import samples
from stsfusion.model.nn.predictor import load_predictor
from stsfusion.model.nn.preprocessing import BandNormalizer
from stsfusion.model.nn.samples import TrainingSet, region_windows
from stsfusion.model.nn.training import train_fusion_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return make_tiny_mdd(tmp_path_factory.mktemp("regions"), size=48)


def test_region_windows_cover_the_grid_once():
    windows = region_windows(50, 30, 16)
    cover = np.zeros((30, 50), int)
    for x, y, w, h in windows:
        cover[y : y + h, x : x + w] += 1
    assert (cover == 1).all() and len(windows) == 4 * 2 and windows[-1] == (48, 16, 2, 14)


def test_statistics_of_a_region_by_region_pass_equal_the_whole_grid(manifest):
    mdd = MDD.open(manifest)
    whole = TrainingSet(mdd, 12, 12, 0, lambda m: None)
    parts = TrainingSet(mdd, 12, 12, 0, lambda m: None, region=16, pool=2)
    assert len(whole.regions) == 1 and len(parts.windows) == 9
    for a, b in ((whole.fine_norm, parts.fine_norm), (whole.dense_norm, parts.dense_norm)):
        np.testing.assert_allclose(b.mean, a.mean, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(b.std, a.std, rtol=1e-4)
    reference = BandNormalizer.fit(read_values(mdd, "fine_ms"), mdd.read_mask("fine_ms"))
    np.testing.assert_allclose(parts.fine_norm.mean, reference.mean, rtol=1e-5)
    # The PCA sees a different random sample of the same pixels: nearly the same variance explained.
    assert abs(sum(parts.pca.explained) - sum(whole.pca.explained)) < 0.01
    assert parts.tasks == whole.tasks and parts.pairs == whole.pairs and parts.hs_dates == whole.hs_dates
    assert parts.hs_fine == whole.hs_fine


def test_the_pool_holds_every_date_and_regions_only(manifest):
    mdd = MDD.open(manifest)
    data = TrainingSet(mdd, 12, 12, 0, lambda m: None, region=16, pool=2)
    assert 2 <= len(data.regions) <= len(data.windows)
    for reg in data.regions:
        assert reg.fine.z.shape[-2:] == (16, 16) and reg.hs.z.shape[-2:] == (16, 16)  # never the 48 px grid
    for i in data.spatial_dates:
        assert any(len(r.valid_flat.get(("fine", i), ())) for r in data.regions)
    for h in data.hs_dates:
        assert any(len(r.valid_flat.get(("hs", h), ())) for r in data.regions)
    rng = np.random.default_rng(3)
    before = [r.window for r in data.regions]
    seen = set(before)
    for _ in range(6):
        data.refresh(rng)
        seen |= {r.window for r in data.regions}
    assert len(seen) > len(before)  # new regions are drawn
    b = data.fusion_batch(rng, 3)
    assert b["y"].shape == (3, data.pca.n_components, data.reduced_patch, data.reduced_patch)
    assert data.reduced_patch <= 16 // data.step
    f = data.fine_batch(rng, 2)
    assert f["y"].shape == (2, data.n_fine_bands, 12, 12) and torch.isfinite(f["y"]).all()


@pytest.mark.slow
def test_training_region_by_region_gives_a_usable_model(manifest, tmp_path, monkeypatch):
    monkeypatch.setattr(samples, "REGION", 16)
    monkeypatch.setattr(samples, "POOL", 2)
    log = []
    summary = train_fusion_model(
        manifest,
        str(tmp_path / "m.pt"),
        epochs=3,
        patch_size=12,
        batch_size=2,
        device="cpu",
        seed=1,
        callbacks=Callbacks(log=log.append),
    )
    assert any("read in 9 regions of up to 16 px" in m for m in log)
    assert all(np.isfinite(list(h["loss"].values())).all() for h in summary["history"])
    p = load_predictor(str(tmp_path / "m.pt"), "cpu")
    mdd = MDD.open(manifest)
    out = p.predict(mdd, (0, 0, 48, 48), mdd.dates[1])
    assert out.shape == (40, 48, 48) and np.isfinite(out).mean() > 0.9


def test_the_guide_holds_every_fine_date_but_the_target(manifest):
    """The guided change's fine MS in training (``TrainingSet._guide``): every usable fine MS date, the
    target's own replaced by the source's, as fusion has none on a date without its fine MS."""
    data = TrainingSet(MDD.open(manifest), 12, 12, 0, lambda m: None)
    n, nb = len(data.spatial_dates), data.n_fine_bands
    assert n >= 2
    f = data.fine_batch(np.random.default_rng(1), 4)
    assert f["guide"].shape == (4, n * nb, 12, 12)
    for i in range(4):
        slots = f["guide"][i].reshape(n, nb, 12, 12)
        assert not any(torch.equal(s * f["vy"][i], f["y"][i] * f["vy"][i]) for s in slots)  # never the target
        assert sum(torch.equal(s, f["fq"][i]) for s in slots) >= 2  # the source's slot and the target's
    b = data.fusion_batch(np.random.default_rng(2), 3)
    assert b["guide"].shape == (3, n * nb, data.reduced_patch, data.reduced_patch)
