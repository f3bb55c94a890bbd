"""The training's Adam and schedule (model/nn/optimiser.py) against torch.optim's: the same weights bit
for bit step after step, state dicts that load either way, and a training run that never imports
torch._dynamo (about 2 s of every Train run)."""

import math
import os
import subprocess
import sys
import textwrap

import torch

from stsfusion.model.nn.optimiser import Adam, LambdaSchedule


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 1))


def _factor(i):
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * i / 25))


def _train(model, opt, sched, steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(4, 3, 12, 12, generator=g)
        loss = (model(x) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_adam_and_its_schedule_are_torch_s_bit_for_bit():
    ours, theirs = _model(), _model()
    o = Adam(ours.parameters(), lr=0.002)
    s = LambdaSchedule(o, _factor)
    t = torch.optim.Adam(theirs.parameters(), lr=0.002)
    ts = torch.optim.lr_scheduler.LambdaLR(t, _factor)
    for _ in range(3):
        _train(ours, o, s, 10)
        _train(theirs, t, ts, 10)
        assert _same(ours, theirs)
        assert o.param_groups[0]["lr"] == t.param_groups[0]["lr"] and s.last_epoch == ts.last_epoch
    assert not _same(ours, _model())  # it did train


def test_state_dicts_load_either_way_and_the_run_goes_on_the_same():
    a, b, c = _model(), _model(), _model()
    oa = Adam(a.parameters(), lr=0.002)
    sa = LambdaSchedule(oa, _factor)
    tb = torch.optim.Adam(b.parameters(), lr=0.002)
    sb = torch.optim.lr_scheduler.LambdaLR(tb, _factor)
    _train(a, oa, sa, 7)
    _train(b, tb, sb, 7)
    # torch's state (an older checkpoint's) into ours, and ours into a fresh one
    c.load_state_dict(b.state_dict())
    oc = Adam(c.parameters(), lr=0.002)
    sc = LambdaSchedule(oc, _factor)
    oc.load_state_dict(tb.state_dict())
    sc.load_state_dict(sb.state_dict())
    fresh = Adam(a.parameters(), lr=0.002)
    fresh.load_state_dict(oa.state_dict())
    assert all(torch.equal(x["exp_avg"], y["exp_avg"]) for x, y in zip(fresh.state.values(), oa.state.values()))
    _train(a, oa, sa, 5, seed=2)
    _train(b, tb, sb, 5, seed=2)
    _train(c, oc, sc, 5, seed=2)
    assert _same(a, b) and _same(b, c)


def test_zero_grad_and_parameters_without_a_gradient():
    m = _model()
    o = Adam(m.parameters(), lr=0.01)
    frozen = m[2].weight.detach().clone()
    m[2].weight.requires_grad_(False)
    _train(m, o, LambdaSchedule(o, lambda i: 1.0), 2)
    assert torch.equal(m[2].weight, frozen) and id(m[2].weight) not in o.state
    o.zero_grad(set_to_none=False)
    assert all(p.grad is None or not p.grad.any() for p in m.parameters())
    o.zero_grad()
    assert all(p.grad is None for p in m.parameters())


def test_a_training_run_never_imports_torch_dynamo(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys
        from helpers.mdd import make_tiny_mdd
        from stsfusion.model.nn.training import train_fusion_model
        manifest = make_tiny_mdd({str(tmp_path)!r}, size=24)
        train_fusion_model(manifest, {str(tmp_path / "m.pt")!r}, epochs=1, patch_size=12, batch_size=2, device="cpu")
        print("dynamo imported:", "torch._dynamo" in sys.modules)
        """
    )
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # helpers/, as conftest puts it
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([tests, *sys.path]))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "dynamo imported: False" in out.stdout
