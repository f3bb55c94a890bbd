"""The dense MS change below the dense pixel (network.SubpixelChange, added at fusion by
predictor.SUBPIXEL_CHANGE, on by default): the change of fields smaller than a dense pixel goes onto
their own pixels; solved on a lattice on the grid, so the result is exact on a window ``reach`` wider
at any offset and the same computed in strips; nothing where the change is invalid; regressed on the
change's components; fusion adds it to its own copy of the network, never to a training's; the guide's
covariance from pairs of dates where a cloudy series has no pixel clear on every date."""

import numpy as np
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
    cut = module(*(t[..., y0 - r : y1 + r, x0 - r : x1 + r] for t in (guide, change, v)), (y0 - r, x0 - r))
    assert torch.equal(cut[..., r:-r, r:-r], whole[..., y0:y1, x0:x1])
    monkeypatch.setattr(SubpixelChange, "STRIP_VALUES", 72 * 3 * 4 * 30)  # a few rows at a time
    stripped = module(guide, change, v)
    assert torch.equal(stripped, whole)


def test_its_lattice_lies_on_the_grid_so_every_offset_agrees(monkeypatch):
    """The regressions are solved every ``stride`` px on the grid's rows and columns (the dense MS's
    ratio rounded down, at most ``MAX_STRIDE``): a window at any
    offset (``origin``) gives the whole tensor's values on its pixels ``reach`` from its edges, and
    ``reach`` is no wider than it must be (one pixel less differs for some offset)."""
    guide, change, _ = _scene(ratio=2, size=64)
    v = torch.ones_like(change)
    assert SubpixelChange(3.0).stride == 2 and SubpixelChange(1.6).stride == 1
    for ratio, stride in ((2.0, 2), (2.4, 2), (3.0, 2), (3.0, 3)):
        monkeypatch.setattr(SubpixelChange, "MAX_STRIDE", stride)  # at most 2 by default
        module = SubpixelChange(ratio)
        assert module.stride == stride
        whole = module(guide, change, v)
        worst = {0: 0.0, -1: 0.0}
        for less in worst:
            r = module.reach + less
            for y0 in range(24, 24 + stride):
                for x0 in range(20, 20 + stride):
                    window = (slice(y0 - r, y0 + 12 + r), slice(x0 - r, x0 + 14 + r))
                    cut = module(*(t[..., window[0], window[1]] for t in (guide, change, v)), (y0 - r, x0 - r))
                    diff = (cut[..., r : r + 12, r : r + 14] - whole[..., y0 : y0 + 12, x0 : x0 + 14]).abs().max()
                    worst[less] = max(worst[less], float(diff))
        assert worst[0] == 0.0 and worst[-1] > 0.0


def test_below_twice_the_grid_every_pixel_has_its_own_regression(monkeypatch):
    """A dense MS less than twice the grid (stride 1): the exact guided filter, as with the lattice off."""
    guide, change, _ = _scene(ratio=2, size=48)
    v = torch.ones_like(change)
    on = SubpixelChange(1.6)
    monkeypatch.setattr(SubpixelChange, "LATTICE", False)
    off = SubpixelChange(1.6)
    assert on.stride == off.stride == 1 and on.reach == off.reach
    assert torch.equal(on(guide, change, v), off(guide, change, v))
    exact = SubpixelChange(3.0)  # the lattice off at 3 times the grid: each pixel's own regression
    assert exact.stride == 1 and exact.reach == exact.blur.radius + 2 * exact.window


def test_the_lattice_keeps_what_the_exact_filter_puts_on_the_fields(monkeypatch):
    guide, change, truth = _scene()
    v = torch.ones_like(change)
    lattice = change + SubpixelChange(3.0)(guide, change, v)
    monkeypatch.setattr(SubpixelChange, "LATTICE", False)
    exact = change + SubpixelChange(3.0)(guide, change, v)
    assert _rmse(lattice, truth) < 1.25 * _rmse(exact, truth) < 0.6 * _rmse(change, truth)


