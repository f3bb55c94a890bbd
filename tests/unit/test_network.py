"""Shapes and gradients of every block and branch for each kernel set; the halo makes tiles exact."""

import pytest
import torch

from stsfusion.model.nn.network import (
    KERNEL_SETS,
    FusionNetwork,
    MultiScaleResidualBlock,
    NetworkError,
    SpatialBranch,
    SpectralBranch,
    TemporalBranch,
    Trunk,
    parse_kernels,
)

torch.set_num_threads(1)
KERNELS = list(KERNEL_SETS)


def _all_params_have_grad(module):
    return [
        n
        for n, p in module.named_parameters()
        if p.grad is None or not torch.isfinite(p.grad).all() or float(p.grad.abs().sum()) == 0.0
    ]


def _randomise(module, seed=0):
    """Zero-initialised output layers hide gradients and context; give every weight a value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


@pytest.mark.parametrize("kernels", KERNELS)
def test_block_shape_cardinality_and_gradients(kernels):
    ks = parse_kernels(kernels)
    block = MultiScaleResidualBlock(8, ks)
    assert len(block.groups) == len(ks)
    assert [g[2].kernel_size[0] for g in block.groups] == list(ks)
    x = torch.randn(2, 8, 11, 13, requires_grad=True)
    y = block(x)
    assert y.shape == x.shape
    y.square().mean().backward()
    assert _all_params_have_grad(block) == []
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_block_is_identity_plus_groups():
    block = MultiScaleResidualBlock(4, (1, 3))
    x = torch.randn(1, 4, 6, 6)
    expected = x + block.groups[0](x) + block.groups[1](x)
    assert torch.allclose(block(x), expected)


@pytest.mark.parametrize("kernels", KERNELS)
def test_branches_shapes_and_gradients(kernels):
    ks = parse_kernels(kernels)
    b, h, w, nf, nd, k = 2, 9, 10, 4, 6, 5
    sp, te, spec = SpatialBranch(nd, nf, ks, 8, 2), TemporalBranch(nf, nd, ks, 8, 2), SpectralBranch(nf, k, ks, 8, 2)
    for m in (sp, te, spec):
        _randomise(m)
    d, vd = torch.randn(b, nd, h, w), torch.ones(b, 1, h, w)
    out_sp, f_sp = sp(d, vd)
    out_te, f_te = te(torch.randn(b, nf, h, w), torch.randn(b, nd, h, w), d)
    out_spec, f_spec = spec(torch.randn(b, nf, h, w))
    assert out_sp.shape == (b, nf, h, w) and f_sp.shape == (b, 8, h, w)
    assert out_te.shape == (b, nf, h, w) and f_te.shape == (b, 8, h, w)
    assert out_spec.shape == (b, k, h, w) and f_spec.shape == (b, 8, h, w)
    (out_sp.mean() + out_te.mean() + out_spec.mean()).backward()
    for m in (sp, te, spec):
        assert _all_params_have_grad(m) == []


def _inputs(b, nf, nd, k, h, w, seed=0, n_refs=2):
    g = torch.Generator().manual_seed(seed)
    r = lambda c: torch.randn(b, c, h, w, generator=g)
    v = lambda: (torch.rand(b, 1, h, w, generator=g) > 0.2).float()
    x = {
        "a": r(nf),
        "va": v(),
        "d": r(nd),
        "vd": v(),
        "fq": r(nf),
        "vfq": v(),
        "dq": r(nd),
        "vdq": v(),
        "gap_q": torch.full((b, 1, 1, 1), 0.1),
    }
    x["refs"] = [
        {
            "ar": r(nf),
            "var": v(),
            "dr": r(nd),
            "vdr": v(),
            "h": r(k),
            "vh": v(),
            "gap": torch.full((b, 1, 1, 1), 0.2 * (i + 1)),
        }
        for i in range(n_refs)
    ]
    return x


@pytest.mark.parametrize("temporal_trunk", [True, False])
@pytest.mark.parametrize("kernels", KERNELS)
def test_fusion_network_shapes_gradients_and_halo(kernels, temporal_trunk):
    net = FusionNetwork(4, 6, 5, kernels, hs_ratio=3.0, width=8, n_blocks=2, temporal_trunk=temporal_trunk)
    _randomise(net, 1)
    x = _inputs(2, 4, 6, 5, 80, 84)
    out = net.fuse(x)
    assert out["scores"].shape == (2, 5, 80, 84)
    out["scores"].square().mean().backward()
    assert _all_params_have_grad(net) == []
    # A window that keeps `halo` pixels of context gives exactly the full run's values inside.
    halo = net.halo
    assert halo >= net.blur.radius + 2 * 3 * (max(parse_kernels(kernels)) // 2)
    y0, x0, hh, ww = 30, 32, 8, 9
    sub = {
        k: (v[..., y0 - halo : y0 + hh + halo, x0 - halo : x0 + ww + halo] if v.shape[-1] > 1 else v)
        for k, v in x.items()
        if k != "refs"
    }
    sub["refs"] = [
        {
            k: (v[..., y0 - halo : y0 + hh + halo, x0 - halo : x0 + ww + halo] if v.shape[-1] > 1 else v)
            for k, v in r.items()
        }
        for r in x["refs"]
    ]
    with torch.no_grad():
        full = net.fuse(x)["scores"][..., y0 : y0 + hh, x0 : x0 + ww]
        part = net.fuse(sub)["scores"][..., halo : halo + hh, halo : halo + ww]
    assert torch.allclose(full, part, atol=1e-5)


def _crop(x, y0, x0, h, w):
    c = lambda v: v[..., y0 : y0 + h, x0 : x0 + w] if v.shape[-1] > 1 else v
    out = {k: c(v) for k, v in x.items() if k != "refs"}
    out["refs"] = [{k: c(v) for k, v in r.items()} for r in x["refs"]]
    return out


def test_halo_is_needed():
    """One pixel less context than the halo changes the result (single blur, 1x1 kernels: ~1e-3)."""
    net = FusionNetwork(
        4, 6, 5, "1", hs_ratio=3.0, width=8, n_blocks=2, reference_smoothing=0.0, smooth_correction=False
    )
    _randomise(net, 2)
    x = _inputs(1, 4, 6, 5, 40, 40)
    h = net.halo
    assert h == net.blur.radius
    with torch.no_grad():
        full = net.fuse(x)["scores"][..., 15:25, 15:25]
        ok = net.fuse(_crop(x, 15 - h, 15 - h, 10 + 2 * h, 10 + 2 * h))["scores"][..., h : h + 10, h : h + 10]
        # the same 10x10 pixels with one pixel less context on each side
        less = net.fuse(_crop(x, 16 - h, 16 - h, 8 + 2 * h, 8 + 2 * h))["scores"][..., h - 1 : h + 9, h - 1 : h + 9]
    assert torch.allclose(full, ok, atol=1e-5)
    assert not torch.allclose(full, less, atol=1e-5)


def test_larger_kernel_sets_have_more_parameters_and_context():
    nets = [FusionNetwork(4, 6, 5, k, width=8) for k in KERNELS]
    counts = [sum(p.numel() for p in n.parameters()) for n in nets]
    assert counts[0] < counts[1] < counts[2]
    assert nets[0].halo < nets[1].halo < nets[2].halo


def test_unknown_kernel_set_is_a_clear_error():
    with pytest.raises(NetworkError, match="1/3/5"):
        parse_kernels("7")


def test_guided_change_spreads_a_dense_pixel_change_by_the_fine_fields_and_keeps_tiles_exact():
    from stsfusion.model.nn.network import GuidedChange

    # Two fields side by side; the dense change is smeared across their edge (bilinear), the guide
    # (fine MS at the source date) shows the edge: the guided change is uniform within each field.
    f = torch.zeros(1, 2, 12, 12)
    f[..., 6:] = 1.0
    c = torch.zeros(1, 1, 12, 12)
    c[..., 6:] = 1.0
    smeared = c.clone()
    smeared[..., 5], smeared[..., 6] = 0.3, 0.7
    out = GuidedChange(3)(f, smeared, torch.ones(1, 1, 12, 12))
    assert out[..., :3].max() < 0.05 and out[..., 9:].min() > 0.95  # far from the edge: near the truth
    assert (out[..., 6] - out[..., 5]).min() > 0.4  # the edge sharpened: was 0.4, now larger
    assert ((out[..., 6] - out[..., 5]) > (smeared[..., 6] - smeared[..., 5])).all()
    # An invalid neighbour gives nothing; a pixel without any valid similar neighbour keeps its change.
    v = torch.ones(1, 1, 12, 12)
    v[..., 0, 0] = 0
    assert torch.isfinite(GuidedChange(3)(f, smeared, v)).all()
    # In the network: a window reaching `halo` beyond the pixels gives the full run's values.
    net = FusionNetwork(4, 6, 5, "1", hs_ratio=3.0, width=8, n_blocks=2, guided_radius=3)
    _randomise(net, 3)
    assert net.halo >= net.temporal.radius >= 3
    x = _inputs(1, 4, 6, 5, 60, 60)
    h = net.halo
    with torch.no_grad():
        full = net.fuse(x)["scores"][..., 25:35, 25:35]
        part = net.fuse(_crop(x, 25 - h, 25 - h, 10 + 2 * h, 10 + 2 * h))["scores"][..., h : h + 10, h : h + 10]
    assert torch.allclose(full, part, atol=1e-5)


def test_guided_change_on_several_dates_keeps_fields_apart_that_one_date_confuses():
    from stsfusion.model.nn.network import GuidedChange

    # Two fields alike at the source date, told apart by another date; each changes on its own.
    f_q = torch.zeros(1, 2, 12, 12)
    other = torch.zeros(1, 2, 12, 12)
    other[..., 6:] = 1.0
    change = torch.zeros(1, 1, 12, 12)
    change[..., 6:] = 1.0
    ones = torch.ones(1, 1, 12, 12)
    one_date = GuidedChange(3)(f_q, change, ones)
    both = GuidedChange(3)(torch.cat([f_q, other], 1), change, ones)
    assert one_date[..., 5].min() > 0.2 and one_date[..., 6].max() < 0.8  # smeared across the edge
    assert torch.equal(both, change)  # each field's own change, exactly
    # ``spread`` judges similarity once for several changes, each with its validity: the same values
    # as one call per change.
    g = torch.Generator().manual_seed(4)
    guide, c1, c2 = (torch.randn(2, n, 20, 20, generator=g) for n in (6, 3, 3))
    v1, v2 = ((torch.rand(2, 1, 20, 20, generator=g) > 0.3).float() for _ in range(2))
    spread = GuidedChange(3, tol=1.0).spread(guide, [(c1, v1), (c2, v2)])
    assert torch.equal(spread[0], GuidedChange(3, tol=1.0)(guide, c1, v1))
    assert torch.equal(spread[1], GuidedChange(3, tol=1.0)(guide, c2, v2))
    # The similarity, each pair of opposite offsets judged once: the plain test's values, any radius.
    for radius in (2, 3, 5):
        gc = GuidedChange(radius, tol=0.7)
        pad = torch.nn.functional.pad(guide, (radius,) * 4)
        for (dy, dx, w), s in zip(gc.offsets, gc.similarity(guide)):
            near = pad[..., radius + dy : radius + dy + 20, radius + dx : radius + dx + 20] - guide
            assert torch.equal(s, (near.abs().amax(1, keepdim=True) <= 0.7).float() * w)
    # Beyond MAX_SIMILARITY (a large radius) spread judges each offset as it goes: the same values.
    import stsfusion.model.nn.network as network_module

    saved = network_module.MAX_SIMILARITY
    network_module.MAX_SIMILARITY = 0
    try:
        assert GuidedChange(3, tol=1.0).similarity_if_small(guide) is None
        on_the_fly = GuidedChange(3, tol=1.0).spread(guide, [(c1, v1), (c2, v2)])
    finally:
        network_module.MAX_SIMILARITY = saved
    assert all(torch.equal(a, b) for a, b in zip(on_the_fly, spread))
    # The similarity judged before (once for the dates of a tile that share the guide): the same values.
    g3 = GuidedChange(3, tol=1.0)
    again = g3.spread(guide, [(c1, v1), (c2, v2)], g3.similarity(guide))
    assert all(torch.equal(a, b) for a, b in zip(again, spread))


@pytest.mark.parametrize("temporal_trunk", [True, False])
def test_multi_date_guide_in_the_network_is_used_and_keeps_tiles_exact(temporal_trunk):
    net = FusionNetwork(
        4,
        6,
        5,
        "1/3",
        hs_ratio=3.0,
        width=8,
        n_blocks=2,
        guided_radius=3,
        multi_date_guide=True,
        temporal_trunk=temporal_trunk,
    )
    _randomise(net, 5)
    x = _inputs(1, 4, 6, 5, 60, 60)
    g = torch.Generator().manual_seed(9)
    x["guide"] = torch.cat([x["fq"], torch.randn(1, 8, 60, 60, generator=g)], 1)
    for k in ("fq2", "dq2"):
        x[k] = torch.randn(1, 4 if k == "fq2" else 6, 60, 60, generator=g)
    x["vfq2"], x["vdq2"] = torch.ones(1, 1, 60, 60), torch.ones(1, 1, 60, 60)
    x["wq"] = torch.rand(1, 1, 60, 60, generator=g)
    h = net.halo
    with torch.no_grad():
        full = net.fuse(x)["scores"]
        part = net.fuse(_crop(x, 25 - h, 25 - h, 10 + 2 * h, 10 + 2 * h))["scores"][..., h : h + 10, h : h + 10]
        assert torch.allclose(full[..., 25:35, 25:35], part, atol=1e-5)
        # The guide matters; a network without the switch ignores it (the source dates guide).
        without = dict(x, guide=x["fq"])
        assert not torch.allclose(full, net.fuse(without)["scores"], atol=1e-4)
        net.multi_date_guide = False
        assert torch.equal(net.fuse(x)["scores"], net.fuse(without)["scores"])


def test_temporal_branch_without_trunk_predicts_its_prior_and_the_head_reads_no_features_of_it():
    """``temporal_trunk`` off (the default now): the temporal prediction is the guided prior
    f_q + L(change) alone, and the head has no temporal features. Models from before (no switch in
    their description) keep the trunk: its correction and its features."""
    g = torch.Generator().manual_seed(3)
    f_q, d_q, d_t = (torch.randn(1, c, 20, 20, generator=g) for c in (4, 6, 6))
    with_trunk = TemporalBranch(4, 6, (1, 3), 8, 2, guided_radius=2)
    _randomise(with_trunk, 4)
    without = TemporalBranch(4, 6, (1, 3), 8, 2, guided_radius=2, trunk=False)
    without.change.load_state_dict(with_trunk.change.state_dict())
    assert without.trunk is None and without.radius == 2 < with_trunk.radius
    with torch.no_grad():
        delta = without.spread(f_q, [(d_q, d_t, None)])[0]
        out, features = without(f_q, d_q, d_t)
        out_t, features_t = with_trunk(f_q, d_q, d_t)
        torch.testing.assert_close(out, f_q + without.change(delta), rtol=0, atol=0)
        assert features is None and features_t.shape == (1, 8, 20, 20)
        assert not torch.allclose(out, out_t, atol=1e-3)
    net = FusionNetwork(4, 6, 5, "1", width=8, n_blocks=2, guided_radius=2, temporal_trunk=False)
    assert net.config["temporal_trunk"] is False
    assert net.head.trunk.stem.in_channels == FusionNetwork(4, 6, 5, "1", width=8).head.trunk.stem.in_channels - 8
    assert FusionNetwork(4, 6, 5, "1", width=8).temporal.trunk is not None  # an older model's description
    # Two temporal sources and both kinds of network run; every parameter learns.
    _randomise(net, 6)
    x = _inputs(1, 4, 6, 5, 20, 20)
    g2 = torch.Generator().manual_seed(7)
    x["fq2"], x["dq2"] = torch.randn(1, 4, 20, 20, generator=g2), torch.randn(1, 6, 20, 20, generator=g2)
    x["vfq2"], x["vdq2"], x["wq"] = (
        torch.ones(1, 1, 20, 20),
        torch.ones(1, 1, 20, 20),
        torch.rand(1, 1, 20, 20, generator=g2),
    )
    net.fuse(x)["scores"].mean().backward()
    assert [n for n, p in net.named_parameters() if p.grad is None and not n.startswith("spatial.")] == []


@pytest.mark.parametrize("kernels", [(1,), (1, 3), (1, 3, 5)])
def test_the_trunk_runs_channels_last_on_the_cpu_with_the_values_of_channels_first(kernels):
    torch.manual_seed(0)
    trunk = Trunk(6, 4, kernels, 16, 2)
    torch.nn.init.normal_(trunk.out.weight)  # the output starts at zero: give it something to compare
    x = torch.randn(3, 6, 20, 24)
    out, features = trunk(x)
    assert features.is_contiguous(memory_format=torch.channels_last)  # the faster layout is the one used
    plain = trunk.blocks(torch.relu(trunk.stem(x)))  # channels-first all the way
    assert plain.is_contiguous() and torch.allclose(features, plain, atol=1e-5)
    assert torch.allclose(out, trunk.out(plain), atol=1e-5)
