"""The multi-task loss of the paper (section 3.2): sum_tau L_tau / (2 c_tau^2) + ln(1 + c_tau^2).

c_tau is learnable, one per task. The regulariser ln(1 + c^2) keeps c away from 0 (a task cannot be
switched off) and, unlike ln(c^2), stays >= 0. The loss only sees c^2, so the sign of the stored
parameter is irrelevant; ``weights()`` reports |c|, which is what the user sees as "c".
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


class MultiTaskLoss(nn.Module):
    """forward({task: scalar loss}) -> scalar total. Tasks are fixed at construction."""

    def __init__(self, tasks: Iterable[str], initial_c: float = 1.0) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.c = nn.Parameter(torch.full((len(self.tasks),), float(initial_c)))

    def forward(self, losses: dict) -> torch.Tensor:
        total = 0.0
        for i, task in enumerate(self.tasks):
            if task not in losses:
                continue
            c2 = self.c[i] * self.c[i]
            total = total + losses[task] / (2 * c2) + torch.log1p(c2)
        return total

    def weights(self) -> dict:
        """{task: |c_tau|}, the learned task uncertainties (a larger c = a task weighted less)."""
        return {t: float(abs(v)) for t, v in zip(self.tasks, self.c.detach().cpu().tolist())}