def test_on_a_basis_the_change_is_regressed_in_its_components():
    """``basis`` (k, C): the detail of the change's k components, given back in its C channels."""
    guide, change, _ = _scene(size=48)
    v = torch.ones_like(change)
    module = SubpixelChange(3.0)
    two = torch.cat([change, -0.5 * change], 1)  # two channels, one component
    basis = torch.tensor([[2.0, -1.0]]) / 5**0.5
    out = module(guide, two, v, basis=basis)
    assert out.shape == two.shape
    component = (two * basis.view(1, 2, 1, 1)).sum(1, keepdim=True)
    assert torch.allclose(out, torch.einsum("kc,bkhw->bchw", basis, module(guide, component, v)), atol=1e-6)
    each = module(guide, two, v)  # all of the change lies on that component: the same, to float32's sums
    assert float((out - each).abs().max()) < 0.01 * float(each.abs().max())


def test_the_temporal_branch_gives_it_on_the_fine_bands_beside_the_guided_change():
    """``TemporalBranch.below_dense_pixel``: the change map (without its bias) of each source's change
    below the dense pixel; the spread change stays the guided change, and the branch's radius the
    guided change's: the network's halo takes the larger of the two (it is added after the steps)."""
    plain = TemporalBranch(4, 8, (1,), 8, 1, guided_radius=3, trunk=False)
    sub = TemporalBranch(4, 8, (1,), 8, 1, guided_radius=3, trunk=False)
    sub.load_state_dict(plain.state_dict())
    sub.add_subpixel(2.0)
    assert plain.subpixel is None and plain.radius == sub.radius == 3 and sub.subpixel.reach > 3
    g = torch.Generator().manual_seed(1)
    guide, d_q, d_t = (torch.rand(1, c, 40, 40, generator=g) for c in (4, 8, 8))
    v = torch.ones(1, 1, 40, 40)
    assert torch.equal(plain.spread(guide, [(d_q, d_t, v)])[0], sub.spread(guide, [(d_q, d_t, v)])[0])
    below = sub.below_dense_pixel([guide], [(d_q, d_t, v)], (4, 6))[0]
    expected = functional.conv2d(sub.subpixel(guide, d_t - d_q, v, (4, 6)), sub.change.weight)
    assert below.shape == (1, 4, 40, 40) and torch.allclose(below, expected, atol=1e-6)


