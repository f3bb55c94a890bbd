"""The multi-task loss: its value, and learned weights c_tau that move and stay positive."""

import math

import torch

from stsfusion.model.nn.loss import MultiTaskLoss

torch.set_num_threads(1)


def test_value_matches_the_formula():
    mtl = MultiTaskLoss(["a", "b"], initial_c=1.0)
    with torch.no_grad():
        mtl.c.copy_(torch.tensor([0.5, 2.0]))
    total = mtl({"a": torch.tensor(0.3), "b": torch.tensor(1.2)})
    expected = 0.3 / (2 * 0.25) + math.log(1 + 0.25) + 1.2 / (2 * 4.0) + math.log(1 + 4.0)
    assert abs(float(total.detach()) - expected) < 1e-6


def test_c_moves_towards_the_optimum_and_stays_positive():
    # For a fixed task loss L, d/du [L/(2u) + ln(1+u)] = 0 at u = c^2 = (L + sqrt(L^2 + 8L)) / 4:
    # small losses get a small c (a large weight), large losses a large c.
    mtl = MultiTaskLoss(["easy", "hard"], initial_c=1.0)
    opt = torch.optim.Adam(mtl.parameters(), lr=0.05)
    losses = {"easy": torch.tensor(0.01), "hard": torch.tensor(10.0)}
    seen = []
    for _ in range(600):
        opt.zero_grad()
        mtl(losses).backward()
        opt.step()
        seen.append(mtl.weights())
    w = mtl.weights()
    for task, L in (("easy", 0.01), ("hard", 10.0)):
        u = (L + math.sqrt(L * L + 8 * L)) / 4
        assert abs(w[task] - math.sqrt(u)) < 0.02 * math.sqrt(u) + 1e-3, (task, w[task], math.sqrt(u))
    assert w["easy"] < 1.0 < w["hard"]
    assert all(v > 0 for s in seen for v in s.values())
    total = mtl(losses)
    assert torch.isfinite(total)


def test_regulariser_keeps_total_bounded_below_and_tasks_can_be_missing():
    mtl = MultiTaskLoss(["a", "b"])
    only_a = mtl({"a": torch.tensor(1.0)})
    assert abs(float(only_a.detach()) - (0.5 + math.log(2))) < 1e-6
