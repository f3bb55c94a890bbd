"""The dense MS change below the dense pixel (network.SubpixelChange, added at fusion by
predictor.SUBPIXEL_CHANGE): the change of fields smaller than a dense pixel goes onto their own
pixels; the result is exact on a window ``reach`` wider and the same computed in strips; nothing
where the change is invalid; fusion adds it to its own copy of the network, never to a training's."""

import torch
from torch.nn import functional

from stsfusion.model.nn import predictor as predictor_module
from stsfusion.model.nn.network import SubpixelChange, TemporalBranch

torch.set_num_threads(1)


def _scene(ratio=3, size=60):
    """Small irregular fields (a few px, below the dense pixel of ``ratio``); only one kind changes."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    field = ((torch.sin(xx / 4.0) + torch.cos(yy / 5.0)) > 0.3).float()
    g = torch.Generator().manual_seed(0)
    guide = torch.stack([0.1 + 0.3 * field, 0.3 - 0.1 * field, 0.2 + 0.05 * torch.rand(size, size, generator=g)])[None]
    truth = (0.2 * field)[None, None]
    coarse = functional.avg_pool2d(truth, ratio)  # the change as the dense sensor sees it, back on the grid
    change = functional.interpolate(coarse, scale_factor=ratio, mode="bilinear", align_corners=False)
    return guide, change, truth


def _rmse(a, b):
    return float(((a - b) ** 2).mean().sqrt())


def test_the_change_of_fields_below_the_dense_pixel_goes_onto_their_pixels():
    guide, change, truth = _scene()
    v = torch.ones_like(change)
    out = change + SubpixelChange(3.0)(guide, change, v)
    assert _rmse(out, truth) < 0.5 * _rmse(change, truth)  # 0.034 -> about 0.008
    flat = guide.mean(1, keepdim=True).expand_as(guide).contiguous()  # a guide without detail adds nothing
    assert SubpixelChange(3.0)(flat * 0 + 0.2, change, v).abs().max() < 1e-6


def test_exact_on_a_window_reach_wider_and_the_same_in_strips(monkeypatch):
    guide, change, _ = _scene(size=72)
    v = torch.ones_like(change)
    v[..., 30:36, 10:20] = 0  # a cloud
    module = SubpixelChange(3.0)
    whole = module(guide, change, v)
    assert torch.equal(whole[..., 30:36, 10:20], torch.zeros_like(whole[..., 30:36, 10:20]))  # nothing there
    r, (y0, y1, x0, x1) = module.reach, (20, 50, 24, 56)
    cut = module(*(t[..., y0 - r : y1 + r, x0 - r : x1 + r] for t in (guide, change, v)))
    assert torch.allclose(cut[..., r:-r, r:-r], whole[..., y0:y1, x0:x1], atol=1e-6)
    monkeypatch.setattr(SubpixelChange, "STRIP_VALUES", 72 * 3 * 4 * 30)  # a few rows at a time
    stripped = module(guide, change, v)
    assert torch.allclose(stripped, whole, atol=1e-6)


def test_the_temporal_branch_adds_it_to_the_guided_change_and_widens_its_reach():
    plain = TemporalBranch(4, 8, (1,), 8, 1, guided_radius=3, trunk=False)
    sub = TemporalBranch(4, 8, (1,), 8, 1, guided_radius=3, trunk=False)
    sub.add_subpixel(2.0)
    assert plain.subpixel is None and plain.radius == 3 and sub.radius == sub.subpixel.reach == 2 + 2 * 3
    g = torch.Generator().manual_seed(1)
    guide, d_q, d_t = (torch.rand(1, c, 40, 40, generator=g) for c in (4, 8, 8))
    v = torch.ones(1, 1, 40, 40)
    a = plain.spread(guide, [(d_q, d_t, v)])[0]
    b = sub.spread(guide, [(d_q, d_t, v)])[0]
    assert torch.allclose(b - a, sub.subpixel(guide, d_t - d_q, v), atol=1e-6)


def test_fusion_adds_it_to_its_own_copy_of_the_network(trained_tiny, monkeypatch):
    from stsfusion.model.nn.model_file import load_model
    from stsfusion.model.nn.network import FusionNetwork

    meta, arrays, state = load_model(trained_tiny[1])
    net = FusionNetwork(**meta["network"])
    net.load_state_dict(state)
    monkeypatch.setattr(predictor_module, "SUBPIXEL_CHANGE", True)  # off by default: its fusion time
    p = predictor_module.FusionPredictor(meta, arrays, net, "cpu")
    assert p.net is not net and net.temporal.subpixel is None  # a training run's network stays as it is
    assert p.net.temporal.subpixel.dense_ratio == 2.0 and p.net_halo == 43
    assert p.fusion_notes()[0].startswith("Fine MS predicted in time: the dense MS change put below")
    monkeypatch.setattr(predictor_module, "SUBPIXEL_CHANGE", False)
    off = predictor_module.FusionPredictor(meta, arrays, net, "cpu")
    assert off.net is net and off.net.temporal.subpixel is None
    assert p.net_halo == off.net_halo + p.net.temporal.subpixel.reach - net.temporal.guided.radius
    assert not any("below the dense pixel" in line for line in off.fusion_notes())


def test_a_run_asks_for_it_in_the_loop_and_in_dask_tasks_alike(trained_tiny, monkeypatch, tmp_path):
    """Fuse's SUBPIXEL_CHANGE: ``subpixel_change`` overrides the module's default either way, and
    reaches the predictor of every path (the loop, a Dask task), which then write the same bytes."""
    import numpy as np
    from osgeo import gdal

    from stsfusion.model.core.callbacks import Callbacks
    from stsfusion.model.fusion.distributed import dask_available
    from stsfusion.model.fusion.fuse import fuse_time_series
    from stsfusion.model.mdd.format import MDD

    manifest, model = trained_tiny
    assert predictor_module.SUBPIXEL_CHANGE is False  # off by default: its fusion time
    assert predictor_module.load_predictor(model, "cpu", subpixel_change=True).net.temporal.subpixel is not None
    monkeypatch.setattr(predictor_module, "SUBPIXEL_CHANGE", True)
    assert predictor_module.load_predictor(model, "cpu", subpixel_change=False).net.temporal.subpixel is None
    assert predictor_module.load_predictor(model, "cpu").net.temporal.subpixel is not None
    monkeypatch.setattr(predictor_module, "SUBPIXEL_CHANGE", False)

    mdd = MDD.open(manifest)
    dates = [d for d in mdd.dates if d not in mdd.roles["fine_ms"].dates]  # predicted in time
    assert dates

    def fuse(folder, scheduler, on):
        log = []
        run = dict(scheduler=scheduler, subpixel_change=on, callbacks=Callbacks(log=log.append))
        paths = fuse_time_series(manifest, model, str(tmp_path / folder), dates, 16, "cpu", threads=1, **run)
        return [gdal.Open(p).ReadAsArray() for p in paths], log

    on, log_on = fuse("on", "none", True)
    off, log_off = fuse("off", "none", None)
    assert any("below the dense pixel" in line for line in log_on)
    assert not any("below the dense pixel" in line for line in log_off)
    assert all(a.shape == b.shape for a, b in zip(on, off))
    assert max(float(np.abs(a - b).max()) for a, b in zip(on, off)) > 1e-4  # it changes the fused HS
    if dask_available():
        tasks, log_tasks = fuse("tasks", "threads", True)
        assert any("below the dense pixel" in line for line in log_tasks)
        assert all(np.array_equal(a, b) for a, b in zip(tasks, on))


def test_it_regresses_on_the_guides_first_components_fitted_once_for_every_tile(trained_tiny, tmp_path):
    """The guide's principal components (``FusionPredictor._subpixel_basis``): fitted on the MDD's
    central window, so a 16 px tiling fuses what one tile does; orthonormal, one basis per guide."""
    import numpy as np
    from osgeo import gdal

    from stsfusion.model.fusion.fuse import fuse_time_series
    from stsfusion.model.mdd.format import MDD

    manifest, model = trained_tiny
    mdd = MDD.open(manifest)
    date = next(d for d in mdd.dates if d not in mdd.roles["fine_ms"].dates)
    p = predictor_module.load_predictor(model, "cpu", subpixel_change=True)
    k = SubpixelChange.COMPONENTS
    x, _ = p._ms_inputs(p.prepare(mdd), (0, 0, 24, 20), date)
    assert x["guide"].shape[1] > k and x["subpixel_guide"].shape[1] == k
    basis = p._subpixel_basis(mdd, None)
    assert torch.allclose(basis @ basis.T, torch.eye(k), atol=1e-5)
    assert torch.allclose(x["subpixel_guide"], torch.einsum("kg,bghw->bkhw", basis, x["guide"]), atol=1e-6)
    own = mdd.roles["fine_ms"].dates[1]  # a fine MS date's guide leaves its own date out: its own basis
    assert p._subpixel_basis(mdd, own).shape == (k, x["guide"].shape[1] - mdd.roles["fine_ms"].n_bands)
    assert predictor_module.load_predictor(model, "cpu")._ms_inputs(mdd, (0, 0, 24, 20), date)[0].keys() == (
        x.keys() - {"subpixel_guide"}
    )
    fused = [
        fuse_time_series(manifest, model, str(tmp_path / str(t)), [date], t, "cpu", subpixel_change=True)[0]
        for t in (64, 16)
    ]
    one, tiled = (gdal.Open(f).ReadAsArray() for f in fused)
    np.testing.assert_allclose(tiled, one, rtol=0, atol=1e-5)