def test_fusion_adds_it_to_its_own_copy_of_the_network(trained_tiny, monkeypatch):
    from stsfusion.model.nn.model_file import load_model
    from stsfusion.model.nn.network import FusionNetwork

    meta, arrays, state = load_model(trained_tiny[1])
    net = FusionNetwork(**meta["network"])
    net.load_state_dict(state)
    monkeypatch.setattr(predictor_module, "SUBPIXEL_CHANGE", True)
    p = predictor_module.FusionPredictor(meta, arrays, net, "cpu")
    assert p.net is not net and net.temporal.subpixel is None  # a training run's network stays as it is
    assert p.net.temporal.subpixel.dense_ratio == 2.0 and p.net_halo == 38
    assert p.fusion_notes()[0].startswith("Fine MS predicted in time: the dense MS change put below")
    monkeypatch.setattr(predictor_module, "SUBPIXEL_CHANGE", False)
    off = predictor_module.FusionPredictor(meta, arrays, net, "cpu")
    assert off.net is net and off.net.temporal.subpixel is None
    # added after the dense MS steps: its reach lies within theirs, so the halo is the same
    assert p.net_halo == off.net_halo and p.net.temporal.subpixel.reach < off.net_halo - p.net.head.radius
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
    assert predictor_module.SUBPIXEL_CHANGE is True  # on by default
    assert predictor_module.load_predictor(model, "cpu").net.temporal.subpixel is not None
    assert predictor_module.load_predictor(model, "cpu", subpixel_change=False).net.temporal.subpixel is None
    monkeypatch.setattr(predictor_module, "SUBPIXEL_CHANGE", False)
    assert predictor_module.load_predictor(model, "cpu", subpixel_change=True).net.temporal.subpixel is not None
    assert predictor_module.load_predictor(model, "cpu").net.temporal.subpixel is None

    mdd = MDD.open(manifest)
    dates = [d for d in mdd.dates if d not in mdd.roles["fine_ms"].dates]  # predicted in time
    assert dates

    def fuse(folder, scheduler, on):
        log = []
        run = dict(scheduler=scheduler, subpixel_change=on, callbacks=Callbacks(log=log.append))
        paths = fuse_time_series(manifest, model, str(tmp_path / folder), dates, 16, "cpu", threads=1, **run)
        return [gdal.Open(p).ReadAsArray() for p in paths], log

    on, log_on = fuse("on", "none", True)
    off, log_off = fuse("off", "none", None)  # the module's default, off here
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
    assert x["change_basis"].shape == (SubpixelChange.CHANGE_COMPONENTS, mdd.roles["dense_ms"].n_bands)
    assert torch.allclose(
        x["change_basis"] @ x["change_basis"].T, torch.eye(SubpixelChange.CHANGE_COMPONENTS), atol=1e-5
    )
    assert x["origin"] == (0, 0) and p._ms_inputs(mdd, (3, 5, 16, 12), date)[0]["origin"] == (5, 3)
    off = predictor_module.load_predictor(model, "cpu", subpixel_change=False)
    assert off._ms_inputs(mdd, (0, 0, 24, 20), date)[0].keys() == x.keys() - {"subpixel_guide", "change_basis"}
    fused = [
        fuse_time_series(manifest, model, str(tmp_path / str(t)), [date], t, "cpu", subpixel_change=True)[0]
        for t in (64, 16)
    ]
    one, tiled = (gdal.Open(f).ReadAsArray() for f in fused)
    np.testing.assert_allclose(tiled, one, rtol=0, atol=1e-5)  # (the oneDNN sums of tiles of other sizes)


def _dates(n_dates=6, bands=3, size=64, seed=0):
    """Correlated channels over dates: a common field per band plus each date's own part."""
    rng = np.random.default_rng(seed)
    common = rng.normal(size=(bands, size, size))
    return [(0.8 * common + 0.6 * rng.normal(size=common.shape)).astype(np.float32) for _ in range(n_dates)]


def test_the_guides_covariance_survives_a_series_without_a_pixel_clear_on_every_date():
    from stsfusion.model.nn.predictor import dates_covariance

    values = _dates()
    clear = [np.ones(values[0].shape[1:], bool) for _ in values]
    full = dates_covariance(list(zip(values, clear)))
    stacked = np.concatenate(values).reshape(len(values) * 3, -1).astype(np.float64)
    np.testing.assert_allclose(full, np.cov(stacked, bias=True), rtol=1e-6, atol=1e-8)  # every pixel clear
    # Each date cloudy on its own sixth of the columns: no pixel is clear on every date.
    cloudy = []
    for i in range(len(values)):
        v = np.ones(values[0].shape[1:], bool)
        v[:, i * 64 // 6 : (i + 1) * 64 // 6 + 1] = False
        cloudy.append(v)
    assert not np.logical_and.reduce(cloudy).any()
    pairwise = dates_covariance(list(zip(values, cloudy)))
    assert pairwise is not None
    np.testing.assert_allclose(pairwise, full, atol=0.08)  # within the sampling noise of the pairs' pixels
    # Its leading components (what the guide's basis takes) are those of the clear series.
    lead = [np.linalg.eigh(c)[1][:, -1] for c in (full, pairwise)]
    assert abs(float(lead[0] @ lead[1])) > 0.99
    # Two dates that share (almost) no clear pixel: no covariance, the guide is used whole.
    apart = [np.zeros_like(cloudy[0]) for _ in values]
    for i, v in enumerate(apart):
        v[:, i * 10 : i * 10 + 10] = True
    assert dates_covariance(list(zip(values, apart))) is None
